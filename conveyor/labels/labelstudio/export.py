"""The review queue in Label Studio's formats: ``tasks.json``, ``label_config.xml`` and ``queue.csv``.

What a task's prediction, the labelling config and the kind's CSV columns hold comes from the
task kind (``TaskKind.labelstudio_config`` / ``labelstudio_prediction`` / ``csv_cells``); this
module writes the parts every kind shares (see :mod:`conveyor.labels.labelstudio`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from conveyor import kinds
from conveyor.kinds.base import TaskKind

FROM_NAME = "label"
TO_NAME = "image"
IGNORE_INDEX = 255

CSV_COLUMNS = ("id", "content_hash", "image", "camera", "reason", "score", "predicted", "confidence",
               "current_label", "label")

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def task_kind(task: str | TaskKind) -> TaskKind:
    """The task kind named ``task`` (or ``task`` itself); ValueError for an unknown one."""
    return task if isinstance(task, TaskKind) else kinds.get(task)


def check_names(classes: Sequence[str]) -> list[str]:
    """The class names as text; ValueError when there are none or some repeat."""
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes is empty")
    dup = sorted(c for c, n in Counter(names).items() if n > 1)
    if dup:
        raise ValueError(f"classes repeat: {dup}")
    return names


def xml_attr(text: str) -> str:
    """``text`` escaped for an XML attribute value (ValueError for characters XML cannot hold)."""
    if _XML_INVALID.search(text):
        raise ValueError(f"class name {text!r} has characters XML cannot hold")
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))


def plain(v: Any) -> Any:
    """numpy scalars to Python ones, so tasks serialise as JSON."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def result_id(content_hash: Any, k: int) -> str:
    """A stable id of the ``k``-th result of an image's prediction."""
    return hashlib.sha256(f"{content_hash}:{k}".encode()).hexdigest()[:10]


def item_size(item: Mapping) -> tuple[int, int]:
    """(width, height) of a queue item; ValueError when they are not positive integers."""
    try:
        w, h = int(item["width"]), int(item["height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"item {item.get('id')!r} needs integer width and height") from None
    if w < 1 or h < 1:
        raise ValueError(f"item {item.get('id')!r} has size {w}x{h}")
    return w, h


def fmt(v: Any) -> str:
    """A CSV cell: empty for None."""
    v = plain(v)
    return "" if v is None else str(v)


def label_config(task: str | TaskKind, classes: Sequence[str]) -> str:
    """The Label Studio labelling config (XML) for ``task`` over ``classes``."""
    kind = task_kind(task)
    return kind.labelstudio_config(kind.labelstudio_classes(classes))


def make_task(item: Mapping, task: str | TaskKind, classes: Sequence[str], model_version: str,
              ignore_index: int = IGNORE_INDEX) -> dict:
    """One Label Studio task for a queue item, with the model's output as a prediction (see
    :mod:`conveyor.labels.labelstudio`); ``ignore_index``: mask pixels nobody labelled."""
    kind = task_kind(task)
    names = kind.labelstudio_classes(classes)
    h = item.get("content_hash")
    data = {"image": item.get("image"), "content_hash": h, "conveyor_id": item.get("id"),
            "camera": item.get("camera"), "reason": item.get("reason"), "score": plain(item.get("score"))}
    if item.get("current_label") is not None:  # a labelled image sent back for a second look
        data["current_label"] = item["current_label"]
    result = kind.labelstudio_prediction({**item, "ignore_index": ignore_index}, names)
    predictions = []
    if result is not None:
        pred: dict[str, Any] = {"model_version": model_version, "result": result}
        if item.get("confidence") is not None:
            pred["score"] = float(item["confidence"])
        predictions.append(pred)
    return {"data": data, "predictions": predictions}


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def write_queue(out_dir: Path, items: Sequence[Mapping], task: str | TaskKind, classes: Sequence[str],
                model_version: str, ignore_index: int = IGNORE_INDEX) -> dict[str, str]:
    """Write ``tasks.json``, ``label_config.xml`` and ``queue.csv`` into ``out_dir`` (each atomically)."""
    from conveyor.core.io import atomic_write_text

    kind = task_kind(task)
    names = kind.labelstudio_classes(classes)
    out_dir = Path(out_dir)
    items = list(items)
    tasks = [make_task(it, kind, names, model_version, ignore_index) for it in items]
    tasks_text = "[\n" + ",\n".join(json.dumps(t, default=_json_default, allow_nan=False) for t in tasks) + "\n]\n"

    columns = list(CSV_COLUMNS) + list(kind.csv_columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for it in items:
        row = {"id": fmt(it.get("id")), "content_hash": fmt(it.get("content_hash")), "image": fmt(it.get("image")),
               "camera": fmt(it.get("camera")), "reason": fmt(it.get("reason")), "score": fmt(it.get("score")),
               "confidence": fmt(it.get("confidence")), "current_label": fmt(it.get("current_label")), "label": "",
               **kind.csv_cells(it, names)}
        writer.writerow([row[c] for c in columns])

    paths = {"tasks": out_dir / "tasks.json", "config": out_dir / "label_config.xml", "csv": out_dir / "queue.csv"}
    atomic_write_text(paths["tasks"], tasks_text)
    atomic_write_text(paths["config"], kind.labelstudio_config(names))
    atomic_write_text(paths["csv"], buf.getvalue())
    return {k: str(p) for k, p in paths.items()}
