"""Drawing helpers shared by the gate report's sections (the notebook and each kind's ``report.py``).

matplotlib, PIL and onnxruntime load inside the functions: importing this module draws nothing and
loads no plotting backend. The report notebook selects the Agg backend and the figure style before
any section is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from conveyor.kinds.base import ReportSection

PASS, FAIL, CHALLENGER, CHAMPION = "#1a7f37", "#cf222e", "#0969da", "#8c959f"
LIGHT = "#54aeff"  # a second challenger series

#: What a kind shows instead of its quality figures when the challenger's metrics.json is missing.
MISSING_METRICS = ReportSection("Model quality", markdown="The challenger's metrics.json was not found: no per-class figures.")


def fmt(v: Any, nd: int = 4) -> str:
    """A table cell or number in a title: 4 significant digits, "-" for nothing, yes/no for booleans."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{nd}g}"
    return str(v)


def bars(ax, names: Sequence[str], series: list[tuple[str, list, str]], ylabel: str, title: str,
         ylim: tuple[float, float] | None = (0, 1.05)) -> None:
    """Grouped bars: series is a list of (label, values, colour); None values are left out."""
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(names))
    for i, (label, values, colour) in enumerate(series):
        vals = [np.nan if v is None else float(v) for v in values]
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=label, color=colour)
    ax.set_xticks(x, names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend(fontsize=8)


def matrix(ax, cm, names: Sequence[str], title: str, normalise: bool = True) -> None:
    """A confusion matrix: each row's share (and count) of the true class."""
    cm = np.asarray(cm, dtype=float)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalise else cm
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(names) <= 20:
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                text = f"{shown[i, j]:.2f}\n({int(cm[i, j])})" if normalise else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > 0.6 else "black")


def gallery(items: list[tuple[np.ndarray, str, str]], title: str, cols: int = 4):
    """A figure of images: items are (image array, caption, caption colour) triples."""
    import matplotlib.pyplot as plt

    cols = max(1, min(cols, len(items)))
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, caption, colour) in zip(axes.flat, items):
        ax.imshow(img)
        ax.set_title(caption, fontsize=8, color=colour)
    fig.suptitle(title)
    return fig


def thumb(path: str | Path, size: int = 112) -> np.ndarray:
    """An image as an RGB array no larger than ``size`` on either side."""
    from PIL import Image as PILImage, ImageOps

    with PILImage.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((size, size))
        return np.asarray(im)


def decode(path: str | Path, side: int) -> np.ndarray:
    """An image as float32 (side, side, 3) in [0, 1], resized as the model's input."""
    from PIL import Image as PILImage, ImageOps

    with PILImage.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB").resize((side, side), PILImage.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.float32) / 255.0


def onnx_model(model_dir: str | Path | None) -> tuple[Any, Any]:
    """(onnxruntime session, input side) of the registered model, or (None, the reason there is none)."""
    path = Path(model_dir) / "model.onnx" if model_dir else None
    if path is None or not path.is_file():
        return None, "the run registered no ONNX model"
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        side = int(sess.get_modelmeta().custom_metadata_map.get("conveyor.image_size") or 0)
        return (sess, side) if side else (None, "the ONNX model does not record its input size")
    except Exception as err:  # noqa: BLE001 - an illustration, not a result: say why and go on
        return None, f"the ONNX model could not be loaded ({type(err).__name__}: {err})"


def frame(rows: list[dict[str, Any]], columns: Sequence[str]):
    """A pandas DataFrame of ``rows`` with exactly ``columns`` (a section's table)."""
    import pandas as pd

    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=list(columns), dtype=object)
