"""The classification sections of the gate report: confusion matrix, per-class recall and precision,
the reliability diagram and the most confident mistakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from conveyor.kinds.base import ReportSection
from conveyor.reporting.figures import MISSING_METRICS, CHALLENGER, CHAMPION, FAIL, bars, frame, gallery, matrix, thumb
from conveyor.reporting.rundata import RunData

BINS = 15


def sections(run: RunData) -> list[ReportSection]:
    out = quality(run) if run.challenger else [MISSING_METRICS]
    out += calibration(run) if run.challenger else []
    return out + mistakes(run)


def quality(run: RunData) -> list[ReportSection]:
    import matplotlib.pyplot as plt

    per_class, champ_per_class, names = run.per_class, run.champion_per_class, run.class_names
    title = "Classification: confusion matrix and per-class scores"
    cm = run.challenger.get("confusion_matrix") or []
    if cm:
        fig, ax = plt.subplots(figsize=(min(3 + 0.5 * len(names), 9), min(2.6 + 0.45 * len(names), 8)))
        matrix(ax, cm, run.classes if len(run.classes) == len(cm) else names,
               "Confusion matrix: share of each true class (count)")
        out = [ReportSection(title, figure=fig)]
    else:
        out = [ReportSection(title, markdown="metrics.json has no confusion matrix.")]
    champ = run.champion_label
    fig, axes = plt.subplots(1, 2, figsize=(min(4 + 0.9 * len(names), 14), 3.2))
    for ax, key, label in ((axes[0], "recall", "Recall per class"), (axes[1], "precision", "Precision per class")):
        series = [("challenger", [per_class[n].get(key) for n in names], CHALLENGER)]
        if champ_per_class:
            series.append((champ, [champ_per_class.get(n, {}).get(key) for n in names], CHAMPION))
        bars(ax, names, series, key, label)
    out.append(ReportSection("", figure=fig))
    columns = ["class", "precision", "recall", "f1", "support"]
    out.append(ReportSection("", table=frame([{"class": n, **per_class[n]} for n in names], columns)))
    return out


def calibration(run: RunData) -> list[ReportSection]:
    """The reliability diagram of the challenger's confidences on the test split (15 bins)."""
    import matplotlib.pyplot as plt

    title = "Calibration: reliability diagram"
    p = run.predictions
    if p is None:
        return [ReportSection(title, markdown="predictions.parquet was not found: no reliability diagram.")]
    if "correct" not in p.columns and not {"label", "predicted"} <= set(p.columns):
        return [ReportSection(title, markdown="predictions.parquet has no true labels (evaluated before they were "
                                              "recorded): no reliability diagram.")]
    correct = (p["correct"] if "correct" in p.columns else p["label"] == p["predicted"]).cast(pl.Float64).to_numpy()
    conf = p["confidence"].cast(pl.Float64).to_numpy()
    edges = np.linspace(0, 1, BINS + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, BINS - 1)
    count = np.bincount(idx, minlength=BINS)
    acc = np.bincount(idx, weights=correct, minlength=BINS) / np.maximum(count, 1)
    mean_conf = np.bincount(idx, weights=conf, minlength=BINS) / np.maximum(count, 1)
    ece = float(np.sum(count * np.abs(acc - mean_conf)) / max(count.sum(), 1))
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.6, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centers = (edges[:-1] + edges[1:]) / 2
    has = count > 0
    ax.bar(centers[has], acc[has], width=1 / BINS, edgecolor="white", color=CHALLENGER, label="accuracy")
    ax.bar(centers[has], (mean_conf - acc)[has], bottom=acc[has], width=1 / BINS, color=FAIL, alpha=0.25,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="#57606a", lw=1, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability on {len(conf)} test images (ECE {ece:.3f}, {BINS} bins)")
    ax.legend(fontsize=7, loc="upper left")
    axh.bar(centers, count, width=1 / BINS, color=CHAMPION)
    axh.set_xlabel("confidence")
    axh.set_ylabel("images")
    return [ReportSection(title, figure=fig)]


def mistakes(run: RunData) -> list[ReportSection]:
    """The most confident wrong predictions on the test split, with their images."""
    title = "Hardest mistakes: the most confident wrong predictions"
    p = run.predictions
    if p is None or "correct" not in p.columns:
        return [ReportSection(title, markdown="predictions.parquet has no correctness column: no examples.")]
    wrong = p.filter(~pl.col("correct")).sort("confidence", descending=True).head(run.max_examples)
    rows = run.split_rows_by_id(wrong["id"].to_list())
    items = [(thumb(rows[r["id"]]["path"]), f"true {r['label']}\npredicted {r['predicted']} ({r['confidence']:.2f})",
              FAIL) for r in wrong.to_dicts() if r["id"] in rows and Path(rows[r["id"]]["path"]).is_file()]
    if wrong.height == 0:
        return [ReportSection(title, markdown="No wrong prediction on the test split.")]
    if not items:
        return [ReportSection(title, markdown="The images of the mistakes are not at hand (split table or files missing).")]
    return [ReportSection(title, figure=gallery(items, f"{p.filter(~pl.col('correct')).height} of {p.height} test "
                                                       f"images wrong; the {len(items)} most confident"))]
