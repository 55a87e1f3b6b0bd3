"""The segmentation sections of the gate report: IoU and missed pixels per class, the pixel confusion
matrix and overlays of the test images predicted worst."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conveyor.kinds.base import ReportSection
from conveyor.reporting.figures import MISSING_METRICS, CHALLENGER, CHAMPION, FAIL, LIGHT, bars, decode, fmt, frame, gallery, matrix, onnx_model
from conveyor.reporting.rundata import RunData

TRUTH_SIDE = 128  # overlays without a model: the ground truth at this size


def sections(run: RunData) -> list[ReportSection]:
    return (quality(run) if run.challenger else [MISSING_METRICS]) + examples(run)


def quality(run: RunData) -> list[ReportSection]:
    import matplotlib.pyplot as plt

    per_class, champ_per_class, names, champ = run.per_class, run.champion_per_class, run.class_names, run.champion_label
    fig, axes = plt.subplots(1, 2, figsize=(min(5 + 1.2 * len(names), 14), 3.2))
    series = [("IoU", [per_class[n].get("iou") for n in names], CHALLENGER),
              ("boundary IoU", [per_class[n].get("boundary_iou") for n in names], LIGHT)]
    if champ_per_class:
        series.append((f"{champ} IoU", [champ_per_class.get(n, {}).get("iou") for n in names], CHAMPION))
    bars(axes[0], names, series, "IoU", f"IoU per class (mIoU {fmt(run.metrics.get('miou'))})")
    bars(axes[1], names, [("challenger", [per_class[n].get("fn_rate") for n in names], FAIL)]
         + ([(champ, [champ_per_class.get(n, {}).get("fn_rate") for n in names], CHAMPION)] if champ_per_class else []),
         "share of the class's pixels missed", "False-negative rate per class", ylim=None)
    out = [ReportSection("Segmentation: IoU per class", figure=fig)]
    cm = run.challenger.get("confusion_matrix") or []
    if cm:
        fig, ax = plt.subplots(figsize=(min(3 + 0.6 * len(names), 8), min(2.6 + 0.5 * len(names), 7)))
        matrix(ax, cm, run.classes if len(run.classes) == len(cm) else names,
               "Pixel confusion matrix: share of each true class's pixels (count)")
        out.append(ReportSection("", figure=fig))
    columns = ["class", "iou", "boundary_iou", "fn_rate", "precision", "support"]
    out.append(ReportSection("", table=frame([{"class": n, **per_class[n]} for n in names], columns)))
    return out


def examples(run: RunData) -> list[ReportSection]:
    """The test images predicted worst: ground truth and (with the ONNX model) prediction overlays."""
    import matplotlib.pyplot as plt
    from PIL import Image as PILImage

    title = "Examples: the test images predicted worst"
    p = run.predictions
    key = "pixel_accuracy" if p is not None and "pixel_accuracy" in p.columns else "confidence"
    if p is None or run.split_rows is None or "mask_path" not in run.split_rows.columns:
        return [ReportSection(title, markdown="predictions.parquet or the split table is missing: no overlays.")]
    worst = p.drop_nulls(key).sort(key).head(min(run.max_examples, 4))
    rows = run.split_rows_by_id(worst["id"].to_list(), ("mask_path",))
    sess, side = onnx_model(run.model_dir)
    out = [ReportSection(title, markdown=f"Ground truth only: {side}." if sess is None else None)]
    cmap = plt.get_cmap("tab10")
    n_classes = len(run.classes) or 1
    items = []
    for r in worst.to_dicts():
        row = rows.get(r["id"])
        if not row or not Path(row["path"]).is_file() or not Path(row["mask_path"]).is_file():
            continue
        s = side if sess is not None else TRUTH_SIDE
        img = decode(row["path"], s)
        with PILImage.open(row["mask_path"]) as m:
            truth = np.asarray(m.resize((s, s), PILImage.Resampling.NEAREST), dtype=np.int64)

        def overlay(labels: np.ndarray) -> np.ndarray:
            shown = img.copy()
            for c in range(1, n_classes):
                sel = labels == c
                shown[sel] = 0.5 * shown[sel] + 0.5 * np.asarray(cmap(c % 10)[:3])
            return shown

        items.append((overlay(truth), f"{r['id']}: truth", "black"))
        if sess is not None:
            logits = sess.run(None, {sess.get_inputs()[0].name: img.transpose(2, 0, 1)[None].astype(np.float32)})[0]
            items.append((overlay(logits[0].argmax(0)), f"predicted ({key} {r[key]:.2f})", CHALLENGER))
    if not items:
        return out + [ReportSection("", markdown="The images and masks are not at hand.")]
    return out + [ReportSection("", figure=gallery(items, "Classes other than the first (background) tinted; "
                                                          "truth and prediction side by side"))]
