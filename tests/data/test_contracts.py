"""Data-contract tests: GX suites over small, hand-built manifest and split frames (no images)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from conveyor.data import contracts
from conveyor.data.contracts import ContractError, contract_params, run_contracts, validate_manifest, validate_split
from helpers.specs import contracts_spec as make_spec

CLASSES = ["cat", "dog", "fox"]
# camera -> split of a clean camera-grouped split
CAMERAS = {"cam0": "train", "cam1": "train", "cam2": "train", "cam3": "val", "cam4": "test"}
PER_CLASS_PER_CAMERA = 2

MANIFEST_SCHEMA = {
    "id": pl.String, "path": pl.String, "rel_path": pl.String, "label": pl.String, "camera": pl.String,
    "scene": pl.String, "captured_at": pl.Datetime("us", "UTC"), "content_hash": pl.String, "phash": pl.String,
    "width": pl.Int64, "height": pl.Int64, "mode": pl.String, "format": pl.String, "file_size": pl.Int64,
    "brightness": pl.Float64, "contrast": pl.Float64, "saturation": pl.Float64, "sharpness": pl.Float64,
    "hue": pl.Float64,
}


def make_manifest(seed: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    rows = []
    n = 0
    for cam in CAMERAS:
        for label in CLASSES:
            for _ in range(PER_CLASS_PER_CAMERA):
                rel = f"{label}/{cam}_{n:04d}.png"
                rows.append({
                    "id": rel, "path": f"/data/set/{rel}", "rel_path": rel, "label": label, "camera": cam,
                    "scene": None, "captured_at": t0 + timedelta(hours=n),
                    "content_hash": f"{rng.getrandbits(256):064x}", "phash": f"{rng.getrandbits(64):016x}",
                    "width": 32, "height": 32, "mode": "RGB", "format": "PNG", "file_size": 1000 + n,
                    "brightness": 0.5, "contrast": 0.2, "saturation": 0.3, "sharpness": 10.0, "hue": 0.1,
                })
                n += 1
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


def make_split(manifest: pl.DataFrame) -> pl.DataFrame:
    return manifest.with_columns(
        pl.col("camera").alias("group"), pl.col("camera").replace_strict(CAMERAS).alias("split")
    )


def set_rows(frame: pl.DataFrame, ids: list[str], **values) -> pl.DataFrame:
    hit = pl.col("id").is_in(ids)
    return frame.with_columns([pl.when(hit).then(pl.lit(v)).otherwise(pl.col(k)).alias(k) for k, v in values.items()])


def first_id(split: pl.DataFrame, split_name: str, label: str | None = None) -> dict:
    f = split.filter(pl.col("split") == split_name)
    if label is not None:
        f = f.filter(pl.col("label") == label)
    return f.sort("id").row(0, named=True)


@pytest.fixture(scope="module")
def ctx():
    """One GX context for the module: creating one costs seconds."""
    return contracts.new_context()


@pytest.fixture(scope="module")
def spec():
    return make_spec()


@pytest.fixture(scope="module")
def params(spec):
    return contract_params(spec, CLASSES)


@pytest.fixture
def manifest():
    return make_manifest()


@pytest.fixture
def split(manifest):
    return make_split(manifest)


def failed_types(report, suite: str) -> list[str]:
    s = report.suite(suite)
    assert s is not None, f"suite {suite} did not run"
    return [f.expectation for f in s.failed]


# ---- clean data ---------------------------------------------------------------------------------


def test_clean_manifest_and_grouped_split_pass(manifest, split, spec, ctx, tmp_path):
    out = tmp_path / "contracts.json"
    report = run_contracts(manifest, split, spec, CLASSES, out_path=out, context=ctx)
    assert report.success, report.summary()
    assert report.failed_count == 0
    names = [s.name for s in report.suites]
    assert names == [
        "manifest", "split_frame", "split_groups", "split_duplicates",
        "split_near_duplicates", "split_class_coverage", "split_sizes",
    ]
    assert all(s.evaluated > 0 for s in report.suites)
    saved = json.loads(out.read_text())
    assert saved["success"] is True and set(saved["gx_results"]) == set(names)


def test_module_import_is_lazy():
    code = "import sys, conveyor.data.contracts; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---- leakage ------------------------------------------------------------------------------------


def test_group_in_two_splits_fails_split_groups(manifest, split, spec, ctx):
    leaked = first_id(split, "test")["id"]  # a cam4 image, moved to train
    leaky = set_rows(split, [leaked], split="train")
    with pytest.raises(ContractError) as err:
        run_contracts(manifest, leaky, spec, CLASSES, context=ctx)
    report = err.value.report
    assert failed_types(report, "split_groups") == ["expect_column_values_to_be_unique"]
    examples = report.suite("split_groups").failed[0].examples
    assert {(e["group"], e["split"]) for e in examples} == {("cam4", "train"), ("cam4", "test")}
    msg = str(err.value)
    assert "split_groups" in msg and "cam4" in msg and "'train'" not in msg  # rows are JSON
    assert '"group": "cam4", "split": "test"' in msg and '"group": "cam4", "split": "train"' in msg
    # only the group check fails: no duplicates, coverage intact
    assert [s.name for s in report.suites if not s.success] == ["split_groups"]


def test_same_image_in_train_and_val_fails(split, params, ctx):
    train_row = first_id(split, "train", "cat")
    val_row = first_id(split, "val", "cat")
    dup = set_rows(split, [val_row["id"]], content_hash=train_row["content_hash"], phash=train_row["phash"])
    report = validate_split(dup, params, context=ctx)
    assert not report.success
    assert failed_types(report, "split_duplicates") == ["expect_column_values_to_be_unique"]
    examples = report.suite("split_duplicates").failed[0].examples
    assert {(e["content_hash"], e["split"], e["ids"]) for e in examples} == {
        (train_row["content_hash"], "train", train_row["id"]),
        (train_row["content_hash"], "val", val_row["id"]),
    }
    # identical pixels are also a near-duplicate pair (distance 0)
    assert failed_types(report, "split_near_duplicates") == ["expect_table_row_count_to_equal"]
    assert report.suite("split_groups").success


def test_same_image_twice_in_one_split_is_not_leakage(split, params, ctx):
    a, b = split.filter(pl.col("split") == "train").sort("id").head(2).rows(named=True)
    dup = set_rows(split, [b["id"]], content_hash=a["content_hash"], phash=a["phash"])
    report = validate_split(dup, params, context=ctx)
    assert report.success, report.summary()


def flip_bits(hex_hash: str, n: int) -> str:
    value = int(hex_hash, 16)
    for bit in range(n):
        value ^= 1 << (bit * 7)
    return f"{value:0{len(hex_hash)}x}"


def test_near_duplicate_across_train_and_test_fails_with_pair(split, params, ctx):
    assert params["near_duplicate_max_distance"] == 2
    train_row = first_id(split, "train", "dog")
    test_row = first_id(split, "test", "dog")
    near = set_rows(split, [test_row["id"]], phash=flip_bits(train_row["phash"], 1))
    report = validate_split(near, params, context=ctx)
    assert not report.success
    assert [s.name for s in report.suites if not s.success] == ["split_near_duplicates"]
    failure = report.suite("split_near_duplicates").failed[0]
    assert failure.expectation == "expect_table_row_count_to_equal"
    assert failure.observed == 1
    assert failure.examples == [
        {"id_a": test_row["id"], "split_a": "test", "id_b": train_row["id"], "split_b": "train", "distance": 1}
    ]


def test_near_duplicate_threshold_comes_from_spec(split, ctx):
    train_row = first_id(split, "train", "dog")
    test_row = first_id(split, "test", "dog")
    far = set_rows(split, [test_row["id"]], phash=flip_bits(train_row["phash"], 3))
    loose = contract_params(make_spec(), CLASSES)
    assert validate_split(far, loose, context=ctx).success  # distance 3 > 2
    strict = {**loose, "near_duplicate_max_distance": 3}
    assert not validate_split(far, strict, context=ctx).suite("split_near_duplicates").success


# ---- coverage -----------------------------------------------------------------------------------


def test_class_missing_from_test_fails_coverage(split, params, ctx):
    no_fox = split.filter(~((pl.col("split") == "test") & (pl.col("label") == "fox")))
    report = validate_split(no_fox, params, context=ctx)
    assert [s.name for s in report.suites if not s.success] == ["split_class_coverage"]
    failure = report.suite("split_class_coverage").failed[0]
    assert failure.kwargs["min_value"] == params["min_per_class_eval"] == 1
    assert failure.examples == [{"split": "test", "label": "fox", "count": 0}]


def test_min_per_class_eval_is_a_parameter(split, ctx):
    params = contract_params(make_spec(min_per_class_eval=3), CLASSES)  # cameras hold 2 per class
    report = validate_split(split, params, context=ctx)
    failure = report.suite("split_class_coverage").failed[0]
    assert len(failure.examples) == 5 and {e["count"] for e in failure.examples} == {2}
    assert failure.observed["unexpected_count"] == 6  # 3 classes x (val, test)


def test_empty_val_split_fails_sizes(split, params, ctx):
    no_val = split.filter(pl.col("split") != "val")
    report = validate_split(no_val, params, context=ctx)
    assert not report.suite("split_sizes").success
    assert report.suite("split_sizes").failed[0].examples == [{"split": "val", "count": 0}]
    # a spec without a val split does not ask for one
    params0 = contract_params(make_spec(ratios={"train": 0.8, "val": 0.0, "test": 0.2}), CLASSES)
    assert params0["eval_splits"] == ["test"]
    assert validate_split(no_val, params0, context=ctx).success


def test_unknown_split_name_fails(split, params, ctx):
    bad = set_rows(split, [first_id(split, "val")["id"]], split="holdout")
    report = validate_split(bad, params, context=ctx)
    assert "expect_column_values_to_be_in_set" in failed_types(report, "split_groups")
    assert "expect_column_values_to_be_in_set" in failed_types(report, "split_frame")


# ---- manifest -----------------------------------------------------------------------------------


def test_a_task_kind_may_give_its_suite_frames_as_pandas(manifest, params, ctx, monkeypatch):
    from conveyor import kinds
    from conveyor.kinds.classification import ClassificationKind

    class PandasKind(ClassificationKind):
        name = "pandas-test"

        def contract_frames(self, m, s, spec):
            return {k: v.to_pandas() for k, v in super().contract_frames(m, s, spec).items()}

    monkeypatch.setattr(kinds, "_registered", dict(kinds._registered))
    monkeypatch.setattr(kinds, "_instances", dict(kinds._instances))
    kinds.register("pandas-test", PandasKind)
    victim = manifest["id"][3]
    report = validate_manifest(set_rows(manifest, [victim], label="zebra"), {**params, "task": "pandas-test"}, context=ctx)
    assert [s.name for s in report.suites if not s.success] == ["manifest"]
    assert report.suite("manifest").failed[0].examples == [{"id": victim, "label": "zebra"}]


def test_unknown_label_in_manifest_fails(manifest, params, ctx):
    victim = manifest["id"][3]
    bad = set_rows(manifest, [victim], label="zebra")
    report = validate_manifest(bad, params, context=ctx)
    assert failed_types(report, "manifest") == ["expect_column_values_to_be_in_set"]
    failure = report.suite("manifest").failed[0]
    assert failure.kwargs["value_set"] == CLASSES  # the parameter, resolved
    assert failure.examples == [{"id": victim, "label": "zebra"}]
    assert "zebra" in report.summary()


@pytest.mark.parametrize("bad_hash", ["ABCDEF" + "0" * 58, "abc123", "g" * 64, "a" * 64 + "\n"])
def test_bad_content_hash_fails(manifest, params, ctx, bad_hash):
    victim = manifest["id"][0]
    report = validate_manifest(set_rows(manifest, [victim], content_hash=bad_hash), params, context=ctx)
    assert failed_types(report, "manifest") == ["expect_column_values_to_match_regex"]
    assert report.suite("manifest").failed[0].examples == [{"id": victim, "content_hash": bad_hash}]


def test_duplicate_and_null_ids_fail(manifest, params, ctx):
    ids = manifest["id"].to_list()
    bad = manifest.with_columns(pl.Series("id", [ids[1]] + ids[1:-1] + [None]))
    report = validate_manifest(bad, params, context=ctx)
    assert sorted(failed_types(report, "manifest")) == [
        "expect_column_values_to_be_unique", "expect_column_values_to_not_be_null"
    ]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("path", "relative/cat.png"),  # not absolute
        ("path", "/data/set/cat/notes.txt"),  # not an image
        ("rel_path", "../outside/cat.png"),  # leaves the data root
        ("rel_path", "/data/set/cat/a.png"),  # absolute
    ],
)
def test_bad_paths_fail(manifest, params, ctx, column, value):
    report = validate_manifest(set_rows(manifest, [manifest["id"][0]], **{column: value}), params, context=ctx)
    assert [(f.expectation, f.kwargs["column"]) for f in report.suite("manifest").failed] == [
        ("expect_column_values_to_match_regex", column)
    ]


def test_image_extensions_are_case_insensitive(manifest, params, ctx):
    ids = manifest["id"].to_list()[:4]
    odd = manifest
    for i, ext in zip(ids, [".JPG", ".jpeg", ".TiFF", ".webp"]):
        odd = set_rows(odd, [i], path=f"/data/x/{i}{ext}", rel_path=f"{i}{ext}")
    assert validate_manifest(odd, params, context=ctx).success


def test_size_outside_spec_range_fails(manifest, params, ctx):
    victim = manifest["id"][2]
    report = validate_manifest(set_rows(manifest, [victim], width=4, height=4096), params, context=ctx)
    failures = report.suite("manifest").failed
    assert [(f.kwargs["column"], f.kwargs["min_value"], f.kwargs["max_value"]) for f in failures] == [
        ("width", 8, 512), ("height", 8, 512)
    ]


def test_missing_column_fails(manifest, params, ctx):
    report = validate_manifest(manifest.drop("phash"), params, context=ctx)
    failures = report.suite("manifest").failed
    assert failures[0].expectation == "expect_table_columns_to_match_set"
    assert failures[0].observed["details"]["mismatched"]["missing"] == ["phash"]
    assert all(f.kwargs.get("column") in (None, "phash") for f in failures)


def test_future_capture_time_fails(manifest, params, ctx):
    future = datetime.now(timezone.utc) + timedelta(days=3)
    report = validate_manifest(set_rows(manifest, [manifest["id"][5]], captured_at=future), params, context=ctx)
    assert [f.kwargs["column"] for f in report.suite("manifest").failed] == ["captured_at"]
    # within the one-day slack is fine
    soon = datetime.now(timezone.utc) + timedelta(hours=2)
    assert validate_manifest(set_rows(manifest, [manifest["id"][5]], captured_at=soon), params, context=ctx).success


def test_missing_capture_time_fails_only_when_grouping_by_time(manifest, ctx):
    missing = set_rows(manifest, [manifest["id"][0]], captured_at=None)
    by_camera = contract_params(make_spec(group_by="camera"), CLASSES)
    report = validate_manifest(missing, by_camera, context=ctx)
    assert report.success and [s.name for s in report.suites] == ["manifest"]
    by_time = contract_params(make_spec(group_by="time"), CLASSES)
    report = validate_manifest(missing, by_time, context=ctx)
    assert [s.name for s in report.suites if not s.success] == ["manifest_time"]


# ---- reports, errors, suite files -----------------------------------------------------------------


def test_report_written_even_when_raising(manifest, split, spec, ctx, tmp_path):
    out = tmp_path / "nested" / "contracts.json"
    leaky = set_rows(split, [first_id(split, "val")["id"]], split="test")  # cam3 in val and test
    with pytest.raises(ContractError) as err:
        run_contracts(manifest, leaky, spec, CLASSES, out_path=out, context=ctx)
    saved = json.loads(out.read_text())
    assert saved["success"] is False and saved["failed_count"] == err.value.report.failed_count >= 1
    groups = next(s for s in saved["suites"] if s["name"] == "split_groups")
    assert groups["failed"][0]["examples"][0]["group"] == "cam3"
    assert saved["params"]["classes"] == CLASSES
    assert saved["gx_results"]["split_groups"]["success"] is False
    assert not list(out.parent.glob("*.tmp"))


def test_no_raise_returns_failed_report(manifest, split, spec, ctx):
    bad = set_rows(manifest, [manifest["id"][0]], label="zebra")
    report = run_contracts(bad, split, spec, CLASSES, raise_on_failure=False, context=ctx)
    assert not report.success and report.failed_count == 1
    json.dumps(report.to_dict())


def test_suite_files_are_valid_gx_and_parameters_exist(spec):
    params = contract_params(spec, CLASSES)
    json.dumps(params)
    directory = contracts.contracts_dir()
    names = sorted(p.stem for p in directory.glob("*.json"))
    # suites of other task kinds (detection_*, segmentation_*, multilabel_*) are checked by their own tests
    assert [n for n in names if not n.startswith(("detection_", "segmentation_", "multilabel_"))] == sorted([
        "manifest", "manifest_time", "split_frame", "split_groups", "split_duplicates",
        "split_near_duplicates", "split_class_coverage", "split_sizes", "split_label_sources",
    ])
    assert {"segmentation_manifest", "segmentation_split_frame", "segmentation_class_coverage"} <= set(names)
    for name in names:
        data = contracts.read_suite(name)
        assert data["name"] == name
        assert contracts._suite_parameters(data["expectations"]) <= set(params)
        suite = contracts._build_suite(data)
        assert len(suite.expectations) == len(data["expectations"])


def test_contracts_dir_override(manifest, params, ctx, tmp_path, monkeypatch):
    src = json.loads((contracts.DEFAULT_CONTRACTS_DIR / "manifest.json").read_text())
    src["expectations"].append({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "mode", "value_set": ["L"]}})
    (tmp_path / "manifest.json").write_text(json.dumps(src))
    monkeypatch.setenv(contracts.CONTRACTS_ENV, str(tmp_path))
    report = validate_manifest(manifest, params, context=ctx)
    assert [f.kwargs["column"] for f in report.suite("manifest").failed] == ["mode"]
    # an explicit argument beats the environment
    assert validate_manifest(manifest, params, context=ctx, contracts_dir=contracts.DEFAULT_CONTRACTS_DIR).success


def test_bad_suite_file_is_a_clear_error(manifest, params, ctx, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"name": "manifest", "expectations": [{"type": "expect_column_to_be_purple", "kwargs": {"column": "id"}}]}
    ))
    with pytest.raises(contracts.ContractConfigError, match="expect_column_to_be_purple"):
        validate_manifest(manifest, params, context=ctx, contracts_dir=tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"name": "manifest", "expectations": [{"type": "expect_column_values_to_be_in_set",
                                               "kwargs": {"column": "id", "value_set": {"$PARAMETER": "nope"}}}]}
    ))
    with pytest.raises(contracts.ContractConfigError, match="nope"):
        validate_manifest(manifest, params, context=ctx, contracts_dir=tmp_path)
