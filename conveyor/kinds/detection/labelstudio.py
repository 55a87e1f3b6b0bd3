"""Detection in the review queue: ``rectanglelabels`` results (percent of the image), boxes as the label.

Label Studio's boxes are ``value = {"x", "y", "width", "height", "rotation", "rectanglelabels"}``
with x / y the top-left corner and every value a percentage (0..100) of the image's width or
height; the CSV's ``boxes`` cell holds ``[{"x1", "y1", "x2", "y2", "category"}]`` in pixels.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from conveyor.labels.labelstudio.export import FROM_NAME, TO_NAME, check_names, item_size, result_id, xml_attr
from conveyor.labels.labelstudio.imports import (
    PERCENT_TOL,
    PIXEL_TOL,
    Reject,
    ReviewContext,
    image_size,
    marked_cell,
    number,
    one_label,
)


def check_classes(classes: Sequence[str]) -> list[str]:
    return check_names(classes)


def config(classes: Sequence[str]) -> str:
    """A ``RectangleLabels`` control named ``label`` over the classes."""
    items = [f'    <Label value="{xml_attr(c)}"/>' for c in classes]
    return "\n".join(["<View>", f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>',
                      f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">', *items,
                      "  </RectangleLabels>", "</View>"]) + "\n"


def prediction(item: Mapping, classes: Sequence[str]) -> list[dict] | None:
    """One ``rectanglelabels`` result per box of the item's ``boxes`` (pixels, with ``category``)."""
    boxes = item.get("boxes")
    if boxes is None:
        return None
    w, hh = item_size(item)
    h = item.get("content_hash")
    result = []
    for k, b in enumerate(boxes):
        cat = str(b["category"])
        if cat not in classes:
            raise ValueError(f"item {item.get('id')!r}: box category {cat!r} is not in classes")
        x1, y1, x2, y2 = (float(b[key]) for key in ("x1", "y1", "x2", "y2"))
        r = {"id": result_id(h, k), "from_name": FROM_NAME, "to_name": TO_NAME, "type": "rectanglelabels",
             "original_width": w, "original_height": hh, "image_rotation": 0,
             "value": {"x": x1 / w * 100, "y": y1 / hh * 100, "width": (x2 - x1) / w * 100,
                       "height": (y2 - y1) / hh * 100, "rotation": 0, "rectanglelabels": [cat]}}
        if b.get("score") is not None:
            r["score"] = float(b["score"])
        result.append(r)
    return result


def _ls_box(ctx: ReviewContext, r: Mapping, info: Mapping, where: str) -> dict:
    v = r.get("value")
    if not isinstance(v, Mapping):
        raise Reject("bad_row", "boxes", f"{where}: a rectanglelabels result has no value object")
    cat = one_label(v.get("rectanglelabels"), where, "rectanglelabels", ctx.classes, "boxes")
    nums = [number(v.get(k)) for k in ("x", "y", "width", "height")]
    if any(n is None for n in nums):
        raise Reject("bad_box", "boxes", f"{where}: box {cat} has x, y, width, height "
                     f"{[v.get(k) for k in ('x', 'y', 'width', 'height')]}, not finite numbers")
    x, y, bw, bh = nums
    rot = number(v.get("rotation", 0) or 0)
    if rot is None or abs(rot % 360) > 1e-6 and abs(rot % 360 - 360) > 1e-6:
        raise Reject("bad_box", "boxes", f"{where}: box {cat} is rotated by {v.get('rotation')!r} degrees; "
                     "boxes must be axis-aligned")
    irot = number(r.get("image_rotation", 0) or 0)
    if irot is None or abs(irot % 360) > 1e-6 and abs(irot % 360 - 360) > 1e-6:
        raise Reject("bad_box", "boxes", f"{where}: box {cat} was drawn on an image rotated by "
                     f"{r.get('image_rotation')!r} degrees")
    if bw <= 0 or bh <= 0:
        raise Reject("bad_box", "boxes", f"{where}: box {cat} has width {bw} and height {bh} (percent)")
    if x < -PERCENT_TOL or y < -PERCENT_TOL or x + bw > 100 + PERCENT_TOL or y + bh > 100 + PERCENT_TOL:
        raise Reject("bad_box", "boxes", f"{where}: box {cat} at x {x:.3g}%, y {y:.3g}%, width {bw:.3g}%, "
                     f"height {bh:.3g}% reaches outside the image")
    w, h = image_size(ctx, r, info, where, "bad_box", "boxes")
    x1, y1 = max(0.0, x / 100 * w), max(0.0, y / 100 * h)
    x2, y2 = min(float(w), (x + bw) / 100 * w), min(float(h), (y + bh) / 100 * h)
    if x2 <= x1 or y2 <= y1:
        raise Reject("bad_box", "boxes", f"{where}: box {cat} is empty inside the image")
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "category": cat}


