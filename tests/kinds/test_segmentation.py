"""Segmentation: mask-pair ingest and quarantine, contracts, metrics, the adapter, train + evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from conveyor.core.spec import parse_rule, spec_from_dict
from helpers.specs import segmentation_spec as seg_spec
from helpers.toydata import write_pairs

CLASSES = ["background", "defect"]


# ---- ingest ------------------------------------------------------------------------------------


def test_ingest_quarantines_each_bad_mask_kind(tmp_path):
    from conveyor.data.ingest import ingest

    write_pairs(tmp_path, cameras=2, per_camera=3)
    rng = np.random.default_rng(1)
    img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    bad = tmp_path / "images" / "bad"
    bad.mkdir()
    mroot = tmp_path / "masks" / "bad"
    mroot.mkdir()
    for name in ("missing", "size", "values", "rgb", "text", "palette", "ignored"):
        Image.fromarray(img).save(bad / f"{name}.png")
    Image.fromarray(np.zeros((16, 32), np.uint8), mode="L").save(mroot / "size.png")
    vals = np.zeros((32, 32), np.uint8)
    vals[0, 0] = 3
    Image.fromarray(vals, mode="L").save(mroot / "values.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(mroot / "rgb.png")
    (mroot / "text.png").write_text("no image")
    pal = Image.fromarray(np.ones((32, 32), np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(mroot / "palette.png")  # P mode: the index (1 = defect) is the class
    ign = np.zeros((32, 32), np.uint8)
    ign[:4] = 255
    Image.fromarray(ign, mode="L").save(mroot / "ignored.png")  # ignore_index is allowed

    spec = seg_spec(tmp_path)
    res = ingest(spec, tmp_path / "ws")
    assert res.received == res.accepted + res.quarantined == 6 + 7
    assert res.quarantine_reasons == {"missing_mask": 1, "mask_size_mismatch": 1, "mask_bad_values": 1,
                                      "mask_bad_mode": 1, "unreadable_mask": 1}
    q = pl.read_parquet(res.quarantine_path)
    for row in q.iter_rows(named=True):
        assert row["rel_path"].split("/")[-1].split(".")[0] in row["detail"] and row["field"] == "mask_path"
    m = pl.read_parquet(res.manifest_path)
    assert {"mask_path", "mask_hash", "mask_classes"} <= set(m.columns)
    assert m["label"].null_count() == m.height
    row = m.filter(pl.col("id") == "bad/palette.png").row(0, named=True)
    assert row["mask_classes"] == ["defect"]
    assert m.filter(pl.col("id") == "bad/ignored.png")["mask_classes"].to_list() == [["background"]]


def test_changed_mask_changes_the_dataset_version(tmp_path):
    from conveyor.data.fingerprint import source_fingerprint
    from conveyor.data.ingest import ingest

    write_pairs(tmp_path, cameras=1, per_camera=2)
    spec = seg_spec(tmp_path)
    v1, k1 = ingest(spec, tmp_path / "ws").dataset_version, source_fingerprint(spec)
    mask = np.zeros((32, 32), np.uint8)
    mask[1:5, 1:5] = 1
    Image.fromarray(mask, mode="L").save(tmp_path / "masks" / "cam-00" / "part-000.png")
    v2, k2 = ingest(spec, tmp_path / "ws").dataset_version, source_fingerprint(spec)
    assert v1 != v2 and k1 != k2


def test_masks_need_classes_and_annotations(tmp_path):
    from conveyor.data.ingest import ingest
    from conveyor.data.records import IngestError

    write_pairs(tmp_path, cameras=1, per_camera=1)
    d = seg_spec(tmp_path).model_dump()
    d["data"]["classes"] = None
    with pytest.raises(IngestError, match="data.classes"):
        ingest(spec_from_dict(d, base_dir=tmp_path), tmp_path / "ws")
    d = seg_spec(tmp_path).model_dump()
    d["data"]["annotations"] = "nowhere"
    with pytest.raises(IngestError, match="data.annotations"):
        ingest(spec_from_dict(d, base_dir=tmp_path), tmp_path / "ws")


# ---- contracts ---------------------------------------------------------------------------------


def test_contracts_pass_and_class_coverage_fails_without_defects_in_test(tmp_path):
    from conveyor.data.contracts import run_contracts
    from conveyor.data.ingest import ingest
    from conveyor.kinds.segmentation.contracts import class_coverage_frame

    write_pairs(tmp_path, cameras=4, per_camera=3)
    spec = seg_spec(tmp_path, epochs=1)
    res = ingest(spec, tmp_path / "ws")
    m = pl.read_parquet(res.manifest_path)
    cams = {"cam-00": "train", "cam-01": "train", "cam-02": "val", "cam-03": "test"}
    split = m.with_columns(pl.col("camera").alias("group"), pl.col("camera").replace_strict(cams).alias("split"))
    rep = run_contracts(m, split, spec, res.classes, raise_on_failure=False)
    assert rep.success, rep.summary()
    # the test camera's masks lose their defects: coverage of "defect" in test is 0
    stripped = split.with_columns(
        pl.when(pl.col("split") == "test").then(pl.lit(["background"])).otherwise(pl.col("mask_classes")).alias("mask_classes")
    )
    cov = class_coverage_frame(stripped, CLASSES, ["val", "test"])
    assert cov.filter((pl.col("split") == "test") & (pl.col("label") == "defect"))["count"].item() == 0
    rep = run_contracts(m, stripped, spec, res.classes, raise_on_failure=False)
    assert not rep.success
    assert [s.name for s in rep.suites if not s.success] == ["segmentation_class_coverage"]


# ---- metrics -----------------------------------------------------------------------------------


def _set(targets: np.ndarray):
    from conveyor.kinds.segmentation.model import MaskSet

    t = torch.from_numpy(targets.astype(np.uint8))
    n, h, w = t.shape
    return MaskSet("test", [str(i) for i in range(n)], torch.zeros((n, 3, h, w), dtype=torch.uint8), t, CLASSES)


def _logits(preds: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(preds).long(), 2).permute(0, 3, 1, 2).float()


def test_iou_and_fn_rate_by_hand_with_ignored_pixels():
    from conveyor.kinds.segmentation.model import IGNORE, evaluate_outputs

    t = np.zeros((1, 4, 4), np.uint8)
    t[0, :2, :2] = 1          # 4 defect pixels
    t[0, 3, :] = IGNORE       # a row nobody labelled
    p = np.zeros((1, 4, 4), np.int64)
    p[0, :2, 0] = 1           # 2 of the 4 defect pixels found
    p[0, 2, 3] = 1            # 1 false positive
    p[0, 3, :] = 1            # predictions on ignored pixels do not count
    r = evaluate_outputs(_logits(p), _set(t), CLASSES)
    # defect: tp 2, fp 1, fn 2 -> 2/5; background (12 labelled): tp 7 of 8, fp 2, fn 1 -> 7/10
    assert r.metrics["iou[defect]"] == pytest.approx(2 / 5)
    assert r.metrics["iou[background]"] == pytest.approx(7 / 10)
    assert r.metrics["miou"] == pytest.approx((0.4 + 0.7) / 2)
    assert r.metrics["fn_rate[defect]"] == pytest.approx(2 / 4)
    assert r.metrics["fn_rate[background]"] == pytest.approx(1 / 8)
    assert r.metrics["pixel_accuracy"] == pytest.approx(9 / 12)
    assert r.confusion_matrix == [[7, 1], [2, 2]]
    for key in r.metrics:
        if key != "pixel_accuracy":
            parse_rule(f"{key} >= 0")  # every name is a gate metric


def test_boundary_iou_by_hand():
    from conveyor.kinds.segmentation.model import boundary_band, boundary_iou, boundary_distance

    # a 5x5 square in a 9x9 image, d = 1: its band is the 16-pixel ring; the interior 3x3 is not in it
    g = torch.zeros((1, 9, 9), dtype=torch.bool)
    g[0, 2:7, 2:7] = True
    band = boundary_band(g, 1)
    assert int(band.sum()) == 16 and not bool(band[0, 3:6, 3:6].any())
    # the image edge is no contour: a full-image mask has an empty band
    assert int(boundary_band(torch.ones((1, 5, 5), dtype=torch.bool), 1).sum()) == 0
    t = g.long()
    p = torch.zeros_like(t)
    p[0, 2:7, 2:6] = 1        # the prediction misses the square's last column
    biou = boundary_iou(p, t, 2, d=1)
    # defect: truth ring 16 px, predicted 5x4 ring 14 px; shared: the top and bottom rows' first
    # four pixels (8) and the left column's middle three (3) = 11; union 16 + 14 - 11 = 19
    assert biou[1] == pytest.approx(11 / 19)
    # a perfect prediction scores 1 for both classes
    assert boundary_iou(t, t, 2, d=1) == [1.0, 1.0]
    assert boundary_distance(96, 96) == 3


# ---- adapter, train, evaluate ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unet", "lraspp_mobilenet_v3_large"])
def test_models_give_per_pixel_logits(name):
    from conveyor.kinds.segmentation.model import build_model

    model = build_model(name, 3, {"depth": 2, "width": 4} if name == "unet" else {}).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32)


def test_unknown_model_and_bad_kwargs_name_the_field():
    from conveyor.kinds.segmentation.model import build_model

    with pytest.raises(ValueError, match="train.model"):
        build_model("segformer", 2, {})
    with pytest.raises(ValueError, match="train.model_kwargs"):
        build_model("unet", 2, {"depth": 9})
    with pytest.raises(ValueError, match="weights"):
        build_model("fcn_resnet50", 2, {"weights": "DEFAULT"})


def test_loss_ignores_unlabelled_pixels():
    from conveyor.kinds.segmentation.model import IGNORE, SegLoss

    logits = torch.randn(1, 2, 4, 4)
    t = torch.zeros((1, 4, 4), dtype=torch.uint8)
    t2 = t.clone()
    t2[0, 0] = IGNORE
    logits2 = logits.clone()
    logits2[0, :, 0] = torch.tensor([-50.0, 50.0]).view(2, 1)  # wildly wrong, but on ignored pixels
    crit = SegLoss()
    base = crit(logits, t2)
    assert torch.isfinite(base)
    assert float(crit(logits2, t2)) == pytest.approx(float(base), rel=1e-5)


@pytest.mark.slow
def test_train_is_deterministic_and_evaluate_exports_onnx(tmp_path):
    from conveyor.data.curate import curate
    from conveyor.model.evaluate import evaluate
    from conveyor.data.ingest import ingest
    from conveyor.data.split import split
    from conveyor.model.train import train

    write_pairs(tmp_path, cameras=4, per_camera=4)
    spec = seg_spec(tmp_path, augment={"hflip": True, "color_jitter": 0.1})
    res = ingest(spec, tmp_path / "ws" / "datasets")
    cur = curate(res.manifest_path, spec, tmp_path / "ws" / "curated")
    state = tmp_path / "ws" / "state"
    state.mkdir(parents=True)
    sp = split(cur.curated_path, spec, tmp_path / "ws" / "splits", state, dataset_version=res.dataset_version,
               classes=res.classes)
    a = train(spec, sp.split_path, res.classes, tmp_path / "a", dataset_version=res.dataset_version)
    b = train(spec, sp.split_path, res.classes, tmp_path / "b", dataset_version=res.dataset_version)
    assert a.checkpoint_hash == b.checkpoint_hash
    assert a.history == b.history and "val_miou" in a.history[0]
    ev = evaluate(a.checkpoint_path, sp.split_path, tmp_path / "eval", latency_runs=200, num_threads=1)
    m = ev.metrics
    for key in ("miou", "iou[defect]", "boundary_iou", "fn_rate[defect]", "latency_p95_ms"):
        assert key in m and np.isfinite(m[key])
    assert Path(ev.onnx_path).is_file() and ev.onnx_max_abs_diff <= 1e-3
    import onnxruntime as ort

    out = ort.InferenceSession(ev.onnx_path).run(None, {"images": np.random.rand(2, 3, 32, 32).astype(np.float32)})[0]
    assert out.shape == (2, 2, 32, 32)
    assert "boundary_iou" in ev.per_class["defect"]
