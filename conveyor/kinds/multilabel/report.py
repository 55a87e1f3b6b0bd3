"""The multi-label sections of the gate report: a per-label table and per-label reliability.

Both read what the evaluate stage wrote: the flat metrics (``precision[l]``, ``recall[l]``,
``f1[l]``, ``ap[l]``, ``ece[l]``) and the predictions frame (``probabilities`` per label and the
true ``labels`` of each image, see :func:`conveyor.kinds.multilabel.model.prediction_records`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from conveyor.kinds.base import ReportSection

PER_LABEL = ("precision", "recall", "f1", "ap", "ece")
BINS = 15


def per_label_table(metrics: Mapping[str, float], classes: Sequence[str], support: Mapping[str, int] | None = None):
    """A pandas DataFrame, one row per label: support (when known) and precision/recall/F1/AP/ECE."""
    import pandas as pd

    rows = []
    for c in classes:
        row: dict[str, Any] = {"label": str(c)}
        if support is not None:
            row["support"] = int(support.get(str(c), 0))
        for m in PER_LABEL:
            v = metrics.get(f"{m}[{c}]")
            row[m] = None if v is None else round(float(v), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def reliability(probs: np.ndarray, truth: np.ndarray, n_bins: int = BINS) -> dict[str, np.ndarray]:
    """One label's calibration bins over [0, 1]: mean probability, share of positives and count per
    non-empty bin (the bins of the ``ece[l]`` metric)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    t = np.asarray(truth, dtype=np.float64).reshape(-1)
    idx = np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf = np.bincount(idx, weights=p, minlength=n_bins)
    pos = np.bincount(idx, weights=t, minlength=n_bins)
    keep = count > 0
    return {"confidence": conf[keep] / count[keep], "accuracy": pos[keep] / count[keep], "count": count[keep]}


def _arrays(predictions, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(probabilities N x K, multi-hot truth N x K) from the predictions frame, None when it lacks them."""
    if predictions is None:
        return None
    cols = list(getattr(predictions, "columns", []))
    if "probabilities" not in cols or "labels" not in cols or len(predictions) == 0:
        return None
    probs = np.asarray(list(predictions["probabilities"].to_list()), dtype=np.float64)
    index = {c: i for i, c in enumerate(classes)}
    truth = np.zeros_like(probs)
    for r, names in enumerate(predictions["labels"].to_list()):
        for name in names or ():
            if name in index:
                truth[r, index[name]] = 1.0
    return probs, truth


def sections(metrics: Mapping[str, float], predictions, classes: Sequence[str]) -> list[ReportSection]:
    """The per-label table and, when the predictions carry probabilities, the reliability diagrams."""
    classes = [str(c) for c in classes]
    arrays = _arrays(predictions, classes)
    support = None
    if arrays is not None:
        support = {c: int(v) for c, v in zip(classes, arrays[1].sum(axis=0))}
    table = per_label_table(metrics, classes, support)
    out = [ReportSection(
        "Per-label precision, recall, F1 and AP",
        markdown=(f"Threshold 0.5 per label. F1 macro {metrics.get('f1_macro', float('nan')):.4f}, "
                  f"F1 micro {metrics.get('f1_micro', float('nan')):.4f}, mAP {metrics.get('map', float('nan')):.4f}, "
                  f"exact match {metrics.get('exact_match', float('nan')):.4f}."),
        table=table,
    )]
    if arrays is None:
        return out
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs, truth = arrays
    k = len(classes)
    cols = min(k, 5)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for i, c in enumerate(classes):
        ax = axes[i // cols][i % cols]
        b = reliability(probs[:, i], truth[:, i])
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.plot(b["confidence"], b["accuracy"], marker="o", ms=3)
        ece = metrics.get(f"ece[{c}]")
        ax.set_title(f"{c}" + (f" (ECE {ece:.3f})" if ece is not None else ""), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability", fontsize=8)
        ax.set_ylabel("share with the label", fontsize=8)
    for j in range(k, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    out.append(ReportSection(
        "Per-label reliability",
        markdown=f"Per label: mean predicted probability against the share of images with the label, "
                 f"{BINS} equal bins over [0, 1]; the diagonal is perfect calibration. Mean ECE "
                 f"{metrics.get('ece', float('nan')):.4f}.",
        figure=fig,
    ))
    return out
