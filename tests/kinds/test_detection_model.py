"""Detection adapter: mAP agrees with pycocotools' COCOeval, precision/recall matching, models,
a short deterministic training run, and evaluation with ONNX export and parity."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from conveyor.kinds.detection import model as D


def _random_case(seed: int = 0, n_images: int = 12, k: int = 3):
    g = np.random.default_rng(seed)
    outputs, targets = [], []
    for _ in range(n_images):
        n_gt = int(g.integers(0, 5))
        xy = g.uniform(0, 80, size=(n_gt, 2))
        wh = g.uniform(5, 40, size=(n_gt, 2))
        gt = np.concatenate([xy, xy + wh], axis=1)
        gl = g.integers(0, k, size=n_gt)
        # predictions: jittered copies of some ground truth plus false positives
        keep = g.random(n_gt) < 0.8
        pb = gt[keep] + g.normal(0, 3, size=(int(keep.sum()), 4))
        pl_ = np.where(g.random(int(keep.sum())) < 0.85, gl[keep], g.integers(0, k, size=int(keep.sum())))
        n_fp = int(g.integers(0, 3))
        fxy = g.uniform(0, 80, size=(n_fp, 2))
        fb = np.concatenate([fxy, fxy + g.uniform(5, 30, size=(n_fp, 2))], axis=1)
        boxes = np.concatenate([pb, fb]) if n_fp else pb
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.concatenate([pl_, g.integers(0, k, size=n_fp)])
        scores = g.uniform(0.05, 1.0, size=len(boxes))
        outputs.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores, dtype=torch.float32),
                        "labels": torch.tensor(labels, dtype=torch.int64)})
        targets.append({"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.tensor(gl, dtype=torch.int64)})
    return outputs, targets


def _cocoeval(outputs, targets) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    aid = 1
    cats = sorted({int(x) for t in targets for x in t["labels"]} | {int(x) for o in outputs for x in o["labels"]})
    for i, (o, t) in enumerate(zip(outputs, targets)):
        images.append({"id": i})
        for b, lab in zip(t["boxes"].tolist(), t["labels"].tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": aid, "image_id": i, "category_id": lab, "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
            aid += 1
        for b, s, lab in zip(o["boxes"].tolist(), o["scores"].tolist(), o["labels"].tolist()):
            dets.append({"image_id": i, "category_id": lab, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in cats]}
    gt.createIndex()
    dt = gt.loadRes(dets)
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_agrees_with_pycocotools(seed):
    outputs, targets = _random_case(seed)
    ours = D.mean_average_precision(outputs, targets)
    ref_map, ref_map50 = _cocoeval(outputs, targets)
    assert 0.05 < ref_map50 < 1.0  # a case with something to measure
    assert ours["map"] == pytest.approx(ref_map, abs=1e-6)
    assert ours["map50"] == pytest.approx(ref_map50, abs=1e-6)


def test_perfect_predictions_score_one():
    _, targets = _random_case(3)
    outputs = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    m = D.mean_average_precision(outputs, targets)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)


def test_precision_recall_at_the_threshold():
    t = [{"boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]]), "labels": torch.tensor([0, 0, 1])}]
    o = [{"boxes": torch.tensor([[0, 0, 10, 10], [0.5, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]]),
          "scores": torch.tensor([0.9, 0.8, 0.3, 0.9]), "labels": torch.tensor([0, 0, 0, 0])}]
    tp, fp, fn, support = D.precision_recall(o, t, 2, score_threshold=0.5)
    # class 0: one hit, one duplicate (FP), one box below the threshold (FN) ; the class-1 box was called 0
    assert (tp, fp, fn, support) == ([1, 0], [2, 0], [1, 1], [2, 1])
    image_set = D.ImageSet("test", ["a"], torch.zeros((1, 3, 8, 8), dtype=torch.uint8), t, ["a", "b"])
    m = D.evaluate_outputs(o, image_set, ["a", "b"]).metrics
    assert m["precision[a]"] == pytest.approx(1 / 3) and m["recall[a]"] == pytest.approx(0.5)
    assert m["precision[b]"] == 0.0 and m["recall[b]"] == 0.0
    assert m["precision"] == pytest.approx((1 / 3 + 0) / 2) and m["recall"] == pytest.approx(0.25)


@pytest.mark.parametrize("name", D.MODELS)
def test_every_model_builds_trains_and_predicts(name):
    torch.manual_seed(0)
    model = D.build_model(name, 3, {})
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    model.train()
    loss = D.training_loss(model, (images, targets), criterion=None, augment=None, generator=torch.Generator(),
                           norm=None, device="cpu")
    assert torch.isfinite(loss)
    s = D.ImageSet("val", ["a", "b"], images, targets, ["x", "y", "z"])
    out = D.predict(model, s)
    assert len(out) == 2 and all(set(o) == {"boxes", "scores", "labels"} for o in out)
    assert all(bool(((o["labels"] >= 0) & (o["labels"] < 3)).all()) for o in out)


def test_unknown_model_names_the_field():
    with pytest.raises(ValueError, match="train.model: unknown detection model"):
        D.build_model("yolov99", 3, {})


def _tiny_split(tmp_path):
    from PIL import Image

    g = np.random.default_rng(0)
    rows = []
    for i in range(10):
        arr = np.full((48, 48, 3), 30, dtype=np.uint8)
        x, y = (int(v) for v in g.integers(0, 28, size=2))
        cls = i % 2
        arr[y : y + 16, x : x + 16] = (220, 40, 40) if cls == 0 else (40, 220, 40)
        p = tmp_path / f"{i}.png"
        Image.fromarray(arr).save(p)
        rows.append({"id": f"{i}.png", "path": str(p), "label": None, "width": 48, "height": 48,
                     "split": "train" if i < 6 else ("val" if i < 8 else "test"),
                     "boxes": [{"x1": float(x), "y1": float(y), "x2": float(x + 16), "y2": float(y + 16),
                                "category": ["red", "green"][cls]}]})
    path = tmp_path / "split.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


@pytest.mark.slow
def test_training_is_deterministic_and_evaluation_exports_onnx(tmp_path):
    from conveyor.model.evaluate import evaluate
    from conveyor.core.spec import spec_from_dict
    from conveyor.model.train import load_checkpoint, train

    split_path = _tiny_split(tmp_path)
    spec = spec_from_dict({
        "name": "tiny-det", "task": "detection",
        "data": {"source": str(tmp_path), "format": "coco", "annotations": "x.json"},
        "train": {"model": "fcos_resnet18_fpn", "image_size": 48, "epochs": 1, "batch_size": 3, "num_threads": 1,
                  "augment": {"hflip": True, "color_jitter": 0.1}},
        "gates": {"rules": ["map50 >= 0.5"], "champion": {"metrics": ["map50"]}},
    }, base_dir=tmp_path)
    classes = ["red", "green"]
    a = train(spec, split_path, classes, tmp_path / "a", dataset_version="v")
    b = train(spec, split_path, classes, tmp_path / "b", dataset_version="v")
    assert a.checkpoint_hash == b.checkpoint_hash
    assert a.history == b.history and "val_map50" in a.history[0]
    model, meta = load_checkpoint(a.checkpoint_path)
    assert meta["task"] == "detection" and meta["classes"] == classes

    res = evaluate(a.checkpoint_path, split_path, tmp_path / "eval", num_threads=1, latency_runs=200)
    for key in ("map50", "map", "precision", "recall", "precision[red]", "recall[green]", "latency_p95_ms"):
        assert key in res.metrics
    assert res.onnx_path is not None and res.onnx_max_abs_diff is not None
    assert res.onnx_max_abs_diff <= D.PARITY_ATOL
    assert res.latency["backend"] == "onnxruntime" and res.latency["throughput_batch"] == 1
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["metrics"]["map50"] == res.metrics["map50"]

    torch_only = evaluate(a.checkpoint_path, split_path, tmp_path / "eval2", num_threads=1, latency_runs=0,
                          export_onnx=False)
    assert torch_only.onnx_path is None
    assert torch_only.metrics["map50"] == res.metrics["map50"]


def test_onnx_parity_measure():
    b = np.array([[0, 0, 10, 10], [5, 5, 20, 20]], dtype=np.float32)
    s = np.array([0.9, 0.2], dtype=np.float32)
    lab = np.array([1, 0])
    same = [(b, s, lab)]
    assert D.onnx_parity(same, same, image_size=100) == 0.0
    moved = [(b + 1.0, s, lab)]
    assert D.onnx_parity(same, moved, image_size=100) == pytest.approx(0.01)
    relabelled = [(b, s, lab[::-1].copy())]
    assert D.onnx_parity(same, relabelled, image_size=100) > 0.5  # each class gets a detection the other lacks
    missing = [(b[:1], s[:1], lab[:1])]
    assert D.onnx_parity(same, missing, image_size=100) == pytest.approx(0.0)  # the dropped one is at the cut-off
