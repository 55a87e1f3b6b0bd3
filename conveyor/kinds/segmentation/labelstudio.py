"""Segmentation in the review queue: one ``brushlabels`` result (brush RLE) per class, a mask as the label.

Background (class 0) is not painted: unpainted pixels are background. The CSV's ``mask`` cell is
left empty; the reviewer writes the path of a PNG of class indices (relative to the CSV's folder
or absolute).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from conveyor.labels.labelstudio.export import (
    FROM_NAME,
    IGNORE_INDEX,
    TO_NAME,
    check_names,
    item_size,
    result_id,
    xml_attr,
)
from conveyor.labels.labelstudio.imports import (
    Reject,
    ReviewContext,
    image_size,
    marked_cell,
    one_label,
    read_png_mask,
)
from conveyor.labels.labelstudio.rle import rle_decode, rle_encode


def check_classes(classes: Sequence[str]) -> list[str]:
    """The classes, background (index 0) and at least one other."""
    names = check_names(classes)
    if len(names) < 2:
        raise ValueError("segmentation needs a background class (index 0) and at least one other class")
    return names


def config(classes: Sequence[str]) -> str:
    """A ``BrushLabels`` control named ``label`` over the classes but background."""
    items = [f'    <Label value="{xml_attr(c)}"/>' for c in classes[1:]]
    return "\n".join(["<View>", f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>',
                      f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">', *items,
                      "  </BrushLabels>", "</View>"]) + "\n"


def prediction(item: Mapping, classes: Sequence[str]) -> list[dict] | None:
    """One ``brushlabels`` result per class (not background) present in the item's ``mask``."""
    mask = item.get("mask")
    if mask is None:
        return None
    w, hh = item_size(item)
    mask = np.asarray(mask)
    if mask.shape != (hh, w):
        raise ValueError(f"item {item.get('id')!r}: mask is {mask.shape}, the image is {hh}x{w} (h x w)")
    ignore_index = item.get("ignore_index", IGNORE_INDEX)
    present = [int(v) for v in np.unique(mask)]
    wrong = [v for v in present if v >= len(classes) and v != ignore_index]
    if wrong:
        raise ValueError(f"item {item.get('id')!r}: mask values {wrong[:10]} are not class indices")
    h = item.get("content_hash")
    return [{"id": result_id(h, k), "from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels",
             "original_width": w, "original_height": hh, "image_rotation": 0,
             "value": {"format": "rle", "rle": rle_encode(mask == v), "brushlabels": [classes[v]]}}
            for k, v in enumerate(v for v in present if 0 < v < len(classes))]


def parse(ctx: ReviewContext, result: list, info: Mapping, where: str) -> np.ndarray:
    """The brushes painted over a background mask (uint8 class indices)."""
    mask: np.ndarray | None = None
    for r in result:
        if r.get("type") != "brushlabels":
            continue
        v = r.get("value")
        if not isinstance(v, Mapping):
            raise Reject("bad_row", "mask", f"{where}: a brushlabels result has no value object")
        cls = one_label(v.get("brushlabels"), where, "brushlabels", ctx.classes[1:], "mask")
        fmt = v.get("format", "rle")
        if fmt != "rle":
            raise Reject("bad_mask", "mask", f"{where}: brush {cls} has format {fmt!r}, not 'rle'")
        w, h = image_size(ctx, r, info, where, "bad_mask", "mask")
        try:
            painted = rle_decode(v.get("rle"), h, w)
        except ValueError as err:
            raise Reject("bad_mask", "mask", f"{where}: brush {cls}: {err}") from None
        if mask is None:
            mask = np.zeros((h, w), dtype=np.uint8)
        elif mask.shape != (h, w):
            raise Reject("bad_mask", "mask", f"{where}: brush results of different sizes")
        mask[painted] = ctx.classes.index(cls)
    if mask is None:
        w, h = ctx.known_size(info)
        if w is None or h is None:
            raise Reject("bad_mask", "mask", f"{where}: the size of the image is unknown")
        mask = np.zeros((h, w), dtype=np.uint8)
    return mask


def label_key(value: Any) -> Any:
    return (value.shape, hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest())


def csv_parse(ctx: ReviewContext, rec: Mapping, where: str) -> np.ndarray:
    """The PNG of class indices the ``mask`` cell names, in a row marked reviewed."""
    return read_png_mask(ctx, marked_cell(rec, "mask", where), ctx.info, where)


def csv_cells(item: Mapping, classes: Sequence[str]) -> dict[str, str]:
    """``predicted``: the classes in the predicted mask; ``mask``: empty, for the reviewer's PNG."""
    mask = item.get("mask")
    if mask is None:
        predicted = ""
    else:
        present = [int(v) for v in np.unique(np.asarray(mask)) if 0 < int(v) < len(classes)]
        predicted = "; ".join(classes[v] for v in present) or "background"
    return {"predicted": predicted, "mask": ""}


def label_digest(frame: pl.DataFrame) -> list[str | None]:
    """The mask's content hash."""
    return frame["mask_hash"].cast(pl.String).to_list()


def review_record(value: np.ndarray, save_mask: Callable[[np.ndarray], tuple[str, str]]) -> dict[str, Any]:
    path, digest = save_mask(value)
    return {"mask_path": path, "mask_hash": digest}


def review_columns(records: Sequence[Mapping], classes: Sequence[str]) -> list[pl.Series]:
    """``mask_path``, ``mask_hash`` and ``mask_classes`` (the classes present in the PNG)."""
    from PIL import Image

    paths = [r["mask_path"] for r in records]
    hashes = [r["mask_hash"] for r in records]
    present = []
    for p in paths:
        if p is None:
            present.append(None)
            continue
        with Image.open(p) as im:
            vals = np.unique(np.asarray(im))
        present.append([classes[int(v)] for v in vals if int(v) < len(classes)])
    return [pl.Series("mask_path", paths, dtype=pl.String), pl.Series("mask_hash", hashes, dtype=pl.String),
            pl.Series("mask_classes", present, dtype=pl.List(pl.String))]


def class_counts(frame: pl.DataFrame) -> dict[str, int]:
    cls = frame.select(pl.col("mask_classes").alias("c")).explode("c").drop_nulls("c")["c"]
    return {str(k): int(v) for k, v in cls.value_counts().iter_rows()}
