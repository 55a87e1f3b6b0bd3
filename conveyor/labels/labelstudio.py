"""The review queue in Label Studio's formats, and a reviewed export read back with validation.

Export (:func:`write_queue`) writes three files into one folder:

- ``tasks.json``: a Label Studio JSON import, a list of tasks. Each task is
  ``{"data": {"image", "content_hash", "conveyor_id", "camera", "reason", "score"}, "predictions": [...]}``;
  the model's output is a *prediction* (pre-annotation) ``{"model_version", "score", "result": [...]}``
  that the reviewer accepts or corrects. Results follow Label Studio's result format:

  - classification: one ``choices`` result, ``value = {"choices": [class]}``;
  - detection: one ``rectanglelabels`` result per box with ``original_width`` / ``original_height`` and
    ``value = {"x", "y", "width", "height", "rotation", "rectanglelabels": [class]}``, where x / y is the
    top-left corner and every value is a percentage (0..100) of the image's width or height;
  - segmentation: one ``brushlabels`` result per class present in the mask (background, class 0, is
    not painted) with ``value = {"format": "rle", "rle": [...], "brushlabels": [class]}``.

- ``label_config.xml``: the labelling interface to paste into the project (an ``Image`` named ``image``
  and a ``Choices`` / ``RectangleLabels`` / ``BrushLabels`` control named ``label``).
- ``queue.csv``: the same queue for a spreadsheet review: ``id, content_hash, image, camera, reason, score,
  predicted, confidence, current_label, label`` (``current_label``: a labelled image sent back as a
  suspected label error); detection adds ``boxes`` (prefilled with the predicted boxes as JSON,
  ``[{"x1", "y1", "x2", "y2", "category"}]`` in pixels), segmentation adds ``mask`` (empty; the reviewer
  writes the path of a PNG of class indices, relative to the CSV's folder or absolute).

Brush RLE is Label Studio's own run-length code (the one of ``label_studio_converter/brush.py``, after
thi.ng rle-pack): the mask is drawn as an RGBA image, H*W*4 bytes, a painted pixel 255 in all four
channels and an unpainted one 0, and that byte sequence is written as a bit stream: 32 bits value
count, 5 bits word size - 1, four times 4 bits run-length field size - 1, then records of
``1 bit repeat flag, 2 bits field-size index, that many bits count - 1`` followed by one word (a run)
or count words (literals); the stream is padded with zero bits to whole bytes, which form the list of
ints. :func:`rle_encode` writes what the converter's ``encode_rle`` writes (word size 8, field sizes
3, 4, 8, 16); :func:`rle_decode` reads any valid stream and takes a pixel as painted when its alpha
byte is non-zero.

Import (:func:`read_review`) reads a Label Studio JSON export (``.json``: a list of tasks with
``annotations``) or the queue CSV filled in (``.csv``), matches every task / row to a known image by
content hash (then by conveyor id), checks it and returns the accepted labels and a quarantine frame
(:data:`QUARANTINE_SCHEMA`) with a reason code per rejected item: ``missing_image``, ``unreviewed``,
``unknown_label``, ``conflicting_labels``, ``duplicate``, ``bad_box``, ``bad_mask``, ``bad_row``. Only a
file that cannot be read as a whole raises (:class:`ReviewFileError`).

In the CSV a row counts as reviewed once its ``label`` cell is filled: the class for classification, any
mark (``ok``, a name) for detection and segmentation, whose ``boxes`` / ``mask`` cells hold the label;
an empty ``boxes`` cell is also unreviewed, while ``[]`` means "no objects". Row numbers in messages
count data rows from 1 (the CSV header and the JSON list brackets not counted).

Nothing here does work at import time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

TASKS = ("classification", "detection", "segmentation")
FROM_NAME = "label"
TO_NAME = "image"
IGNORE_INDEX = 255

RLE_WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)
_RLE_HEADER_BITS = 32 + 5 + 4 * 4

PERCENT_TOL = 0.5  # percentage points a Label Studio box may reach past the image edge; clipped
PIXEL_TOL = 0.5  # pixels a CSV box may reach past the image edge; clipped
MAX_MASK_BYTES = 64 * 2**20

QUARANTINE_SCHEMA = {"file": pl.String, "row": pl.Int64, "task_id": pl.String, "field": pl.String,
                     "reason": pl.String, "detail": pl.String}
REASONS = ("missing_image", "unreviewed", "unknown_label", "conflicting_labels", "duplicate", "bad_box",
           "bad_mask", "bad_row")

CSV_COLUMNS = ("id", "content_hash", "image", "camera", "reason", "score", "predicted", "confidence",
               "current_label", "label")

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class ReviewFileError(ValueError):
    """The review file as a whole cannot be read; the message names the file."""


# --------------------------------------------------------------------------------------------------
# Brush RLE


def _rle_bits(arr: np.ndarray) -> str:
    """The converter's ``encode_rle`` bit string (before padding) for a 1-d array of byte values."""
    n = int(arr.size)
    parts = [f"{n:032b}", f"{RLE_WORD_SIZE - 1:05b}", "".join(f"{s - 1:04b}" for s in RLE_SIZES)]
    if n:
        change = np.flatnonzero(arr[1:] != arr[:-1])
        ends = np.append(change, n - 1)
        lengths = np.diff(np.append(-1, ends))
        values = arr[ends]
        for length, value in zip(lengths.tolist(), values.tolist()):
            word = f"{value:08b}"
            if length == 1:
                parts.append("000000" + word)  # a literal of one word (field size index 0, count - 1 = 0)
            elif length <= 8:
                parts.append(f"100{length - 1:03b}{word}")
            elif length <= 16:
                parts.append(f"101{length - 1:04b}{word}")
            elif length <= 256:
                parts.append(f"110{length - 1:08b}{word}")
            else:
                while length > 2**16:
                    parts.append(f"111{2**16 - 1:016b}{word}")
                    length -= 2**16
                parts.append(f"111{length - 1:016b}{word}")
    return "".join(parts)


