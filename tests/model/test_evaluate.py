"""Evaluate stage: metric names and ranges, ONNX export and parity, latency, metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from conveyor.model import evaluate as ev
from conveyor.model.evaluate import EvalResult, OnnxParityError, evaluate, gate_metrics, measure_torch_latency
from conveyor.kinds.classification import model as cls_kind
from conveyor.core.spec import METRIC_DIRECTIONS, PER_CLASS_METRICS, spec_from_dict
from conveyor.model.train import load_checkpoint, train

COLORS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
CLASSES = list(COLORS)
SIZE = 16


def make_color_dataset(root: Path, n_per_class: int = 30, size: int = SIZE, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for name, rgb in COLORS.items():
        for j in range(n_per_class):
            base = np.array(rgb, dtype=float) + rng.uniform(-30, 30, 3)
            pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            path = root / f"{name}-{j:03d}.png"
            Image.fromarray(pixels).save(path)
            r = j % 5
            split = "train" if r < 3 else ("val" if r == 3 else "test")
            rows.append({"id": path.stem, "path": str(path), "label": name, "split": split, "content_hash": path.stem})
    split_path = root / "split.parquet"
    pl.DataFrame(rows).write_parquet(split_path)
    return split_path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_color_dataset(tmp_path_factory.mktemp("colors"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data) -> str:
    out = tmp_path_factory.mktemp("run")
    spec = spec_from_dict(
        {
            "name": "tiny",
            "task": "classification",
            "data": {"source": str(out)},
            "train": {"model": "resnet10t", "image_size": SIZE, "epochs": 3, "batch_size": 16},
        }
    )
    return train(spec, data, CLASSES, out, dataset_version="dv-eval").checkpoint_path


@pytest.fixture(scope="module")
def result(tmp_path_factory, checkpoint, data) -> EvalResult:
    return evaluate(checkpoint, data, tmp_path_factory.mktemp("eval"), split="test", num_threads=2, latency_runs=200)


def _metric_name_ok(key: str) -> bool:
    m = re.fullmatch(r"([a-z_0-9]+)(?:\[(.+)\])?", key)
    if not m or m[1] not in METRIC_DIRECTIONS:
        return False
    return m[2] is None or (m[1] in PER_CLASS_METRICS and m[2] in CLASSES)


@pytest.mark.slow
def test_metric_keys_are_gate_names(result):
    for key in result.metrics:
        assert _metric_name_ok(key), key
    required = {"accuracy", "f1", "precision", "recall", "ece", "latency_p50_ms", "latency_p95_ms",
                "throughput_ips", "model_size_mb"}
    assert required <= set(result.metrics)
    for c in CLASSES:
        for m in ("precision", "recall", "f1"):
            assert f"{m}[{c}]" in result.metrics
            assert result.metrics[f"{m}[{c}]"] == pytest.approx(result.per_class[c][m])


@pytest.mark.slow
def test_metric_ranges_and_confusion(result):
    n = result.n_images
    assert n == 18 and result.split == "test"
    for key in ("accuracy", "f1", "precision", "recall", "ece"):
        assert 0.0 <= result.metrics[key] <= 1.0, key
    assert result.metrics["accuracy"] > 0.9  # the task is easy; a trained model gets it
    cm = np.array(result.confusion_matrix)
    assert cm.shape == (3, 3) and cm.sum() == n
    assert np.trace(cm) / n == pytest.approx(result.metrics["accuracy"])
    assert [int(result.per_class[c]["support"]) for c in CLASSES] == cm.sum(axis=1).tolist()


@pytest.mark.slow
def test_onnx_parity_and_file(result, checkpoint, data):
    import onnxruntime as ort

    assert result.onnx_path and Path(result.onnx_path).name == "model.onnx"
    assert result.onnx_max_abs_diff is not None and 0.0 <= result.onnx_max_abs_diff <= 1e-4
    # Independently: the ONNX graph takes float RGB in [0, 1] and gives the checkpoint's logits.
    model, meta = load_checkpoint(checkpoint)
    images = cls_kind.load_split(data, CLASSES, "test", SIZE)
    expected = cls_kind.predict(model, images, norm=(meta["mean"], meta["std"])).numpy()
    session = ort.InferenceSession(result.onnx_path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": (images.images.float() / 255).numpy()})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-3
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["conveyor.classes"]) == CLASSES
    assert props["conveyor.image_size"] == str(SIZE)


@pytest.mark.slow
def test_latency_figures(result):
    lat = result.latency
    assert lat["backend"] == "onnxruntime" and lat["num_threads"] == 2 and lat["runs"] >= 200
    assert lat["latency_p95_ms"] >= lat["latency_p50_ms"] > 0
    assert lat["throughput_ips"] > 0 and lat["model_size_mb"] > 0 and lat["params_m"] > 0
    assert result.metrics["latency_p95_ms"] == lat["latency_p95_ms"]
    # the gated figures time the served path on the split's real test images; session.run alone beside them
    assert lat["timed_path"] == ev.SERVED_PATH and lat["served_images"] == result.n_images
    assert lat["model_latency_p95_ms"] >= lat["model_latency_p50_ms"] > 0
    assert lat["latency_p50_ms"] >= lat["model_latency_p50_ms"]
    assert "model_latency_p95_ms" not in result.metrics  # reported, not gated
    assert result.metrics["model_size_mb"] == pytest.approx(Path(result.onnx_path).stat().st_size / 2**20, rel=1e-3)


@pytest.mark.slow
def test_metrics_json_and_gate_metrics(result):
    written = json.loads(Path(result.metrics_path).read_text())
    assert written == json.loads(json.dumps(result.to_dict()))
    flat = gate_metrics(result)
    assert flat == gate_metrics(written)
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["f1"] == result.metrics["f1"]


@pytest.mark.slow
def test_torch_backend_without_onnx(tmp_path, checkpoint, data, result):
    r = evaluate(checkpoint, data, tmp_path, export_onnx=False, latency_runs=200)
    assert r.onnx_path is None and r.onnx_max_abs_diff is None
    assert r.latency["backend"] == "torch" and r.latency["timed_path"] == ev.SERVED_PATH
    assert r.latency["latency_p95_ms"] >= r.latency["latency_p50_ms"] > 0
    assert r.latency["latency_p50_ms"] >= r.latency["model_latency_p50_ms"] > 0
    assert not (tmp_path / "model.onnx").exists()
    # quality metrics do not depend on the backend
    for key in ("accuracy", "f1", "ece"):
        assert r.metrics[key] == result.metrics[key]


@pytest.mark.slow
def test_onnx_disagreement_is_an_error(tmp_path, checkpoint, data, monkeypatch):
    monkeypatch.setattr(cls_kind, "onnx_parity", lambda a, b: 0.5)
    with pytest.raises(OnnxParityError, match="not deployable"):
        evaluate(checkpoint, data, tmp_path, latency_runs=0)
    assert not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "model.onnx").exists()


def test_parity_measure_sees_a_real_difference():
    logits = np.array([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]], dtype=np.float32)
    assert cls_kind.onnx_parity(logits, logits) == 0.0
    assert cls_kind.onnx_parity(logits, logits + np.array([[0.0, 0.5, 0.0], [0, 0, 0]], dtype=np.float32)) > 0.05
    assert cls_kind.onnx_parity(logits, logits[:1]) == float("inf")


@pytest.mark.slow
def test_bad_arguments(tmp_path, checkpoint, data):
    with pytest.raises(ValueError, match="at least 200"):
        evaluate(checkpoint, data, tmp_path, latency_runs=50)
    with pytest.raises(ValueError, match="no rows with split == 'holdout'"):
        evaluate(checkpoint, data, tmp_path, split="holdout", latency_runs=0, export_onnx=False)


def test_measure_torch_latency_helper():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    threads = torch.get_num_threads()
    lat = measure_torch_latency(model, 16, runs=200, num_threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert lat["backend"] == "torch" and lat["latency_p95_ms"] >= lat["latency_p50_ms"] > 0
    assert lat["throughput_ips"] > 0 and lat["runs"] == 200


def test_perfect_and_confused_scores_are_computed_right():
    """The metric code itself, on hand-made outputs: the known answer must come out."""
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    image_set = cls_kind.ImageSet("test", [str(i) for i in range(6)], torch.zeros(6, 3, 2, 2, dtype=torch.uint8),
                                  targets, CLASSES)
    perfect = torch.nn.functional.one_hot(targets, 3).float() * 20
    s = cls_kind.evaluate_outputs(perfect, image_set, CLASSES)
    assert s.metrics["accuracy"] == 1.0 and s.metrics["f1"] == 1.0 and s.metrics["ece"] < 1e-6
    # every "blue" predicted as "green"
    wrong = perfect.clone()
    wrong[4:] = torch.tensor([0.0, 20.0, 0.0])
    s = cls_kind.evaluate_outputs(wrong, image_set, CLASSES)
    assert s.metrics["accuracy"] == pytest.approx(4 / 6)
    assert s.metrics["recall[blue]"] == 0.0 and s.metrics["precision[green]"] == pytest.approx(0.5)
    assert s.confusion_matrix == [[2, 0, 0], [0, 2, 0], [0, 2, 0]]
    assert s.metrics["ece"] == pytest.approx(2 / 6, abs=1e-4)  # confident and wrong on 2 of 6


def test_module_constants():
    assert set(ev.LATENCY_METRICS) <= set(METRIC_DIRECTIONS)


def test_known_rows_leaves_out_rows_of_unknown_classes(tmp_path):
    rows = [{"id": f"i{k}", "path": f"/x/{k}.png", "label": lbl, "split": sp}
            for k, (lbl, sp) in enumerate([("red", "test"), ("yellow", "test"), ("blue", "test"), ("yellow", "train")])]
    table = tmp_path / "split.parquet"
    pl.DataFrame(rows).write_parquet(table)
    same = ev.known_rows(table, "test", "classification", ["red", "blue", "yellow"], tmp_path / "k.parquet")
    assert same.split_path == table and same.record() == {} and not (tmp_path / "k.parquet").exists()
    known = ev.known_rows(table, "test", "classification", CLASSES, tmp_path / "k.parquet")
    assert known.record() == {"classes": ["yellow"], "rows": 1}
    kept = pl.read_parquet(known.split_path)
    assert kept["id"].to_list() == ["i0", "i2", "i3"]  # other splits are left as they are


@pytest.mark.slow
def test_a_class_the_model_does_not_know_is_left_out_and_recorded(tmp_path, checkpoint, data, result):
    """A split with a class new since the model was trained: today's code fails on it."""
    df = pl.read_parquet(data)
    yellow = []
    for j in range(4):
        p = tmp_path / f"yellow-{j}.png"
        Image.fromarray(np.full((SIZE, SIZE, 3), (210, 200, 30), dtype=np.uint8)).save(p)
        yellow.append({"id": p.stem, "path": str(p), "label": "yellow", "split": "test", "content_hash": p.stem})
    grown = tmp_path / "split.parquet"
    pl.concat([df, pl.DataFrame(yellow)], how="vertical_relaxed").write_parquet(grown)
    r = evaluate(checkpoint, grown, tmp_path / "eval", latency_runs=0, export_onnx=False)
    assert r.excluded == {"classes": ["yellow"], "rows": 4} and r.n_images == result.n_images
    assert r.metrics["f1"] == result.metrics["f1"] and r.classes == CLASSES
    assert json.loads(Path(r.metrics_path).read_text())["excluded"] == r.excluded
    assert result.excluded == {} and result.common == {}
    # compared with a model that knows only red and green: the metrics on those rows beside the full ones
    c = evaluate(checkpoint, data, tmp_path / "common", latency_runs=0, export_onnx=False,
                 compare_classes=["red", "green"])
    assert c.common["classes"] == ["red", "green"] and c.common["left_out"] == ["blue"]
    n_blue = pl.read_parquet(data).filter((pl.col("split") == "test") & (pl.col("label") == "blue")).height
    assert c.common["rows"] == result.n_images - n_blue and c.common["left_out_rows"] == n_blue
    assert set(c.common["metrics"]) == set(r.metrics) - set(ev.LATENCY_METRICS)
    assert c.metrics["f1"] == result.metrics["f1"]  # the full metrics are unchanged
    with pytest.raises(ValueError, match="all 4 have classes the model does not know"):
        only_yellow = tmp_path / "only.parquet"
        pl.DataFrame(yellow).write_parquet(only_yellow)
        evaluate(checkpoint, only_yellow, tmp_path / "none", latency_runs=0, export_onnx=False)
