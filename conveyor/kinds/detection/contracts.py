"""Data contracts for detection datasets (the detection kind's ``contract_frames`` and
``class_frame``, run by :mod:`conveyor.data.contracts`).

The image-level ``label`` column has no meaning for detection (ingest leaves it null; the boxes
carry the classes), so the ``manifest`` and ``split_frame`` suites are replaced by
``detection_manifest`` and ``detection_split_frame`` (the same checks less the label ones, plus the
``boxes`` column), and two suites run on derived frames:

- ``detection_boxes``: one row per box: finite coordinates, x1 < x2, y1 < y2, inside the image,
  category in the class set;
- ``detection_class_coverage``: boxes per (eval split, class) >= ``split.min_per_class_eval``.

The leakage suites (groups, exact and near duplicates across splits) and ``split_sizes`` run as
for classification: they read ``group`` / ``content_hash`` / ``phash`` / ``split`` only.
"""

from __future__ import annotations

import polars as pl

MANIFEST_SUITE = "detection_manifest"
SPLIT_FRAME_SUITE = "detection_split_frame"
COVERAGE_SUITE = "detection_class_coverage"
BOXES_SUITE = "detection_boxes"

_BOX_SCHEMA = {"id": pl.String, "x1": pl.Float64, "y1": pl.Float64, "x2": pl.Float64, "y2": pl.Float64,
               "category": pl.String, "width": pl.Float64, "height": pl.Float64}


def boxes_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per box (id, coordinates, category, image width and height, ``finite``)."""
    if frame.height == 0 or "boxes" not in frame.columns:
        out = pl.DataFrame(schema=_BOX_SCHEMA)
    else:
        out = (
            frame.select("id", "boxes", pl.col("width").cast(pl.Float64), pl.col("height").cast(pl.Float64))
            .explode("boxes")
            .filter(pl.col("boxes").is_not_null())
            .unnest("boxes")
            .select(list(_BOX_SCHEMA))
        )
    coords = ["x1", "y1", "x2", "y2"]
    return out.with_columns(
        pl.all_horizontal([pl.col(c).is_not_null() & pl.col(c).is_finite() for c in coords]).alias("finite")
    )


def contract_frames(manifest: pl.DataFrame, split: pl.DataFrame | None) -> dict[str, pl.DataFrame]:
    """The manifest suites (``split`` None: the manifest rows, then one row per box) or the split
    suite (the split rows)."""
    if split is None:
        return {MANIFEST_SUITE: manifest, BOXES_SUITE: boxes_frame(manifest)}
    return {SPLIT_FRAME_SUITE: split}


def class_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """One row (split, cls) per box; no rows when the frame has no boxes."""
    if "boxes" not in frame.columns:
        return pl.DataFrame(schema={"split": pl.String, "cls": pl.String})
    return frame.select("split", pl.col("boxes")).explode("boxes").drop_nulls("boxes").select(
        "split", pl.col("boxes").struct.field("category").alias("cls"))


def class_coverage_frame(split: pl.DataFrame, classes: list[str], eval_splits: list[str]) -> pl.DataFrame:
    """One row per (eval split, class) over the full class set, with ``count`` = boxes (0 when absent)."""
    from conveyor.data.contracts import class_coverage_frame as coverage

    return coverage(class_frame(split), classes, eval_splits)
