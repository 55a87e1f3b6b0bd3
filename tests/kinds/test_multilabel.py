"""The multilabel task kind: metrics, ONNX export, review formats, serving, sources, contracts, demo."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from conveyor.kinds.multilabel import MultilabelKind
from conveyor.kinds.multilabel import model as ml
from conveyor.kinds.multilabel import serving as ml_serving
from conveyor.kinds.multilabel import sources
from conveyor.labels.labelstudio import Reject

KIND = MultilabelKind()
CLASSES = ["a", "b", "c"]

# A tiny fixed case: 4 images, 3 labels, probabilities chosen off the 15-bin edges.
TRUTH = [[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0]]
PROBS = [[0.9, 0.81, 0.22], [0.62, 0.7, 0.12], [0.31, 0.41, 0.9], [0.21, 0.1, 0.62]]


def _logits(probs) -> torch.Tensor:
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def _image_set(truth) -> ml.ImageSet:
    t = torch.tensor(truth, dtype=torch.float32)
    n = t.shape[0]
    return ml.ImageSet("test", [f"img{i}" for i in range(n)], torch.zeros((n, 3, 8, 8), dtype=torch.uint8), t,
                       list(CLASSES))


# ---- metrics ----------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values():
    scored = ml.evaluate_outputs(_logits(PROBS), _image_set(TRUTH), CLASSES)
    m = scored.metrics
    # a: TP 2 FP 0 FN 0; b: TP 1 FP 1 FN 1; c: TP 1 FP 1 FN 0
    expected = {
        "precision[a]": 1.0, "recall[a]": 1.0, "f1[a]": 1.0,
        "precision[b]": 0.5, "recall[b]": 0.5, "f1[b]": 0.5,
        "precision[c]": 0.5, "recall[c]": 1.0, "f1[c]": 2 / 3,
        "f1_macro": (1 + 0.5 + 2 / 3) / 3,
        "f1_micro": 8 / 11,  # TP 4, FP 2, FN 1
        "precision": (1 + 0.5 + 0.5) / 3,
        "recall": (1 + 0.5 + 1) / 3,
        "exact_match": 0.25,
        # b ranks +, -, +, -: AP = (1/1 + 2/3) / 2
        "ap[a]": 1.0, "ap[b]": (1 + 2 / 3) / 2, "ap[c]": 1.0,
        "map": (1 + (1 + 2 / 3) / 2 + 1) / 3,
        # every probability of a label in a bin of its own: ECE = mean |truth - p|
        "ece[a]": (0.1 + 0.38 + 0.31 + 0.21) / 4,
        "ece[b]": (0.19 + 0.7 + 0.59 + 0.1) / 4,
        "ece[c]": (0.22 + 0.12 + 0.1 + 0.62) / 4,
    }
    expected["ece"] = (expected["ece[a]"] + expected["ece[b]"] + expected["ece[c]"]) / 3
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-5), key
    assert scored.per_class["b"]["support"] == 2.0
    assert scored.confusion_matrix == []
    # the reliability bins are the ECE's bins
    for i, c in enumerate(CLASSES):
        b = scored.curves["reliability"][c]
        ece = sum(n * abs(a - f) for f, a, n in zip(b["confidence"], b["accuracy"], b["count"])) / 4
        assert ece == pytest.approx(m[f"ece[{c}]"], abs=1e-5)
    epoch = ml.epoch_metrics(_logits(PROBS), _image_set(TRUTH), CLASSES, ml.MultilabelLoss())
    assert epoch["f1_macro"] == pytest.approx(expected["f1_macro"], abs=1e-6)
    assert epoch["loss"] == pytest.approx(float(torch.nn.functional.binary_cross_entropy(
        torch.tensor(PROBS), torch.tensor(TRUTH, dtype=torch.float32))), abs=1e-5)


def test_label_without_positives_has_no_ap_and_stays_out_of_map():
    truth = [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    probs = [[0.9, 0.2, 0.3], [0.1, 0.3, 0.2], [0.8, 0.1, 0.1]]
    m = ml.evaluate_outputs(_logits(probs), _image_set(truth), CLASSES).metrics
    assert "ap[b]" not in m and "ap[c]" not in m
    assert m["map"] == pytest.approx(1.0)
    assert all(math.isfinite(v) for v in m.values())


def test_kind_metrics_cover_what_evaluation_reports():
    m = ml.evaluate_outputs(_logits(PROBS), _image_set(TRUTH), CLASSES).metrics
    for key in m:
        base = key.split("[", 1)[0]
        assert base in KIND.metrics, key
        if "[" in key:
            assert base in KIND.per_class_metrics, key
    assert KIND.metrics["ece"] == "lower" and KIND.metrics["f1_macro"] == "higher"
    assert set(KIND.default_gate_metrics) <= set(KIND.metrics)
    assert ml.PRIMARY_METRIC == KIND.primary_metric == "f1_macro"


def test_loss_is_bce_and_smoothing_moves_targets():
    logits = _logits(PROBS)
    y = torch.tensor(TRUTH, dtype=torch.float32)
    plain = ml.make_criterion(SimpleNamespace(label_smoothing=0.0))(logits, y)
    assert float(plain) == pytest.approx(float(torch.nn.BCEWithLogitsLoss()(logits, y)), abs=1e-6)
    smooth = ml.MultilabelLoss(0.2)(logits, y)
    assert float(smooth) == pytest.approx(float(torch.nn.BCEWithLogitsLoss()(logits, y * 0.8 + 0.1)), abs=1e-6)


def test_prediction_records(tmp_path):
    rec = ml.prediction_records(_logits(PROBS), _image_set(TRUTH), CLASSES)
    assert rec["predicted"] == ["a;b", "a;b", "c", "c"]
    assert rec["labels"] == [["a", "b"], ["a"], ["b", "c"], []]
    assert rec["correct"] == [True, False, False, False]
    assert rec["confidence"][0] == pytest.approx(min(0.9, 0.81, 0.78), abs=1e-5)
    path = tmp_path / "p.parquet"
    pl.DataFrame(rec).write_parquet(path)  # the predictions file the report reads
    back = pl.read_parquet(path)
    assert back.schema["probabilities"] == pl.List(pl.Float64)


# ---- data -------------------------------------------------------------------------------------
def _png(path: Path, colour) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def test_load_split_builds_multi_hot_targets_and_rejects_unknown_labels(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", (i * 80, 0, 0))
    rows = {"id": ["2", "0", "1"], "path": [str(tmp_path / f"{i}.png") for i in (2, 0, 1)],
            "labels": [["c", "a"], [], ["b"]], "split": ["train"] * 3}
    pl.DataFrame(rows).write_parquet(tmp_path / "split.parquet")
    s = ml.load_split(tmp_path / "split.parquet", CLASSES, "train", 8)
    assert s.ids == ["0", "1", "2"]
    assert s.targets.tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert s.images.shape == (3, 3, 8, 8)
    rows["labels"][0] = ["z"]
    pl.DataFrame(rows).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="not in the class list"):
        ml.load_split(tmp_path / "bad.parquet", CLASSES, "train", 8)


# ---- ONNX -------------------------------------------------------------------------------------
def test_onnx_export_parity_and_dynamic_batch(tmp_path):
    import onnxruntime as ort

    from conveyor.model.evaluate import export_onnx_model

    torch.manual_seed(0)
    model = ml.build_model("resnet10t", len(CLASSES)).eval()
    mean, std = ml.normalization(model)
    meta = {"classes": CLASSES, "image_size": 32, "model_name": "resnet10t", "mean": mean, "std": std,
            "dataset_version": "v"}
    deploy = ml.deploy_module(model, meta)
    path = export_onnx_model(deploy, tmp_path / "m.onnx", ml.example_input(meta, 1),
                             input_names=ml.ONNX_INPUT_NAMES, output_names=ml.ONNX_OUTPUT_NAMES,
                             dynamic_axes=ml.ONNX_DYNAMIC_AXES, metadata=ml.onnx_metadata(meta))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == list(KIND.onnx_outputs)
    props = sess.get_modelmeta().custom_metadata_map
    assert props["conveyor.task"] == "multilabel" and json.loads(props["conveyor.classes"]) == CLASSES
    for batch in (1, 5):
        x = torch.rand((batch, 3, 32, 32), generator=torch.Generator().manual_seed(batch))
        ort_out = sess.run(None, {"images": x.numpy()})[0]
        assert ort_out.shape == (batch, len(CLASSES))
        with torch.no_grad():
            torch_out = deploy(x).numpy()
        assert ml.onnx_parity(torch_out, ort_out) <= ml.PARITY_ATOL
    assert ml.onnx_parity(np.zeros((2, 3)), np.zeros((3, 3))) == math.inf
    assert ml.onnx_parity(np.zeros((1, 3)), np.full((1, 3), 2.0)) == pytest.approx(1 / (1 + math.exp(-2)) - 0.5)


# ---- Label Studio and the queue CSV -----------------------------------------------------------
def test_labelstudio_config_prediction_parse_round_trip():
    xml = KIND.labelstudio_config(["a", "b & c"])
    root = ET.fromstring(xml)
    choices = root.find("Choices")
    assert choices.get("choice") == "multiple" and choices.get("name") == "label"
    assert [c.get("value") for c in choices.findall("Choice")] == ["a", "b & c"]

    item = {"id": "x", "content_hash": "abc123", "predicted_labels": ["c", "a"]}
    result = KIND.labelstudio_prediction(item, CLASSES)
    assert result[0]["type"] == "choices" and result[0]["value"] == {"choices": ["a", "c"]}
    ctx = SimpleNamespace(classes=CLASSES)
    assert KIND.labelstudio_parse(ctx, result, {}, "task 1") == ["a", "c"]
    assert KIND.labelstudio_prediction({"id": "y", "predicted": "b;a"}, CLASSES)[0]["value"]["choices"] == ["a", "b"]
    assert KIND.labelstudio_prediction({"id": "z"}, CLASSES) is None
    # nothing ticked: a negative
    assert KIND.labelstudio_parse(ctx, [], {}, "task 2") == []
    empty = [{"type": "choices", "from_name": "label", "to_name": "image", "value": {"choices": []}}]
    assert KIND.labelstudio_parse(ctx, empty, {}, "task 3") == []
    with pytest.raises(Reject) as err:
        KIND.labelstudio_parse(ctx, [{"type": "choices", "from_name": "label", "value": {"choices": ["a", "q"]}}],
                               {}, "task 4")
    assert err.value.reason == "unknown_label" and err.value.field == "labels" and "task 4" in err.value.detail
    with pytest.raises(Reject, match="not a list"):
        KIND.labelstudio_parse(ctx, {"choices": []}, {}, "task 5")
    assert KIND.label_key(["b", "a"]) == KIND.label_key(("a", "b")) != KIND.label_key(["a"])


def test_csv_parse():
    ctx = SimpleNamespace(classes=CLASSES)
    assert "labels" in KIND.csv_columns
    assert KIND.csv_parse(ctx, {"label": "ok", "labels": "c; a"}, "row 1") == ["a", "c"]
    assert KIND.csv_parse(ctx, {"label": "ok", "labels": ""}, "row 2") == []
    with pytest.raises(Reject) as err:
        KIND.csv_parse(ctx, {"label": "", "labels": "a"}, "row 3")
    assert err.value.reason == "unreviewed"
    with pytest.raises(Reject) as err:
        KIND.csv_parse(ctx, {"label": "ok", "labels": "a;nope"}, "row 4")
    assert err.value.reason == "unknown_label" and "row 4" in err.value.detail
    digest = KIND.label_digest(pl.DataFrame({"labels": [["b", "a"], []]}, schema={"labels": pl.List(pl.String)}))
    assert digest == ["a;b", ""]


# ---- serving and scoring ----------------------------------------------------------------------
def test_decode_prediction_and_score():
    outputs = {"logits": np.array([[2.0, -3.0, 0.5]], dtype=np.float32)}
    pred = KIND.decode_prediction(outputs, CLASSES, 32, 100, 80)
    p = 1 / (1 + np.exp(-np.array([2.0, -3.0, 0.5])))
    assert pred.payload["labels"] == ["a", "c"]
    assert pred.payload["probabilities"]["b"] == pytest.approx(p[1], abs=1e-6)
    assert pred.payload["confidence"] == pytest.approx(p[2], abs=1e-6)  # the least sure decision
    assert pred.features == {"predicted": "a;c", "confidence": pytest.approx(p[2], abs=1e-6), "predicted_count": 2.0}

    s = KIND.score(outputs, CLASSES)
    assert s.predicted == "a" and s.classes == ("a", "c")
    assert s.least_confidence == pytest.approx(1 - p[2], abs=1e-6)
    assert s.margin == pytest.approx(1 - abs(2 * p[2] - 1), abs=1e-6)
    h = -(p[2] * np.log2(p[2]) + (1 - p[2]) * np.log2(1 - p[2]))
    assert s.entropy == pytest.approx(h, abs=1e-6)
    assert s.uncertainty("margin") == s.margin

    none = KIND.decode_prediction({"logits": np.full((1, 3), -6.0)}, CLASSES, 32, 10, 10)
    assert none.payload["labels"] == [] and none.features["predicted"] == ""
    assert KIND.score({"logits": np.full((1, 3), -6.0)}, CLASSES).predicted is None

    assert KIND.machine_label(outputs, CLASSES, 0.6) == ["a", "c"]  # least sure decision p(c) = 0.62
    assert KIND.machine_label(outputs, CLASSES, 0.7) is None
    assert KIND.prediction_classes(CLASSES) == set(CLASSES)
    allowed = KIND.prediction_classes(CLASSES)
    assert "a;c" in allowed and "" in allowed and "a;zebra" not in allowed and "zebra" not in allowed
    with pytest.raises(ValueError, match="logits"):
        ml_serving.probabilities({"logits": np.zeros((2, 3))}, CLASSES)


# ---- sources ----------------------------------------------------------------------------------
def test_manifest_sources_quarantine_bad_rows(tmp_path):
    root = tmp_path / "data"
    for name in ("one.png", "two.png", "neg.png", "dup.png", "unknown.png", "time.png", "json.png"):
        _png(root / "img" / name, (10, 20, 30))
    rows = [
        {"path": "img/one.png", "labels": "a", "camera": "c1", "captured_at": "2026-10-01T00:00:00Z"},
        {"path": "img/two.png", "labels": "c; a", "camera": "c1", "captured_at": ""},
        {"path": "img/neg.png", "labels": "", "camera": "c2", "captured_at": ""},  # a valid negative
        {"path": "img/dup.png", "labels": "b", "camera": "c2", "captured_at": ""},
        {"path": "img/dup.png", "labels": "b", "camera": "c2", "captured_at": ""},  # duplicate
        {"path": "img/unknown.png", "labels": "a;zebra", "camera": "c2", "captured_at": ""},
        {"path": "img/time.png", "labels": "b", "camera": "c2", "captured_at": "yesterday"},
        {"path": "../outside.png", "labels": "a", "camera": "c2", "captured_at": ""},
        {"path": "", "labels": "a", "camera": "c2", "captured_at": ""},
        {"path": "img/json.png", "labels": '["b", "a"]', "camera": "c3", "captured_at": ""},
    ]
    pl.DataFrame(rows).write_csv(root / "manifest.csv")
    spec = SimpleNamespace(source_path=root / "manifest.csv", data=SimpleNamespace(format="manifest", classes=CLASSES))
    col = sources.collect(spec.source_path, CLASSES)
    assert col.received == len(rows)
    assert len(col.items) + len(col.quarantined) == col.received
    assert [it.labels for it in col.items] == [("a",), ("a", "c"), (), ("b",), ("a", "b")]
    assert col.items[0].captured_at.isoformat() == "2026-10-01T00:00:00+00:00"
    reasons = {q.row: (q.reason, q.field) for q in col.quarantined}
    assert reasons == {5: ("duplicate_row", "path"), 6: ("unknown_label", "labels"), 7: ("bad_timestamp", "captured_at"),
                       8: ("path_escapes_root", "path"), 9: ("missing_file", "path")}
    unknown = next(q for q in col.quarantined if q.row == 6)
    assert "manifest.csv" in unknown.detail and "row 6" in unknown.detail and "labels" in unknown.detail
    assert "zebra" in unknown.detail
    frame = sources.labels_frame(col.items)
    assert frame.schema["labels"] == pl.List(pl.String)
    # what ingest receives: the same rows as records, the label sets kept for the finisher
    from conveyor.data.records import Collection, IngestError

    rec = KIND.collect(spec, spec.source_path, "manifest")
    assert isinstance(rec, Collection) and rec.format == "manifest" and rec.received == len(rows)
    assert [it.rel_path for it in rec.candidates] == [it.rel_path for it in col.items]
    assert all(it.label is None for it in rec.candidates)
    assert {q.row: (q.reason, q.field) for q in rec.quarantined} == reasons
    ids = [it.rel_path for it in rec.candidates]
    done = rec.finisher.finish(pl.DataFrame({"id": ids}))
    assert done.manifest["labels"].to_list() == [["a"], ["a", "c"], [], ["b"], ["a", "b"]]
    assert done.summary["negative_images"] == 1 and done.summary["labels_per_class"] == {"a": 3, "b": 2, "c": 1}
    assert done.digest == KIND.annotation_digest(done.manifest) != ""
    with pytest.raises(IngestError, match="manifest"):
        KIND.collect(spec, spec.source_path, "folder")


def test_manifest_sources_read_list_columns(tmp_path):
    root = tmp_path / "data"
    _png(root / "x.png", (1, 2, 3))
    _png(root / "y.png", (3, 2, 1))
    pl.DataFrame({"path": ["x.png", "y.png"], "labels": [["b"], None]}).write_parquet(root / "m.parquet")
    col = sources.collect(root / "m.parquet", CLASSES)
    assert [it.labels for it in col.items] == [("b",), ()]
    pl.DataFrame({"path": ["x.png"], "labels": [5]}).write_parquet(root / "bad.parquet")
    col = sources.collect(root / "bad.parquet", CLASSES)
    assert col.received == 1 and not col.items
    assert [(q.reason, q.field) for q in col.quarantined] == [("unknown_label", "labels")]  # 5 is read as "5"
    from conveyor.data.ingest import IngestError

    pl.DataFrame({"path": ["x.png"]}).write_csv(root / "nolabels.csv")
    with pytest.raises(IngestError, match="labels"):
        sources.collect(root / "nolabels.csv", CLASSES)


def test_parse_labels():
    assert sources.parse_labels(None) == [] and sources.parse_labels("") == []
    assert sources.parse_labels("a;b;a") == ["a", "b"]
    assert sources.parse_labels(["x", " y "]) == ["x", "y"]
    with pytest.raises(sources.LabelsError):
        sources.parse_labels('["a", ')
    with pytest.raises(sources.LabelsError):
        sources.parse_labels([1.5])


# ---- data-plane hooks and contracts ------------------------------------------------------------
def _frame() -> pl.DataFrame:
    return pl.DataFrame({"id": ["i1", "i2", "i3", "i4"], "labels": [["a", "b"], [], ["b"], ["c"]],
                         "split": ["train", "val", "val", "test"]},
                        schema={"id": pl.String, "labels": pl.List(pl.String), "split": pl.String})


def test_class_frame_digest_and_profile():
    f = _frame()
    cf = KIND.class_frame(f)
    assert cf.columns == ["split", "cls"]
    assert sorted(cf.rows()) == [("test", "c"), ("train", "a"), ("train", "b"), ("val", "b")]
    d = KIND.annotation_digest(f)
    assert len(d) == 16 and d == KIND.annotation_digest(f.reverse())
    changed = f.with_columns(pl.Series("labels", [["a"], [], ["b"], ["c"]], dtype=pl.List(pl.String)))
    assert KIND.annotation_digest(changed) != d
    assert KIND.annotation_digest(f.drop("labels")) == ""
    prof = f.select(KIND.profile_columns(f))
    assert prof["labels_per_image"].to_list() == [2.0, 0.0, 1.0, 1.0]


def _run_suite(name: str, frame, params: dict) -> bool:
    """Validate a pandas frame against a suite file with GX's public API."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    from conveyor.data.contracts import read_suite

    data = read_suite(name)
    configs = [ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"]) for e in data["expectations"]]
    for c in configs:
        c.to_domain_obj()  # raises on a bad type or bad kwargs
    suite = gx.ExpectationSuite(name=name, expectations=configs)
    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas("ds").add_dataframe_asset("frame")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, expectation_parameters=params)
    assert len(result.results) == len(configs)
    return bool(result.success)


