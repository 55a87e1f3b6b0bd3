"""Reading a reviewed Label Studio JSON export or the filled queue CSV back, with quarantine.

:func:`read_review` matches every task / row to a known image by content hash (then by conveyor
id), checks it and returns the accepted labels and a quarantine frame (:data:`QUARANTINE_SCHEMA`)
with a reason code per rejected item (:data:`REASONS`). Only a file that cannot be read as a whole
raises :class:`ReviewFileError`. What a label is (a class, boxes, a mask) and how an annotation's
result list or a CSV row becomes one is the task kind's (``TaskKind.labelstudio_parse`` /
``csv_parse`` / ``label_key``); the kind's parsers use :class:`ReviewContext`, :class:`Reject` and
the checks here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from conveyor.kinds.base import TaskKind
from conveyor.labels.labelstudio.export import IGNORE_INDEX, task_kind

PERCENT_TOL = 0.5  # percentage points a Label Studio box may reach past the image edge; clipped
PIXEL_TOL = 0.5  # pixels a CSV box may reach past the image edge; clipped
MAX_MASK_BYTES = 64 * 2**20

QUARANTINE_SCHEMA = {"file": pl.String, "row": pl.Int64, "task_id": pl.String, "field": pl.String,
                     "reason": pl.String, "detail": pl.String}
REASONS = ("missing_image", "unreviewed", "unknown_label", "conflicting_labels", "duplicate", "bad_box",
           "bad_mask", "bad_row")


class ReviewFileError(ValueError):
    """The review file as a whole cannot be read; the message names the file."""


class Reject(Exception):
    """One task / row is quarantined: ``reason`` (one of :data:`REASONS`), the ``field`` at fault, ``detail``."""

    def __init__(self, reason: str, field: str, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


@dataclass
class ReviewedLabel:
    """One accepted label: ``value`` is the kind's label value, ``field`` its :attr:`TaskKind.label_field`."""

    content_hash: str
    id: str
    value: Any  # classification: the class; detection: absolute xyxy box dicts with category, in
    #             original pixels; segmentation: uint8 HxW class indices (unpainted pixels 0)
    field: str
    reviewer: str | None  # Label Studio: annotation completed_by; CSV: the reviewer column
    where: str  # "task <id> (row N)" or "row N"

    @property
    def label(self) -> Any:
        """The class (a ``label`` label), else None."""
        return self.value if self.field == "label" else None

    @property
    def boxes(self) -> list[dict] | None:
        """The boxes (a ``boxes`` label), else None."""
        return self.value if self.field == "boxes" else None

    @property
    def mask(self) -> np.ndarray | None:
        """The class-index mask (a ``mask`` label), else None."""
        return self.value if self.field == "mask" else None


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


@dataclass
class _Item:
    row: int
    task_id: str | None
    where: str
    content_hash: str
    id: str
    value: Any
    reviewer: str | None


def number(v: Any) -> float | None:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def text(v: Any) -> str | None:
    if isinstance(v, str) and v.strip():
        return v.strip()
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return None


class ReviewContext:
    """What the kind's parsers need: the file, the classes, the known images (content hash -> id,
    width, height, path) and the ignore index of masks."""


    def __init__(self, path: Path, kind: TaskKind, classes: list[str], known: Mapping[str, Mapping],
                 ignore_index: int):
        self.path, self.kind, self.classes, self.known, self.ignore_index = path, kind, classes, known, ignore_index
        self.info: Mapping = {}  # the known image of the CSV row being parsed (``csv_parse`` reads it)
        self.by_id: dict[str, str] = {}
        for h, info in known.items():
            i = info.get("id") if isinstance(info, Mapping) else None
            if i is not None:
                self.by_id.setdefault(str(i), h)

    def identify(self, content_hash: Any, conveyor_id: Any, where: str) -> tuple[str, str, Mapping]:
        h = text(content_hash)
        i = text(conveyor_id)
        if h is not None and h in self.known:
            found = h
        elif i is not None and i in self.by_id:
            found = self.by_id[i]
        else:
            if h is None and i is None:
                raise Reject("missing_image", "content_hash", f"{where}: no content hash and no conveyor id")
            tried = " / ".join(x for x in (f"content hash {h}" if h else "", f"id {i}" if i else "") if x)
            raise Reject("missing_image", "content_hash", f"{where}: no known image has {tried}")
        info = self.known[found]
        p = info.get("path")
        if not p or not os.path.exists(p):
            raise Reject("missing_image", "content_hash",
                          f"{where}: image {found[:12]} (id {info.get('id')}) is no longer on disk at {p}")
        return found, str(info.get("id", i or "")), info

    def known_size(self, info: Mapping) -> tuple[int | None, int | None]:
        w, h = number(info.get("width")), number(info.get("height"))
        return (int(w) if w and w >= 1 else None), (int(h) if h and h >= 1 else None)


