"""The detection sections of the gate report: AP per class, precision and recall per class, the
precision-recall curves and the test images with the most missed objects."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from conveyor.kinds.base import ReportSection
from conveyor.reporting.figures import MISSING_METRICS, CHALLENGER, CHAMPION, FAIL, LIGHT, bars, decode, fmt, frame, onnx_model
from conveyor.reporting.rundata import RunData

TRUTH = "#2da44e"


def sections(run: RunData) -> list[ReportSection]:
    return (quality(run) if run.challenger else [MISSING_METRICS]) + examples(run)


def quality(run: RunData) -> list[ReportSection]:
    import matplotlib.pyplot as plt

    per_class, champ_per_class, names, metrics = run.per_class, run.champion_per_class, run.class_names, run.metrics
    title = "Detection: average precision and precision / recall per class"
    if any("ap50" in v for v in per_class.values()):
        fig, ax = plt.subplots(figsize=(min(4 + 0.9 * len(names), 12), 3.2))
        series = [("AP@0.5", [per_class[n].get("ap50") for n in names], CHALLENGER),
                  ("AP@0.5:0.95", [per_class[n].get("ap") for n in names], LIGHT)]
        if any("ap50" in v for v in champ_per_class.values()):
            series.append((f"{run.champion_label} AP@0.5", [champ_per_class.get(n, {}).get("ap50") for n in names],
                           CHAMPION))
        bars(ax, names, series, "AP", f"AP per class (mAP@0.5 {fmt(metrics.get('map50'))}, mAP {fmt(metrics.get('map'))})")
        out = [ReportSection(title, figure=fig)]
    else:
        out = [ReportSection(title, markdown="metrics.json has no per-class AP (evaluated before it was recorded).")]
    fig, ax = plt.subplots(figsize=(min(4 + 0.9 * len(names), 12), 3.2))
    bars(ax, names, [("precision", [per_class[n].get("precision") for n in names], CHALLENGER),
                     ("recall", [per_class[n].get("recall") for n in names], LIGHT)],
         "", f"Precision and recall per class at score {fmt(metrics.get('score_threshold'))} (IoU 0.5)")
    out.append(ReportSection("", figure=fig))
    curves = ((run.challenger.get("curves") or {}).get("pr_iou50")) or {}
    if curves.get("precision"):
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        for n, prec in curves["precision"].items():
            ax.plot(curves["recall"], prec, label=f"{n} (AP50 {fmt(per_class.get(n, {}).get('ap50'), 3)})")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_title("Precision-recall per class at IoU 0.5")
        ax.legend(fontsize=7)
        out.append(ReportSection("", figure=fig))
    else:
        out.append(ReportSection("", markdown="metrics.json has no precision-recall curves."))
    columns = ["class", "ap50", "ap", "precision", "recall", "tp", "fp", "fn", "support"]
    out.append(ReportSection("", table=frame([{"class": n, **per_class[n]} for n in names], columns)))
    return out


def examples(run: RunData) -> list[ReportSection]:
    """The test images with the most missed objects: ground truth and (with the ONNX model) detections."""
    import matplotlib.pyplot as plt

    title = "Examples: the test images with the most missed objects"
    p = run.predictions
    if p is None or run.split_rows is None or "boxes" not in run.split_rows.columns:
        return [ReportSection(title, markdown="predictions.parquet or the split table is missing: no examples.")]
    if "true_objects" in p.columns:
        p = p.with_columns((pl.col("true_objects") - pl.col("predicted_objects")).abs().alias("_miss")
                           ).sort("_miss", descending=True)
    else:
        p = p.sort("confidence")
    pick = p.head(min(run.max_examples, 6))
    rows = run.split_rows_by_id(pick["id"].to_list(), ("boxes", "width", "height"))
    sess, side = onnx_model(run.model_dir)
    out = [ReportSection(title, markdown=f"Ground truth only: {side}." if sess is None else None)]
    items = []
    for r in pick.to_dicts():
        row = rows.get(r["id"])
        if not row or not Path(row["path"]).is_file():
            continue
        s = side if sess is not None else 160
        img = decode(row["path"], s)
        boxes = []
        sx, sy = s / float(row.get("width") or s), s / float(row.get("height") or s)
        for b in row.get("boxes") or []:
            boxes.append(((b["x1"] * sx, b["y1"] * sy, b["x2"] * sx, b["y2"] * sy), TRUTH))
        if sess is not None:
            pb, ps, _ = sess.run(None, {sess.get_inputs()[0].name: img.transpose(2, 0, 1)[None].astype(np.float32)})
            thr = run.metrics.get("score_threshold", 0.5)
            boxes += [(tuple(b), FAIL) for b, sc in zip(pb, ps) if sc >= thr]
        items.append(((img * 255).astype(np.uint8), boxes, f"{r['id']}: {int(r.get('true_objects') or 0)} true, "
                                                           f"{int(r.get('predicted_objects') or 0)} found"))
    if not items:
        return out + [ReportSection("", markdown="The images are not at hand.")]
    cols = min(3, len(items))
    nrows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.8 * cols, 2.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (im, bx, caption) in zip(axes.flat, items):
        ax.imshow(im)
        for (x1, y1, x2, y2), colour in bx:
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec=colour))
        ax.set_title(caption, fontsize=8)
    fig.suptitle("green: ground truth; red: detections kept at the score threshold")
    return out + [ReportSection("", figure=fig)]