def test_contract_suites_pass_good_frames_and_catch_bad_ones(monkeypatch):
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    split = _frame()
    spec = SimpleNamespace(data=SimpleNamespace(classes=CLASSES), split=SimpleNamespace(ratios={"train": 0.5, "val": 0.25, "test": 0.25}))
    from conveyor.data.contracts import class_coverage_frame

    frames = {**KIND.contract_frames(split.drop("split"), None, spec), **KIND.contract_frames(split, split, spec)}
    assert set(frames) | {KIND.coverage_suite} == set(KIND.contract_suites)
    assert all(isinstance(f, pl.DataFrame) for f in frames.values())
    params = {"classes": CLASSES, "min_per_class_eval": 1}
    assert _run_suite("multilabel_labels", frames["multilabel_labels"].to_pandas(), params)
    # val holds b only, test holds c only: a and b/c miss an eval split
    cov = class_coverage_frame(KIND.class_frame(split), CLASSES, ["val", "test"]).to_pandas()
    assert sorted(cov[cov["count"] == 0][["split", "label"]].itertuples(index=False, name=None)) == [
        ("test", "a"), ("test", "b"), ("val", "a"), ("val", "c")]
    assert not _run_suite("multilabel_class_coverage", cov, params)
    assert _run_suite("multilabel_class_coverage", cov, {"min_per_class_eval": 0})
    bad = split.with_columns(pl.Series("labels", [["a", "a"], ["zebra"], [], []], dtype=pl.List(pl.String)))
    assert not _run_suite("multilabel_labels", KIND.contract_frames(bad, None, spec)["multilabel_labels"].to_pandas(),
                          params)
    assert set(KIND.contract_frames(bad, None, spec)) == {"multilabel_manifest", "multilabel_labels"}