def image_size(ctx: ReviewContext, r: Mapping, info: Mapping, where: str, reason: str, field: str) -> tuple[int, int]:
    """Width and height for a result: its original_width / original_height, checked against the known size."""
    kw, kh = ctx.known_size(info)
    ow, oh = r.get("original_width"), r.get("original_height")
    if ow is None and oh is None:
        if kw is None or kh is None:
            raise Reject(reason, field, f"{where}: the size of the image is unknown")
        return kw, kh
    w, h = number(ow), number(oh)
    if w is None or h is None or w < 1 or h < 1 or w != int(w) or h != int(h):
        raise Reject(reason, field, f"{where}: original size {ow!r} x {oh!r} is not a pair of positive integers")
    w, h = int(w), int(h)
    if kw is not None and kh is not None and (w, h) != (kw, kh):
        raise Reject(reason, field, f"{where}: the result is for a {w}x{h} image, this image is {kw}x{kh}")
    return w, h


def one_label(labels: Any, where: str, what: str, allowed: list[str], reason_field: str) -> str:
    if not isinstance(labels, list):
        raise Reject("bad_row", reason_field, f"{where}: {what} is {type(labels).__name__}, not a list")
    if len(labels) != 1 or not isinstance(labels[0], str):
        raise Reject("unknown_label", reason_field, f"{where}: {what} is {labels!r}; one class is needed")
    if labels[0] not in allowed:
        raise Reject("unknown_label", reason_field, f"{where}: {labels[0]!r} is not a class ({', '.join(allowed)})")
    return labels[0]


def marked_cell(rec: Mapping, column: str, where: str) -> str:
    """The filled ``column`` cell of a review-CSV row whose ``label`` cell marks it reviewed (raises
    :class:`Reject` ``unreviewed`` when either is empty)."""
    cell = (rec.get(column) or "").strip()
    if not cell:
        raise Reject("unreviewed", column, f"{where}: the {column} cell is empty")
    if not (rec.get("label") or "").strip():
        raise Reject("unreviewed", "label", f"{where}: the label cell is empty; write a mark (e.g. 'ok') "
                     f"once the {column} are reviewed")
    return cell


def parse_result(ctx: ReviewContext, result: Any, info: Mapping, where: str) -> Any:
    """One annotation's result list to a label value (the kind parses it); raises :class:`Reject`."""
    if not isinstance(result, list):
        raise Reject("bad_row", "result", f"{where}: result is {type(result).__name__}, not a list")
    for k, r in enumerate(result):
        if not isinstance(r, Mapping):
            raise Reject("bad_row", "result", f"{where}: result {k} is {type(r).__name__}, not an object")
    return ctx.kind.labelstudio_parse(ctx, result, info, where)


def _reviewer(completed_by: Any) -> str | None:
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("email") or completed_by.get("id")
    if completed_by is None or isinstance(completed_by, bool):
        return None
    s = str(completed_by).strip()
    return s or None


def _json_item(ctx: ReviewContext, task_obj: Any, row: int) -> _Item:
    if not isinstance(task_obj, Mapping):
        raise Reject("bad_row", "task", f"row {row}: the task is {type(task_obj).__name__}, not an object")
    tid = text(task_obj.get("id"))
    where = f"task {tid} (row {row})" if tid is not None else f"row {row}"
    data = task_obj.get("data")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise Reject("bad_row", "data", f"{where}: data is {type(data).__name__}, not an object")
    h, cid, info = ctx.identify(data.get("content_hash"), data.get("conveyor_id"), where)
    anns = task_obj.get("annotations")
    if anns is None:
        anns = []
    if not isinstance(anns, list):
        raise Reject("bad_row", "annotations", f"{where}: annotations is {type(anns).__name__}, not a list")
    live = []
    for k, a in enumerate(anns):
        if not isinstance(a, Mapping):
            raise Reject("bad_row", "annotations", f"{where}: annotation {k} is {type(a).__name__}, not an object")
        if not a.get("was_cancelled"):
            live.append(a)
    if not live:
        raise Reject("unreviewed", "annotations", f"{where}: no submitted annotation"
                      + (f" ({len(anns)} skipped)" if anns else ""))
    values = []
    for a in live:
        aw = f"{where} annotation {a.get('id')}" if a.get("id") is not None else where
        values.append(parse_result(ctx, a.get("result"), info, aw))
    keys = {ctx.kind.label_key(v) for v in values}
    if len(keys) > 1:
        who = ", ".join(str(_reviewer(a.get("completed_by"))) for a in live)
        raise Reject("conflicting_labels", ctx.kind.label_field,
                      f"{where}: {len(live)} annotations (by {who}) disagree")
    reviewers = list(dict.fromkeys(r for r in (_reviewer(a.get("completed_by")) for a in live) if r))
    return _Item(row, tid, where, h, cid, values[0], ",".join(reviewers) or None)