def rle_encode(mask_bool: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a boolean HxW mask (True = painted), as the converter's ``mask2rle``."""
    mask = np.asarray(mask_bool)
    if mask.ndim != 2:
        raise ValueError(f"a brush mask is 2-d (height, width), got shape {mask.shape}")
    rgba = np.repeat(np.where(mask.reshape(-1).astype(bool), 255, 0).astype(np.uint8), 4)
    bits = _rle_bits(rgba)
    bits += "0" * (8 - len(bits) % 8)  # as the converter: always at least one zero bit of padding
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


class _Bits:
    """Big-endian bit reader over bytes; reading past the end raises ValueError."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes):
        self.data, self.pos, self.end = data, 0, len(data) * 8

    def read(self, n: int) -> int:
        start, stop = self.pos, self.pos + n
        if stop > self.end:
            raise ValueError(f"brush RLE ends early: needs bit {stop}, has {self.end}")
        self.pos = stop
        first, last = start >> 3, (stop - 1) >> 3
        chunk = int.from_bytes(self.data[first:last + 1], "big")
        return (chunk >> ((last + 1) * 8 - stop)) & ((1 << n) - 1)


def rle_decode(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Decode Label Studio brush RLE to a boolean (height, width) mask: True where the alpha byte is set.

    Raises ValueError on anything malformed: values that are not bytes, a value count other than
    height*width*4, bad header fields, runs past the end, a stream that ends early.
    """
    if isinstance(height, bool) or isinstance(width, bool) or not isinstance(height, (int, np.integer)) \
            or not isinstance(width, (int, np.integer)) or height < 1 or width < 1:
        raise ValueError(f"mask size must be positive integers, got {height!r} x {width!r}")
    height, width = int(height), int(width)
    if isinstance(rle, (str, bytes, bytearray, Mapping)) or not isinstance(rle, (Sequence, np.ndarray)):
        raise ValueError(f"brush RLE must be a list of ints, got {type(rle).__name__}")
    values = list(rle)
    for k, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 255:
            raise ValueError(f"brush RLE value {k} is {v!r}, not an int in 0..255")
    if len(values) * 8 < _RLE_HEADER_BITS:
        raise ValueError(f"brush RLE has {len(values)} bytes, shorter than its header")
    bits = _Bits(bytes(int(v) for v in values))
    num = bits.read(32)
    expected = height * width * 4
    if num != expected:
        raise ValueError(f"brush RLE holds {num} values, a {width}x{height} RGBA mask has {expected}")
    word_size = bits.read(5) + 1
    sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8 if word_size <= 8 else np.uint32)
    i = 0
    while i < num:
        repeat = bits.read(1)
        j = i + 1 + bits.read(sizes[bits.read(2)])
        if j > num:
            raise ValueError(f"brush RLE run reaches value {j}, past the {num} values")
        if repeat:
            out[i:j] = bits.read(word_size)
        else:
            for k in range(i, j):
                out[k] = bits.read(word_size)
        i = j
    return out.reshape(height, width, 4)[:, :, 3] != 0


# --------------------------------------------------------------------------------------------------
# Export


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def _check_classes(task: str, classes: Sequence[str]) -> list[str]:
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes is empty")
    dup = sorted(c for c, n in Counter(names).items() if n > 1)
    if dup:
        raise ValueError(f"classes repeat: {dup}")
    if task == "segmentation" and len(names) < 2:
        raise ValueError("segmentation needs a background class (index 0) and at least one other class")
    return names


def _xml_attr(text: str) -> str:
    if _XML_INVALID.search(text):
        raise ValueError(f"class name {text!r} has characters XML cannot hold")
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))