# ---- spec checks, the example and its demo data -------------------------------------------------
def _spec(classes=CLASSES, rules=(), champion=(), fmt="manifest"):
    from conveyor.core.spec import GateRule

    parsed = []
    for r in rules:
        metric, rest = r.split(" ", 1)
        op, value = rest.split(" ")
        name, _, cls = metric.partition("[")
        parsed.append(GateRule(metric=name, cls=cls[:-1] or None, op=op, threshold=float(value)))
    gates = SimpleNamespace(parsed_rules=lambda: parsed, champion=SimpleNamespace(metrics=list(champion)))
    return SimpleNamespace(data=SimpleNamespace(format=fmt, classes=classes), gates=gates)


def test_validate_spec_and_check_classes():
    KIND.validate_spec(_spec(rules=["f1_macro >= 0.9", "ap[b] >= 0.8", "latency_p95_ms <= 25"], champion=["map"]))
    with pytest.raises(ValueError, match="data.format"):
        KIND.validate_spec(_spec(fmt="folder"))
    with pytest.raises(ValueError, match="data.classes"):
        KIND.validate_spec(_spec(classes=None))
    with pytest.raises(ValueError, match="data.classes"):
        KIND.validate_spec(_spec(classes=["a", "b;c"]))
    with pytest.raises(ValueError, match="miou"):
        KIND.validate_spec(_spec(rules=["miou >= 0.5"]))
    with pytest.raises(ValueError, match="not one of data.classes"):
        KIND.validate_spec(_spec(rules=["ap[q] >= 0.5"]))
    with pytest.raises(ValueError, match="per-label"):
        KIND.validate_spec(_spec(champion=["map[a]"]))
    assert KIND.check_classes(("x",)) == ["x"]
    with pytest.raises(ValueError, match="repeat"):
        KIND.check_classes(["a", "a"])


