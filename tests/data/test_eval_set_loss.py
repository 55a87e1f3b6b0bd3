"""The frozen evaluation set stays frozen: each cycle compares its val+test set with the last
cycle's; a loss above ``split.max_eval_loss`` fails the data contracts, listing the missing files."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from conveyor.data import contracts
from conveyor.data.contracts import ContractError, run_contracts
from conveyor.data.split import EVAL_SET_FILE, EvalSetChange, LostImage, read_eval_change, split
from helpers.specs import contracts_spec, split_spec


def frame(n_cameras=8, per_camera=12, classes=("a", "b", "c")) -> pl.DataFrame:
    rows = []
    t0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
    k = 0
    for c in range(n_cameras):
        for i in range(per_camera):
            h = hashlib.sha256(f"img{k}".encode()).hexdigest()
            rows.append({"id": f"img/{k:05d}.png", "path": f"/d/img/{k:05d}.png", "label": classes[i % len(classes)],
                         "camera": f"cam-{c}", "scene": "s", "captured_at": t0 + timedelta(hours=k),
                         "content_hash": h, "phash": h[:16]})
            k += 1
    return pl.DataFrame(rows)


def run(root: Path, df: pl.DataFrame, ds: str, **split_settings):
    p = root / f"curated-{ds}.parquet"
    root.mkdir(parents=True, exist_ok=True)
    df.write_parquet(p)
    sp = split_spec(group_by="camera", **split_settings)
    return split(p, sp, root / "splits", root / "state", dataset_version=ds)


def eval_paths(res) -> list[str]:
    out = pl.read_parquet(res.split_path)
    return sorted(out.filter(pl.col("split").is_in(["val", "test"]))["path"].to_list())


def test_eval_set_loss_is_measured_by_content_hash_and_an_excess_stays_owed(tmp_path):
    df = frame()
    r1 = run(tmp_path, df, "ds1")
    assert r1.eval_change is None  # nothing to compare with yet
    assert (tmp_path / "state" / EVAL_SET_FILE).exists()
    evals = eval_paths(r1)
    n_eval = len(evals)
    assert n_eval >= 20

    # one eval image deleted, one renamed (same bytes, new path): only the deleted one is lost
    renamed = df.with_columns(pl.when(pl.col("path") == evals[1]).then(pl.lit("/d/moved.png"))
                              .otherwise(pl.col("path")).alias("path"))
    r2 = run(tmp_path, renamed.filter(pl.col("path") != evals[0]), "ds2")
    ch = r2.eval_change
    assert ch is not None and ch.previous_dataset == "ds1" and ch.previous_size == n_eval and ch.size == n_eval - 1
    assert [x.path for x in ch.lost] == [evals[0]] and not ch.exceeded
    assert ch.lost_fraction == pytest.approx(1 / n_eval)
    summary = json.loads(Path(r2.summary_path).read_text())
    assert summary["eval_set"]["lost_count"] == 1 and summary["eval_set"]["exceeded"] is False
    assert read_eval_change(r2.split_path) == ch

    # a rerun of ds2 compares with ds1 again, not with itself
    assert run(tmp_path, renamed.filter(pl.col("path") != evals[0]), "ds2").eval_change == ch

    # five more gone (deleted or quarantined): above the 5 % limit
    gone = set(evals[2:7])
    cut = renamed.filter(~pl.col("path").is_in([evals[0], *gone]))
    r3 = run(tmp_path, cut, "ds3")
    assert r3.eval_change.previous_dataset == "ds2" and r3.eval_change.exceeded
    assert {x.path for x in r3.eval_change.lost} == gone
    assert all(x.content_hash and x.split in ("val", "test") for x in r3.eval_change.lost)

    # the next cycle with the same data still owes them: a failed cycle does not make the loss disappear
    r4 = run(tmp_path, cut, "ds4")
    assert {x.path for x in r4.eval_change.lost} == gone and r4.eval_change.exceeded
    # ... until they come back
    r5 = run(tmp_path, renamed.filter(pl.col("path") != evals[0]), "ds5")
    assert r5.eval_change.lost == () and not r5.eval_change.exceeded
    # or the limit is raised for one cycle to accept the loss
    r6 = run(tmp_path, cut, "ds6", max_eval_loss=0.5)
    assert len(r6.eval_change.lost) == 5 and not r6.eval_change.exceeded
    assert run(tmp_path, cut, "ds7").eval_change.lost == ()


def test_unfrozen_split_does_not_compare(tmp_path):
    run(tmp_path, frame(), "ds1", frozen_eval=False)
    assert run(tmp_path, frame(), "ds2", frozen_eval=False).eval_change is None
    assert not (tmp_path / "state" / EVAL_SET_FILE).exists()


# ---- contracts --------------------------------------------------------------------------------
CLASSES = ["cat", "dog", "fox"]
CAMERAS = {"cam0": "train", "cam1": "train", "cam2": "train", "cam3": "val", "cam4": "test"}


def manifest() -> pl.DataFrame:
    rng = random.Random(0)
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    rows = []
    for n, (cam, label) in enumerate((c, lbl) for c in CAMERAS for lbl in CLASSES for _ in range(2)):
        rel = f"{label}/{cam}_{n:04d}.png"
        rows.append({"id": rel, "path": f"/data/set/{rel}", "rel_path": rel, "label": label, "camera": cam,
                     "scene": "s", "captured_at": t0 + timedelta(hours=n),
                     "content_hash": f"{rng.getrandbits(256):064x}", "phash": f"{rng.getrandbits(64):016x}",
                     "width": 32, "height": 32, "mode": "RGB", "format": "PNG", "file_size": 1000 + n,
                     "brightness": 0.5, "contrast": 0.2, "saturation": 0.3, "sharpness": 10.0, "hue": 0.1})
    return pl.DataFrame(rows)


def change(lost: int, previous: int = 40, max_loss: float = 0.05) -> EvalSetChange:
    return EvalSetChange(previous_dataset="ds1", previous_size=previous, size=previous - lost, max_loss=max_loss,
                         lost=tuple(LostImage(content_hash=f"{i:064x}", split="test", path=f"/data/gone/{i}.png")
                                    for i in range(lost)))


@pytest.fixture(scope="module")
def ctx():
    return contracts.new_context()


@pytest.fixture(scope="module")
def data():
    m = manifest()
    s = m.with_columns(pl.col("camera").alias("group"), pl.col("camera").replace_strict(CAMERAS).alias("split"))
    return m, s


def test_a_loss_above_the_limit_fails_the_contracts_naming_the_missing_files(tmp_path, ctx, data):
    m, s = data
    spec = contracts_spec()
    out = tmp_path / "contracts.json"
    with pytest.raises(ContractError) as err:
        run_contracts(m, s, spec, CLASSES, out_path=out, context=ctx, eval_change=change(3))
    msg = str(err.value)
    assert "split_eval_loss" in msg and "3 of 40 frozen val/test images" in msg and "7.5%" in msg
    for i in range(3):
        assert f"/data/gone/{i}.png {i:064x}" in msg
    report = err.value.report
    assert [s.name for s in report.suites if not s.success] == ["split_eval_loss"]
    written = json.loads(out.read_text())
    assert written["eval_set"]["lost_count"] == 3 and len(written["eval_set"]["lost"]) == 3


def test_a_loss_below_the_limit_passes_and_is_reported(ctx, data):
    m, s = data
    report = run_contracts(m, s, contracts_spec(), CLASSES, context=ctx, eval_change=change(1))
    assert report.success and report.suite("split_eval_loss").success
    assert "1 of 40 frozen val/test images of dataset ds1 are gone (2.5%" in report.summary()
    assert report.to_dict()["eval_set"]["lost_count"] == 1
    # no earlier cycle: the suite does not run and nothing is reported
    plain = run_contracts(m, s, contracts_spec(), CLASSES, context=ctx)
    assert plain.suite("split_eval_loss") is None and plain.to_dict()["eval_set"] is None
    # the limit comes from the spec
    strict = run_contracts(m, s, contracts_spec(max_eval_loss=0.0), CLASSES, context=ctx, raise_on_failure=False,
                           eval_change=change(1, max_loss=0.0))
    assert not strict.success and strict.params["max_eval_loss"] == 0.0