def read_png_mask(ctx: ReviewContext, cell: str, info: Mapping, where: str) -> np.ndarray:
    from PIL import Image

    p = Path(cell).expanduser()
    if not p.is_absolute():
        p = ctx.path.parent / p
    if not p.is_file():
        raise Reject("bad_mask", "mask", f"{where}: no mask file {p}")
    w, h = ctx.known_size(info)
    if w is None or h is None:
        raise Reject("bad_mask", "mask", f"{where}: the size of the image is unknown")
    try:
        size = p.stat().st_size
        if size == 0 or size > MAX_MASK_BYTES:
            raise Reject("bad_mask", "mask", f"{where}: mask {p} is {size} bytes")
        data = p.read_bytes()
    except OSError as err:
        raise Reject("bad_mask", "mask", f"{where}: cannot read mask {p}: {err.strerror or err}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise Reject("bad_mask", "mask", f"{where}: mask {p} is {im.format}, not a PNG")
            if im.mode not in ("L", "P"):
                raise Reject("bad_mask", "mask", f"{where}: mask {p} has mode {im.mode}; masks must be L or P "
                              "(one class index per pixel)")
            if im.size != (w, h):
                raise Reject("bad_mask", "mask", f"{where}: mask {p} is {im.size[0]}x{im.size[1]}, "
                              f"the image is {w}x{h}")
            arr = np.array(im, dtype=np.uint8)
    except Reject:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise Reject("bad_mask", "mask", f"{where}: mask {p} cannot be decoded: {type(err).__name__}: {err}") from None
    present = np.flatnonzero(np.bincount(arr.reshape(-1), minlength=256))
    wrong = [int(v) for v in present if v >= len(ctx.classes) and v != ctx.ignore_index]
    if wrong:
        raise Reject("bad_mask", "mask", f"{where}: mask {p} has values {wrong[:10]} outside "
                      f"0..{len(ctx.classes) - 1} (ignore index {ctx.ignore_index})")
    return arr


def _csv_item(ctx: ReviewContext, rec: Mapping, row: int) -> _Item:
    where = f"row {row}"
    if rec.get(None):
        raise Reject("bad_row", "row", f"{where}: {len(rec[None])} cells more than the header has")
    h, cid, info = ctx.identify(rec.get("content_hash"), rec.get("id"), where)
    reviewer = (rec.get("reviewer") or "").strip() or None
    ctx.info = info
    return _Item(row, None, where, h, cid, ctx.kind.csv_parse(ctx, rec, where), reviewer)


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


def _load_csv(path: Path, kind: TaskKind) -> list[dict]:
    text = _read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [c.strip() if isinstance(c, str) else c for c in (reader.fieldnames or [])]
        reader.fieldnames = header
        need = ["label", *kind.csv_columns]
        missing = [c for c in need if c not in header]
        if "content_hash" not in header and "id" not in header:
            missing.insert(0, "content_hash or id")
        if missing:
            raise ReviewFileError(f"review file {path} lacks the column(s) {', '.join(missing)} "
                                  f"(it has {', '.join(map(str, header)) or 'no header'})")
        return list(reader)
    except csv.Error as err:
        raise ReviewFileError(f"review file {path} is not a readable CSV: {err}") from None


def read_review(path: str | Path, task: str | TaskKind, classes: Sequence[str], known: Mapping[str, Mapping],
                ignore_index: int = IGNORE_INDEX) -> ReviewChecked:
    """Read a reviewed Label Studio JSON export (``.json``) or the filled queue CSV (``.csv``) and check it.

    ``known`` maps content hash -> ``{"id", "width", "height", "path"}`` for every image conveyor knows.
    Every task / row ends up accepted or quarantined with a reason; only a file that cannot be read as
    a whole raises :class:`ReviewFileError`.
    """
    kind = task_kind(task)
    names = kind.labelstudio_classes(classes)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        records: list = _load_json(path)
    elif suffix == ".csv":
        records = _load_csv(path, kind)
    else:
        raise ReviewFileError(f"review file {path} is neither .json (Label Studio export) nor .csv (the queue)")
    ctx = ReviewContext(path, kind, names, known, ignore_index)
    bad: list[dict] = []
    items: list[_Item] = []
    for row, rec in enumerate(records, start=1):
        tid = None
        if suffix == ".json" and isinstance(rec, Mapping):
            tid = text(rec.get("id"))
        try:
            items.append(_json_item(ctx, rec, row) if suffix == ".json" else _csv_item(ctx, rec, row))
        except Reject as rej:
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
            keys = {kind.label_key(g.value) for g in group}
            places = ", ".join(g.where for g in group)
            if len(keys) > 1:
                bad.append({"row": it.row, "task_id": it.task_id, "field": kind.label_field, "reason": "conflicting_labels",
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
            value=it.value, field=kind.label_field, reviewer=it.reviewer, where=it.where))

    bad.sort(key=lambda b: b["row"])
    frame = pl.DataFrame({"file": [str(path)] * len(bad), "row": [b["row"] for b in bad],
                          "task_id": [b["task_id"] for b in bad], "field": [b["field"] for b in bad],
                          "reason": [b["reason"] for b in bad], "detail": [b["detail"] for b in bad]},
                         schema=QUARANTINE_SCHEMA)
    return ReviewChecked(accepted=accepted, quarantined=frame, received=len(records))