def label_config(task: str, classes: Sequence[str]) -> str:
    """The Label Studio labelling config (XML) for ``task`` over ``classes``."""
    _check_task(task)
    names = _check_classes(task, classes)
    image = f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>'
    if task == "classification":
        head = f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">'
        items = [f'    <Choice value="{_xml_attr(c)}"/>' for c in names]
        tail = "  </Choices>"
    else:
        tag = "RectangleLabels" if task == "detection" else "BrushLabels"
        head = f'  <{tag} name="{FROM_NAME}" toName="{TO_NAME}">'
        shown = names if task == "detection" else names[1:]
        items = [f'    <Label value="{_xml_attr(c)}"/>' for c in shown]
        tail = f"  </{tag}>"
    return "\n".join(["<View>", image, head, *items, tail, "</View>"]) + "\n"


def _plain(v: Any) -> Any:
    """numpy scalars to Python ones, so tasks serialise as JSON."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _result_id(content_hash: Any, k: int) -> str:
    return hashlib.sha256(f"{content_hash}:{k}".encode()).hexdigest()[:10]


def _size(item: Mapping) -> tuple[int, int]:
    try:
        w, h = int(item["width"]), int(item["height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"item {item.get('id')!r} needs integer width and height") from None
    if w < 1 or h < 1:
        raise ValueError(f"item {item.get('id')!r} has size {w}x{h}")
    return w, h


def make_task(item: Mapping, task: str, classes: Sequence[str], model_version: str,
              ignore_index: int = IGNORE_INDEX) -> dict:
    """One Label Studio task for a queue item, with the model's output as a prediction (see the module doc)."""
    _check_task(task)
    names = _check_classes(task, classes)
    h = item.get("content_hash")
    data = {"image": item.get("image"), "content_hash": h, "conveyor_id": item.get("id"),
            "camera": item.get("camera"), "reason": item.get("reason"), "score": _plain(item.get("score"))}
    if item.get("current_label") is not None:  # a labelled image sent back for a second look
        data["current_label"] = item["current_label"]
    result: list[dict] | None = None
    if task == "classification":
        cls = item.get("predicted")
        if cls is not None:
            if str(cls) not in names:
                raise ValueError(f"item {item.get('id')!r}: predicted class {cls!r} is not in classes")
            result = [{"id": _result_id(h, 0), "from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                       "value": {"choices": [str(cls)]}}]
    elif task == "detection":
        boxes = item.get("boxes")
        if boxes is not None:
            w, hh = _size(item)
            result = []
            for k, b in enumerate(boxes):
                cat = str(b["category"])
                if cat not in names:
                    raise ValueError(f"item {item.get('id')!r}: box category {cat!r} is not in classes")
                x1, y1, x2, y2 = (float(b[key]) for key in ("x1", "y1", "x2", "y2"))
                r = {"id": _result_id(h, k), "from_name": FROM_NAME, "to_name": TO_NAME, "type": "rectanglelabels",
                     "original_width": w, "original_height": hh, "image_rotation": 0,
                     "value": {"x": x1 / w * 100, "y": y1 / hh * 100, "width": (x2 - x1) / w * 100,
                               "height": (y2 - y1) / hh * 100, "rotation": 0, "rectanglelabels": [cat]}}
                if b.get("score") is not None:
                    r["score"] = float(b["score"])
                result.append(r)
    else:
        mask = item.get("mask")
        if mask is not None:
            w, hh = _size(item)
            mask = np.asarray(mask)
            if mask.shape != (hh, w):
                raise ValueError(f"item {item.get('id')!r}: mask is {mask.shape}, the image is {hh}x{w} (h x w)")
            present = [int(v) for v in np.unique(mask)]
            wrong = [v for v in present if v >= len(names) and v != ignore_index]
            if wrong:
                raise ValueError(f"item {item.get('id')!r}: mask values {wrong[:10]} are not class indices")
            result = []
            for k, v in enumerate(v for v in present if 0 < v < len(names)):
                result.append({"id": _result_id(h, k), "from_name": FROM_NAME, "to_name": TO_NAME,
                               "type": "brushlabels", "original_width": w, "original_height": hh,
                               "image_rotation": 0,
                               "value": {"format": "rle", "rle": rle_encode(mask == v), "brushlabels": [names[v]]}})
    predictions = []
    if result is not None:
        pred: dict[str, Any] = {"model_version": model_version, "result": result}
        if item.get("confidence") is not None:
            pred["score"] = float(item["confidence"])
        predictions.append(pred)
    return {"data": data, "predictions": predictions}


def _fmt(v: Any) -> str:
    v = _plain(v)
    return "" if v is None else str(v)


def _predicted_cell(item: Mapping, task: str, classes: list[str]) -> str:
    if task == "classification":
        return _fmt(item.get("predicted"))
    if task == "detection":
        boxes = item.get("boxes")
        if boxes is None:
            return ""
        counts = Counter(str(b["category"]) for b in boxes)
        return "; ".join(f"{c} x{n}" for c, n in sorted(counts.items())) or "no objects"
    mask = item.get("mask")
    if mask is None:
        return ""
    present = [int(v) for v in np.unique(np.asarray(mask)) if 0 < int(v) < len(classes)]
    return "; ".join(classes[v] for v in present) or "background"


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def write_queue(out_dir: Path, items: Sequence[Mapping], task: str, classes: Sequence[str], model_version: str,
                ignore_index: int = IGNORE_INDEX) -> dict[str, str]:
    """Write ``tasks.json``, ``label_config.xml`` and ``queue.csv`` into ``out_dir`` (each atomically)."""
    from conveyor.core.io import atomic_write_text

    _check_task(task)
    names = _check_classes(task, classes)
    out_dir = Path(out_dir)
    items = list(items)
    tasks = [make_task(it, task, names, model_version, ignore_index) for it in items]
    tasks_text = "[\n" + ",\n".join(json.dumps(t, default=_json_default, allow_nan=False) for t in tasks) + "\n]\n"

    columns = list(CSV_COLUMNS) + (["boxes"] if task == "detection" else ["mask"] if task == "segmentation" else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for it in items:
        row = {"id": _fmt(it.get("id")), "content_hash": _fmt(it.get("content_hash")), "image": _fmt(it.get("image")),
               "camera": _fmt(it.get("camera")), "reason": _fmt(it.get("reason")), "score": _fmt(it.get("score")),
               "predicted": _predicted_cell(it, task, names), "confidence": _fmt(it.get("confidence")),
               "current_label": _fmt(it.get("current_label")), "label": "", "mask": ""}
        if task == "detection":
            boxes = it.get("boxes") or []
            row["boxes"] = json.dumps([{"x1": round(float(b["x1"]), 2), "y1": round(float(b["y1"]), 2),
                                        "x2": round(float(b["x2"]), 2), "y2": round(float(b["y2"]), 2),
                                        "category": str(b["category"])} for b in boxes])
        writer.writerow([row[c] for c in columns])

    paths = {"tasks": out_dir / "tasks.json", "config": out_dir / "label_config.xml", "csv": out_dir / "queue.csv"}
    atomic_write_text(paths["tasks"], tasks_text)
    atomic_write_text(paths["config"], label_config(task, names))
    atomic_write_text(paths["csv"], buf.getvalue())
    return {k: str(p) for k, p in paths.items()}


# --------------------------------------------------------------------------------------------------
# Import


@dataclass
class ReviewedLabel:
    content_hash: str
    id: str
    label: str | None  # classification: the class; detection / segmentation: None
    boxes: list[dict] | None  # detection: absolute xyxy dicts with category, in original pixels
    mask: np.ndarray | None  # segmentation: uint8 HxW class indices (unpainted pixels 0, background)
    reviewer: str | None  # Label Studio: annotation completed_by; CSV: the reviewer column
    where: str  # "task <id> (row N)" or "row N"


@dataclass
class ReviewChecked:
    accepted: list[ReviewedLabel]
    quarantined: pl.DataFrame  # QUARANTINE_SCHEMA
    received: int  # tasks (JSON) or rows (CSV) in the file

    def __post_init__(self) -> None:
        if len(self.accepted) + self.quarantined.height != self.received:
            raise ValueError(f"{len(self.accepted)} accepted + {self.quarantined.height} quarantined "
                             f"!= {self.received} received")

    @property
    def reasons(self) -> dict[str, int]:
        if self.quarantined.is_empty():
            return {}
        return dict(sorted(Counter(self.quarantined["reason"].to_list()).items()))


class _Reject(Exception):
    def __init__(self, reason: str, field: str, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


@dataclass
class _Item:
    row: int
    task_id: str | None
    where: str
    content_hash: str
    id: str
    value: Any
    reviewer: str | None


def _number(v: Any) -> float | None:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _text(v: Any) -> str | None:
    if isinstance(v, str) and v.strip():
        return v.strip()
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return None


class _Context:
    def __init__(self, path: Path, task: str, classes: list[str], known: Mapping[str, Mapping], ignore_index: int):
        self.path, self.task, self.classes, self.known, self.ignore_index = path, task, classes, known, ignore_index
        self.by_id: dict[str, str] = {}
        for h, info in known.items():
            i = info.get("id") if isinstance(info, Mapping) else None
            if i is not None:
                self.by_id.setdefault(str(i), h)

    def identify(self, content_hash: Any, conveyor_id: Any, where: str) -> tuple[str, str, Mapping]:
        h = _text(content_hash)
        i = _text(conveyor_id)
        if h is not None and h in self.known:
            found = h
        elif i is not None and i in self.by_id:
            found = self.by_id[i]
        else:
            if h is None and i is None:
                raise _Reject("missing_image", "content_hash", f"{where}: no content hash and no conveyor id")
            tried = " / ".join(x for x in (f"content hash {h}" if h else "", f"id {i}" if i else "") if x)
            raise _Reject("missing_image", "content_hash", f"{where}: no known image has {tried}")
        info = self.known[found]
        p = info.get("path")
        if not p or not os.path.exists(p):
            raise _Reject("missing_image", "content_hash",
                          f"{where}: image {found[:12]} (id {info.get('id')}) is no longer on disk at {p}")
        return found, str(info.get("id", i or "")), info

    def known_size(self, info: Mapping) -> tuple[int | None, int | None]:
        w, h = _number(info.get("width")), _number(info.get("height"))
        return (int(w) if w and w >= 1 else None), (int(h) if h and h >= 1 else None)


def _image_size(ctx: _Context, r: Mapping, info: Mapping, where: str, reason: str, field: str) -> tuple[int, int]:
    """Width and height for a result: its original_width / original_height, checked against the known size."""
    kw, kh = ctx.known_size(info)
    ow, oh = r.get("original_width"), r.get("original_height")
    if ow is None and oh is None:
        if kw is None or kh is None:
            raise _Reject(reason, field, f"{where}: the size of the image is unknown")
        return kw, kh
    w, h = _number(ow), _number(oh)
    if w is None or h is None or w < 1 or h < 1 or w != int(w) or h != int(h):
        raise _Reject(reason, field, f"{where}: original size {ow!r} x {oh!r} is not a pair of positive integers")
    w, h = int(w), int(h)
    if kw is not None and kh is not None and (w, h) != (kw, kh):
        raise _Reject(reason, field, f"{where}: the result is for a {w}x{h} image, this image is {kw}x{kh}")
    return w, h


def _one_label(labels: Any, where: str, what: str, allowed: list[str], reason_field: str) -> str:
    if not isinstance(labels, list):
        raise _Reject("bad_row", reason_field, f"{where}: {what} is {type(labels).__name__}, not a list")
    if len(labels) != 1 or not isinstance(labels[0], str):
        raise _Reject("unknown_label", reason_field, f"{where}: {what} is {labels!r}; one class is needed")
    if labels[0] not in allowed:
        raise _Reject("unknown_label", reason_field, f"{where}: {labels[0]!r} is not a class ({', '.join(allowed)})")
    return labels[0]


def _ls_box(ctx: _Context, r: Mapping, info: Mapping, where: str) -> dict:
    v = r.get("value")
    if not isinstance(v, Mapping):
        raise _Reject("bad_row", "boxes", f"{where}: a rectanglelabels result has no value object")
    cat = _one_label(v.get("rectanglelabels"), where, "rectanglelabels", ctx.classes, "boxes")
    nums = [_number(v.get(k)) for k in ("x", "y", "width", "height")]
    if any(n is None for n in nums):
        raise _Reject("bad_box", "boxes", f"{where}: box {cat} has x, y, width, height "
                      f"{[v.get(k) for k in ('x', 'y', 'width', 'height')]}, not finite numbers")
    x, y, bw, bh = nums
    rot = _number(v.get("rotation", 0) or 0)
    if rot is None or abs(rot % 360) > 1e-6 and abs(rot % 360 - 360) > 1e-6:
        raise _Reject("bad_box", "boxes", f"{where}: box {cat} is rotated by {v.get('rotation')!r} degrees; "
                      "boxes must be axis-aligned")
    irot = _number(r.get("image_rotation", 0) or 0)
    if irot is None or abs(irot % 360) > 1e-6 and abs(irot % 360 - 360) > 1e-6:
        raise _Reject("bad_box", "boxes", f"{where}: box {cat} was drawn on an image rotated by "
                      f"{r.get('image_rotation')!r} degrees")
    if bw <= 0 or bh <= 0:
        raise _Reject("bad_box", "boxes", f"{where}: box {cat} has width {bw} and height {bh} (percent)")
    if x < -PERCENT_TOL or y < -PERCENT_TOL or x + bw > 100 + PERCENT_TOL or y + bh > 100 + PERCENT_TOL:
        raise _Reject("bad_box", "boxes", f"{where}: box {cat} at x {x:.3g}%, y {y:.3g}%, width {bw:.3g}%, "
                      f"height {bh:.3g}% reaches outside the image")
    w, h = _image_size(ctx, r, info, where, "bad_box", "boxes")
    x1, y1 = max(0.0, x / 100 * w), max(0.0, y / 100 * h)
    x2, y2 = min(float(w), (x + bw) / 100 * w), min(float(h), (y + bh) / 100 * h)
    if x2 <= x1 or y2 <= y1:
        raise _Reject("bad_box", "boxes", f"{where}: box {cat} is empty inside the image")
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "category": cat}


def _pixel_box(ctx: _Context, b: Any, k: int, info: Mapping, where: str) -> dict:
    if not isinstance(b, Mapping):
        raise _Reject("bad_row", "boxes", f"{where}: box {k} is {type(b).__name__}, not an object")
    cat = b.get("category")
    if not isinstance(cat, str) or cat not in ctx.classes:
        raise _Reject("unknown_label", "boxes", f"{where}: box {k} category {cat!r} is not a class "
                      f"({', '.join(ctx.classes)})")
    nums = [_number(b.get(key)) for key in ("x1", "y1", "x2", "y2")]
    if any(n is None for n in nums):
        raise _Reject("bad_box", "boxes", f"{where}: box {k} ({cat}) has x1, y1, x2, y2 "
                      f"{[b.get(key) for key in ('x1', 'y1', 'x2', 'y2')]}, not finite numbers")
    x1, y1, x2, y2 = nums
    if x2 <= x1 or y2 <= y1:
        raise _Reject("bad_box", "boxes", f"{where}: box {k} ({cat}) has width {x2 - x1:g} and height {y2 - y1:g}")
    w, h = ctx.known_size(info)
    if w is None or h is None:
        raise _Reject("bad_box", "boxes", f"{where}: the size of the image is unknown")
    if x1 < -PIXEL_TOL or y1 < -PIXEL_TOL or x2 > w + PIXEL_TOL or y2 > h + PIXEL_TOL:
        raise _Reject("bad_box", "boxes", f"{where}: box {k} ({cat}) [{x1:g}, {y1:g}, {x2:g}, {y2:g}] reaches "
                      f"outside the {w}x{h} image")
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
    if x2 <= x1 or y2 <= y1:
        raise _Reject("bad_box", "boxes", f"{where}: box {k} ({cat}) is empty inside the image")
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "category": cat}


def _parse_result(ctx: _Context, result: Any, info: Mapping, where: str) -> Any:
    """One annotation's result list to a label value; raises _Reject."""
    if not isinstance(result, list):
        raise _Reject("bad_row", "result", f"{where}: result is {type(result).__name__}, not a list")
    for k, r in enumerate(result):
        if not isinstance(r, Mapping):
            raise _Reject("bad_row", "result", f"{where}: result {k} is {type(r).__name__}, not an object")
    if ctx.task == "classification":
        choices = [r for r in result if r.get("type") == "choices"]
        mine = [r for r in choices if r.get("from_name") == FROM_NAME] or (choices if len(choices) == 1 else [])
        if not mine:
            if choices:
                raise _Reject("bad_row", "label", f"{where}: {len(choices)} choices results, none from '{FROM_NAME}'")
            raise _Reject("unreviewed", "label", f"{where}: the annotation has no choice")
        if len(mine) > 1:
            raise _Reject("bad_row", "label", f"{where}: {len(mine)} choices results from '{FROM_NAME}'")
        v = mine[0].get("value")
        if not isinstance(v, Mapping):
            raise _Reject("bad_row", "label", f"{where}: the choices result has no value object")
        return _one_label(v.get("choices"), where, "choices", ctx.classes, "label")
    if ctx.task == "detection":
        return [_ls_box(ctx, r, info, where) for r in result if r.get("type") == "rectanglelabels"]
    mask: np.ndarray | None = None
    for r in result:
        if r.get("type") != "brushlabels":
            continue
        v = r.get("value")
        if not isinstance(v, Mapping):
            raise _Reject("bad_row", "mask", f"{where}: a brushlabels result has no value object")
        cls = _one_label(v.get("brushlabels"), where, "brushlabels", ctx.classes[1:], "mask")
        fmt = v.get("format", "rle")
        if fmt != "rle":
            raise _Reject("bad_mask", "mask", f"{where}: brush {cls} has format {fmt!r}, not 'rle'")
        w, h = _image_size(ctx, r, info, where, "bad_mask", "mask")
        try:
            painted = rle_decode(v.get("rle"), h, w)
        except ValueError as err:
            raise _Reject("bad_mask", "mask", f"{where}: brush {cls}: {err}") from None
        if mask is None:
            mask = np.zeros((h, w), dtype=np.uint8)
        elif mask.shape != (h, w):
            raise _Reject("bad_mask", "mask", f"{where}: brush results of different sizes")
        mask[painted] = ctx.classes.index(cls)
    if mask is None:
        w, h = ctx.known_size(info)
        if w is None or h is None:
            raise _Reject("bad_mask", "mask", f"{where}: the size of the image is unknown")
        mask = np.zeros((h, w), dtype=np.uint8)
    return mask


def _key(task: str, value: Any) -> Any:
    """What two labels of one image are compared by."""
    if task == "classification":
        return value
    if task == "detection":
        return tuple(sorted((round(b["x1"]), round(b["y1"]), round(b["x2"]), round(b["y2"]), b["category"])
                            for b in value))
    return (value.shape, hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest())


def _reviewer(completed_by: Any) -> str | None:
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("email") or completed_by.get("id")
    if completed_by is None or isinstance(completed_by, bool):
        return None
    s = str(completed_by).strip()
    return s or None


def _json_item(ctx: _Context, task_obj: Any, row: int) -> _Item:
    if not isinstance(task_obj, Mapping):
        raise _Reject("bad_row", "task", f"row {row}: the task is {type(task_obj).__name__}, not an object")
    tid = _text(task_obj.get("id"))
    where = f"task {tid} (row {row})" if tid is not None else f"row {row}"
    data = task_obj.get("data")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _Reject("bad_row", "data", f"{where}: data is {type(data).__name__}, not an object")
    h, cid, info = ctx.identify(data.get("content_hash"), data.get("conveyor_id"), where)
    anns = task_obj.get("annotations")
    if anns is None:
        anns = []
    if not isinstance(anns, list):
        raise _Reject("bad_row", "annotations", f"{where}: annotations is {type(anns).__name__}, not a list")
    live = []
    for k, a in enumerate(anns):
        if not isinstance(a, Mapping):
            raise _Reject("bad_row", "annotations", f"{where}: annotation {k} is {type(a).__name__}, not an object")
        if not a.get("was_cancelled"):
            live.append(a)
    if not live:
        raise _Reject("unreviewed", "annotations", f"{where}: no submitted annotation"
                      + (f" ({len(anns)} skipped)" if anns else ""))
    values = []
    for a in live:
        aw = f"{where} annotation {a.get('id')}" if a.get("id") is not None else where
        values.append(_parse_result(ctx, a.get("result"), info, aw))
    keys = {_key(ctx.task, v) for v in values}
    if len(keys) > 1:
        who = ", ".join(str(_reviewer(a.get("completed_by"))) for a in live)
        raise _Reject("conflicting_labels", _field(ctx.task),
                      f"{where}: {len(live)} annotations (by {who}) disagree")
    reviewers = list(dict.fromkeys(r for r in (_reviewer(a.get("completed_by")) for a in live) if r))
    return _Item(row, tid, where, h, cid, values[0], ",".join(reviewers) or None)


def _field(task: str) -> str:
    return {"classification": "label", "detection": "boxes", "segmentation": "mask"}[task]


def _read_png_mask(ctx: _Context, cell: str, info: Mapping, where: str) -> np.ndarray:
    from PIL import Image

    p = Path(cell).expanduser()
    if not p.is_absolute():
        p = ctx.path.parent / p
    if not p.is_file():
        raise _Reject("bad_mask", "mask", f"{where}: no mask file {p}")
    w, h = ctx.known_size(info)
    if w is None or h is None:
        raise _Reject("bad_mask", "mask", f"{where}: the size of the image is unknown")
    try:
        size = p.stat().st_size
        if size == 0 or size > MAX_MASK_BYTES:
            raise _Reject("bad_mask", "mask", f"{where}: mask {p} is {size} bytes")
        data = p.read_bytes()
    except OSError as err:
        raise _Reject("bad_mask", "mask", f"{where}: cannot read mask {p}: {err.strerror or err}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise _Reject("bad_mask", "mask", f"{where}: mask {p} is {im.format}, not a PNG")
            if im.mode not in ("L", "P"):
                raise _Reject("bad_mask", "mask", f"{where}: mask {p} has mode {im.mode}; masks must be L or P "
                              "(one class index per pixel)")
            if im.size != (w, h):
                raise _Reject("bad_mask", "mask", f"{where}: mask {p} is {im.size[0]}x{im.size[1]}, "
                              f"the image is {w}x{h}")
            arr = np.array(im, dtype=np.uint8)
    except _Reject:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise _Reject("bad_mask", "mask", f"{where}: mask {p} cannot be decoded: {type(err).__name__}: {err}") from None
    present = np.flatnonzero(np.bincount(arr.reshape(-1), minlength=256))
    wrong = [int(v) for v in present if v >= len(ctx.classes) and v != ctx.ignore_index]
    if wrong:
        raise _Reject("bad_mask", "mask", f"{where}: mask {p} has values {wrong[:10]} outside "
                      f"0..{len(ctx.classes) - 1} (ignore index {ctx.ignore_index})")
    return arr


def _csv_item(ctx: _Context, rec: Mapping, row: int) -> _Item:
    where = f"row {row}"
    if rec.get(None):
        raise _Reject("bad_row", "row", f"{where}: {len(rec[None])} cells more than the header has")
    h, cid, info = ctx.identify(rec.get("content_hash"), rec.get("id"), where)
    label = (rec.get("label") or "").strip()
    reviewer = (rec.get("reviewer") or "").strip() or None
    if ctx.task == "classification":
        if not label:
            raise _Reject("unreviewed", "label", f"{where}: the label cell is empty")
        if label not in ctx.classes:
            raise _Reject("unknown_label", "label", f"{where}: {label!r} is not a class ({', '.join(ctx.classes)})")
        return _Item(row, None, where, h, cid, label, reviewer)
    col = _field(ctx.task)
    cell = (rec.get(col) or "").strip()
    if not cell:
        raise _Reject("unreviewed", col, f"{where}: the {col} cell is empty")
    if not label:
        raise _Reject("unreviewed", "label", f"{where}: the label cell is empty; write a mark (e.g. 'ok') "
                      f"once the {col} are reviewed")
    if ctx.task == "detection":
        try:
            boxes = json.loads(cell)
        except ValueError as err:
            raise _Reject("bad_row", "boxes", f"{where}: the boxes cell is not JSON: {err}") from None
        if not isinstance(boxes, list):
            raise _Reject("bad_row", "boxes", f"{where}: the boxes cell is {type(boxes).__name__}, not a list")
        return _Item(row, None, where, h, cid, [_pixel_box(ctx, b, k, info, where) for k, b in enumerate(boxes)],
                     reviewer)
    return _Item(row, None, where, h, cid, _read_png_mask(ctx, cell, info, where), reviewer)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ReviewFileError(f"review file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReviewFileError(f"review file {path} cannot be read: {err}") from None


def _load_json(path: Path) -> list:
    text = _read_text(path)
    try:
        tasks = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ReviewFileError(f"review file {path} is not JSON: {err}") from None
    if not isinstance(tasks, list):
        raise ReviewFileError(f"review file {path} holds a {type(tasks).__name__}, not a list of Label Studio tasks")
    return tasks


def _load_csv(path: Path, task: str) -> list[dict]:
    text = _read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [c.strip() if isinstance(c, str) else c for c in (reader.fieldnames or [])]
        reader.fieldnames = header
        need = ["label"] + (["boxes"] if task == "detection" else ["mask"] if task == "segmentation" else [])
        missing = [c for c in need if c not in header]
        if "content_hash" not in header and "id" not in header:
            missing.insert(0, "content_hash or id")
        if missing:
            raise ReviewFileError(f"review file {path} lacks the column(s) {', '.join(missing)} "
                                  f"(it has {', '.join(map(str, header)) or 'no header'})")
        return list(reader)
    except csv.Error as err:
        raise ReviewFileError(f"review file {path} is not a readable CSV: {err}") from None


def read_review(path: str | Path, task: str, classes: Sequence[str], known: Mapping[str, Mapping],
                ignore_index: int = IGNORE_INDEX) -> ReviewChecked:
    """Read a reviewed Label Studio JSON export (``.json``) or the filled queue CSV (``.csv``) and check it.

    ``known`` maps content hash -> ``{"id", "width", "height", "path"}`` for every image conveyor knows.
    Every task / row ends up accepted or quarantined with a reason; only a file that cannot be read as
    a whole raises :class:`ReviewFileError`.
    """
    _check_task(task)
    names = _check_classes(task, classes)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        records: list = _load_json(path)
    elif suffix == ".csv":
        records = _load_csv(path, task)
    else:
        raise ReviewFileError(f"review file {path} is neither .json (Label Studio export) nor .csv (the queue)")
    ctx = _Context(path, task, names, known, ignore_index)
    bad: list[dict] = []
    items: list[_Item] = []
    for row, rec in enumerate(records, start=1):
        tid = None
        if suffix == ".json" and isinstance(rec, Mapping):
            tid = _text(rec.get("id"))
        try:
            items.append(_json_item(ctx, rec, row) if suffix == ".json" else _csv_item(ctx, rec, row))
        except _Reject as rej:
            bad.append({"row": row, "task_id": tid, "field": rej.field, "reason": rej.reason, "detail": rej.detail})
        except Exception as err:  # noqa: BLE001 - content of one row never stops the file
            where = f"task {tid} (row {row})" if tid is not None else f"row {row}"
            bad.append({"row": row, "task_id": tid, "field": "row", "reason": "bad_row",
                        "detail": f"{where}: {type(err).__name__}: {err}"})

    groups: dict[str, list[_Item]] = {}
    for it in items:
        groups.setdefault(it.content_hash, []).append(it)
    accepted: list[ReviewedLabel] = []
    for it in items:
        group = groups[it.content_hash]
        if len(group) > 1:
            keys = {_key(task, g.value) for g in group}
            places = ", ".join(g.where for g in group)
            if len(keys) > 1:
                bad.append({"row": it.row, "task_id": it.task_id, "field": _field(task), "reason": "conflicting_labels",
                            "detail": f"{it.where}: image {it.content_hash[:12]} (id {it.id}) is labelled "
                                      f"differently in {places}"})
                continue
            if it is not group[0]:
                bad.append({"row": it.row, "task_id": it.task_id, "field": "content_hash", "reason": "duplicate",
                            "detail": f"{it.where}: image {it.content_hash[:12]} (id {it.id}) with the same label "
                                      f"is accepted from {group[0].where}"})
                continue
        accepted.append(ReviewedLabel(
            content_hash=it.content_hash, id=it.id,
            label=it.value if task == "classification" else None,
            boxes=it.value if task == "detection" else None,
            mask=it.value if task == "segmentation" else None,
            reviewer=it.reviewer, where=it.where))

    bad.sort(key=lambda b: b["row"])
    frame = pl.DataFrame({"file": [str(path)] * len(bad), "row": [b["row"] for b in bad],
                          "task_id": [b["task_id"] for b in bad], "field": [b["field"] for b in bad],
                          "reason": [b["reason"] for b in bad], "detail": [b["detail"] for b in bad]},
                         schema=QUARANTINE_SCHEMA)
    return ReviewChecked(accepted=accepted, quarantined=frame, received=len(records))