def test_example_spec_gates_are_kind_metrics_and_demo_data_is_ingestible(tmp_path):
    from conveyor.demo.bundled import bundled_example, example_writer
    from conveyor.demo.multilabel import BATCH1, BATCH2, CLASSES as DEMO_CLASSES

    raw = yaml.safe_load(bundled_example("multilabel").read_text())
    assert raw["task"] == "multilabel" and raw["data"]["classes"] == DEMO_CLASSES
    rules = raw["gates"]["rules"]
    assert "f1_macro >= 0.95" in rules and "map >= 0.95" in rules and "ece <= 0.03" in rules
    KIND.validate_spec(_spec(classes=raw["data"]["classes"], rules=rules, champion=raw["gates"]["champion"]["metrics"]))

    spec = SimpleNamespace(source_path=tmp_path / "data" / "manifest.csv",
                           data=SimpleNamespace(format="manifest", classes=DEMO_CLASSES))
    write = example_writer("multilabel")
    write(spec, 1)
    first = sources.collect(spec.source_path, DEMO_CLASSES)
    assert first.received == len(first.items) == BATCH1
    write(spec, 2)
    col = sources.collect(spec.source_path, DEMO_CLASSES)
    assert col.received == BATCH1 + BATCH2 + 4
    assert {q.reason for q in col.quarantined} == {"unknown_label", "path_escapes_root"}
    counts = {c: sum(c in it.labels for it in col.items) for c in DEMO_CLASSES}
    assert min(counts.values()) > 0.2 * len(col.items)
    assert any(not it.labels for it in col.items)  # negatives
    assert any(len(it.labels) >= 2 for it in col.items)
    assert len({it.camera for it in col.items}) == 12