def _pixel_box(ctx: ReviewContext, b: Any, k: int, info: Mapping, where: str) -> dict:
    if not isinstance(b, Mapping):
        raise Reject("bad_row", "boxes", f"{where}: box {k} is {type(b).__name__}, not an object")
    cat = b.get("category")
    if not isinstance(cat, str) or cat not in ctx.classes:
        raise Reject("unknown_label", "boxes", f"{where}: box {k} category {cat!r} is not a class "
                     f"({', '.join(ctx.classes)})")
    nums = [number(b.get(key)) for key in ("x1", "y1", "x2", "y2")]
    if any(n is None for n in nums):
        raise Reject("bad_box", "boxes", f"{where}: box {k} ({cat}) has x1, y1, x2, y2 "
                     f"{[b.get(key) for key in ('x1', 'y1', 'x2', 'y2')]}, not finite numbers")
    x1, y1, x2, y2 = nums
    if x2 <= x1 or y2 <= y1:
        raise Reject("bad_box", "boxes", f"{where}: box {k} ({cat}) has width {x2 - x1:g} and height {y2 - y1:g}")
    w, h = ctx.known_size(info)
    if w is None or h is None:
        raise Reject("bad_box", "boxes", f"{where}: the size of the image is unknown")
    if x1 < -PIXEL_TOL or y1 < -PIXEL_TOL or x2 > w + PIXEL_TOL or y2 > h + PIXEL_TOL:
        raise Reject("bad_box", "boxes", f"{where}: box {k} ({cat}) [{x1:g}, {y1:g}, {x2:g}, {y2:g}] reaches "
                     f"outside the {w}x{h} image")
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
    if x2 <= x1 or y2 <= y1:
        raise Reject("bad_box", "boxes", f"{where}: box {k} ({cat}) is empty inside the image")
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "category": cat}


def parse(ctx: ReviewContext, result: list, info: Mapping, where: str) -> list[dict]:
    """Every ``rectanglelabels`` result as a box in the image's pixels (clipped to the image)."""
    return [_ls_box(ctx, r, info, where) for r in result if r.get("type") == "rectanglelabels"]


def label_key(value: Any) -> Any:
    return tuple(sorted((round(b["x1"]), round(b["y1"]), round(b["x2"]), round(b["y2"]), b["category"])
                        for b in value))


def csv_parse(ctx: ReviewContext, rec: Mapping, where: str) -> list[dict]:
    """The ``boxes`` cell (JSON, pixels) of a row marked reviewed; ``[]`` means "no objects"."""
    cell = marked_cell(rec, "boxes", where)
    try:
        boxes = json.loads(cell)
    except ValueError as err:
        raise Reject("bad_row", "boxes", f"{where}: the boxes cell is not JSON: {err}") from None
    if not isinstance(boxes, list):
        raise Reject("bad_row", "boxes", f"{where}: the boxes cell is {type(boxes).__name__}, not a list")
    return [_pixel_box(ctx, b, k, ctx.info, where) for k, b in enumerate(boxes)]


def csv_cells(item: Mapping, classes: Sequence[str]) -> dict[str, str]:
    """``predicted``: boxes per class; ``boxes``: the predicted boxes as JSON (pixels), prefilled."""
    boxes = item.get("boxes")
    if boxes is None:
        predicted = ""
    else:
        counts = Counter(str(b["category"]) for b in boxes)
        predicted = "; ".join(f"{c} x{n}" for c, n in sorted(counts.items())) or "no objects"
    cell = json.dumps([{"x1": round(float(b["x1"]), 2), "y1": round(float(b["y1"]), 2),
                        "x2": round(float(b["x2"]), 2), "y2": round(float(b["y2"]), 2),
                        "category": str(b["category"])} for b in boxes or []])
    return {"predicted": predicted, "boxes": cell}


def boxes_digest(boxes: Any) -> str:
    """A digest of an image's boxes (order-free, coordinates to 3 decimals)."""
    items = boxes.to_list() if hasattr(boxes, "to_list") else (boxes or [])
    rows = sorted((b["category"], *(round(float(b[k]), 3) for k in ("x1", "y1", "x2", "y2"))) for b in items)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def label_digest(frame: pl.DataFrame) -> list[str]:
    """A digest of each row's boxes (a manifest's box list, or reviewed labels' JSON text)."""
    return [boxes_digest(json.loads(b) if isinstance(b, str) else b) for b in frame["boxes"].to_list()]


def review_record(value: list[dict], save_mask: Callable[[np.ndarray], tuple[str, str]]) -> dict[str, Any]:
    return {"boxes": json.dumps(value)}


def review_columns(records: Sequence[Mapping], classes: Sequence[str]) -> list[pl.Series]:
    from conveyor.kinds.detection.sources import BOX_STRUCT

    values = [r["boxes"] for r in records]
    return [pl.Series("boxes", [json.loads(v) if v is not None else None for v in values],
                      dtype=pl.List(BOX_STRUCT))]


def class_counts(frame: pl.DataFrame) -> dict[str, int]:
    cls = frame.select(pl.col("boxes")).explode("boxes").drop_nulls("boxes").select(
        pl.col("boxes").struct.field("category").alias("c"))["c"]
    return {str(k): int(v) for k, v in cls.value_counts().iter_rows()}