# ---- reports -----------------------------------------------------------------------------------
def test_report_sections():
    rec = ml.prediction_records(_logits(PROBS), _image_set(TRUTH), CLASSES)
    metrics = ml.evaluate_outputs(_logits(PROBS), _image_set(TRUTH), CLASSES).metrics
    run = SimpleNamespace(metrics=metrics, predictions=pl.DataFrame(rec), classes=CLASSES)
    sections = KIND.report_sections(run)
    assert [s.title for s in sections] == ["Per-label precision, recall, F1 and AP", "Per-label reliability"]
    table = sections[0].table
    assert table["label"].tolist() == CLASSES and table["support"].tolist() == [2, 2, 1]
    assert table.loc[1, "ap"] == pytest.approx(round((1 + 2 / 3) / 2, 4))
    assert sections[1].figure is not None
    import matplotlib.pyplot as plt

    plt.close(sections[1].figure)
    only = KIND.report_sections(SimpleNamespace(metrics=metrics, predictions=None, classes=CLASSES))
    assert len(only) == 1 and "support" not in only[0].table.columns


# ---- training ----------------------------------------------------------------------------------
def _toy_split(tmp_path: Path, n: int) -> Path:
    """Images with a red square (label a) and/or a blue square (label b) on grey; c never shown."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        arr = np.full((16, 16, 3), 128, dtype=np.uint8)
        labels = []
        if rng.random() < 0.5:
            arr[1:7, 1:7] = (230, 20, 20)
            labels.append("a")
        if rng.random() < 0.5:
            arr[9:15, 9:15] = (20, 20, 230)
            labels.append("b")
        arr = np.clip(arr + rng.integers(-10, 11, arr.shape), 0, 255).astype(np.uint8)
        p = tmp_path / f"t{i:03d}.png"
        Image.fromarray(arr).save(p)
        rows.append({"id": f"t{i:03d}", "path": str(p), "labels": labels, "split": "train" if i < n * 3 // 4 else "val"})
    pl.DataFrame(rows, schema={"id": pl.String, "path": pl.String, "labels": pl.List(pl.String),
                               "split": pl.String}).write_parquet(tmp_path / "split.parquet")
    return tmp_path / "split.parquet"


@pytest.mark.slow
def test_small_training_run_learns_a_toy_task(tmp_path):
    split = _toy_split(tmp_path, 160)
    torch.manual_seed(0)
    model = ml.build_model("resnet10t", len(CLASSES))
    norm = ml.normalization(model)
    train = ml.load_split(split, CLASSES, "train", 16)
    val = ml.load_split(split, CLASSES, "val", 16)
    crit = ml.make_criterion(SimpleNamespace(label_smoothing=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(ml.make_dataset(train), batch_size=32, shuffle=True, generator=gen,
                                         collate_fn=ml.collate)
    before = ml.epoch_metrics(ml.predict(model, val, norm=norm), val, CLASSES, crit)
    for _ in range(12):
        model.train()
        for batch in loader:
            loss = ml.training_loss(model, batch, criterion=crit, augment=None, generator=gen, norm=norm, device="cpu")
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = ml.predict(model, val, norm=norm)
    after = ml.evaluate_outputs(out, val, CLASSES).metrics
    assert after["f1[a]"] >= 0.9 and after["f1[b]"] >= 0.9
    assert after["ap[a]"] >= 0.95 and after["ap[b]"] >= 0.95
    assert ml.epoch_metrics(out, val, CLASSES, crit)["loss"] < before["loss"]


def test_manifest_and_split_frame_suites(monkeypatch):
    from datetime import datetime, timezone

    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    n = 3
    manifest = pl.DataFrame({
        "id": [f"img/{i}.png" for i in range(n)], "path": [f"/data/img/{i}.png" for i in range(n)],
        "rel_path": [f"img/{i}.png" for i in range(n)], "label": [None] * n, "camera": ["c1"] * n,
        "scene": ["s"] * n, "captured_at": [datetime(2026, 10, 1, tzinfo=timezone.utc)] * n,
        "content_hash": [f"{i:064x}" for i in range(n)], "phash": ["ab12cd34ef56ab12"] * n,
        "width": [32] * n, "height": [32] * n, "mode": ["RGB"] * n, "format": ["PNG"] * n, "file_size": [900] * n,
        **{c: [0.5] * n for c in ("brightness", "contrast", "saturation", "sharpness", "hue")},
        "labels": [["a"], [], ["b", "c"]],
    }, schema_overrides={"label": pl.String, "labels": pl.List(pl.String)})
    split = manifest.with_columns(pl.lit("c1").alias("group"), pl.Series("split", ["train", "val", "test"]))
    spec = SimpleNamespace(data=SimpleNamespace(classes=CLASSES), split=SimpleNamespace(ratios={"train": 0.7, "val": 0.15, "test": 0.15}))
    frames = {**KIND.contract_frames(manifest, None, spec), **KIND.contract_frames(split, split, spec)}
    frames = {k: v.to_pandas() for k, v in frames.items()}
    params = {"min_side": 8, "max_side": 4096, "max_file_bytes": 2**20, "max_captured_at": "2026-12-31T00:00:00+00:00",
              "splits": ["train", "val", "test"]}
    assert _run_suite("multilabel_manifest", frames["multilabel_manifest"], params)
    assert _run_suite("multilabel_split_frame", frames["multilabel_split_frame"], params)
    holes = pl.Series("labels", [["a"], None, []], dtype=pl.List(pl.String))
    bad = {**KIND.contract_frames(manifest.with_columns(holes), None, spec),
           **KIND.contract_frames(split.with_columns(holes), split.with_columns(holes), spec)}
    bad = {k: v.to_pandas() for k, v in bad.items()}
    assert not _run_suite("multilabel_manifest", bad["multilabel_manifest"], params)
    assert not _run_suite("multilabel_split_frame", bad["multilabel_split_frame"], params)


def test_prediction_log_takes_label_sets_and_counts(tmp_path):
    from datetime import datetime, timezone

    from conveyor.monitoring.feedback import PREDICTION_LOG_SCHEMA, check_predictions

    assert PREDICTION_LOG_SCHEMA["predicted_count"] == pl.Float64()
    table = tmp_path / "predictions.csv"
    pl.DataFrame({"prediction_id": ["p1", "p2", "p3", "p4"], "predicted": ["a;c", None, "a;zebra", "b"],
                  "confidence": [0.9, 0.8, 0.8, 0.8], "predicted_count": [2.0, 0.0, 2.0, 1.5]}).write_csv(table)
    checked = check_predictions(table, CLASSES, "multilabel", datetime(2026, 10, 1, tzinfo=timezone.utc))
    assert checked.accepted["predicted_count"].to_list() == [2.0, 0.0]
    assert checked.quarantined.select("row", "field", "reason").rows() == [
        (3, "predicted", "unknown_class"), (4, "predicted_count", "out_of_range")]


def test_reviewed_label_sets_are_stored_and_applied():
    from conveyor.labels import versions
    from conveyor.labels.stage import REVIEW_SCHEMA

    records = [KIND.review_record(v, lambda m: ("", "")) for v in (["a", "c"], [])]
    assert records == [{"labels": '["a", "c"]'}, {"labels": "[]"}]
    stored = pl.DataFrame([{"content_hash": "h1", "id": "x", **records[0]}, {"content_hash": "h2", "id": "y", **records[1]}],
                          schema=REVIEW_SCHEMA)
    assert KIND.label_digest(stored) == ["a;c", ""]
    (col,) = KIND.review_columns(stored.to_dicts(), CLASSES)
    assert col.name == "labels" and col.dtype == pl.List(pl.String) and col.to_list() == [["a", "c"], []]
    manifest = pl.DataFrame({"content_hash": ["h1", "h2"], "id": ["x", "y"], "label": [None, None], "labels": col},
                            schema_overrides={"label": pl.String})
    assert versions.manifest_kind(manifest).name == "multilabel"
    assert versions.label_table(manifest)["label"].to_list() == ["a;c", ""]
    assert KIND.class_counts(manifest) == {"a": 1, "c": 1}
    cells = KIND.csv_cells({"labels": ["c", "a"], "predicted": "a"}, CLASSES)
    assert cells == {"predicted": "a;c", "labels": "a;c"}
