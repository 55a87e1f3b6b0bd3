"""Data contracts for segmentation datasets (used by :mod:`conveyor.data.contracts` when ``spec.task``
is ``segmentation``).

The image-level ``label`` is null for segmentation (the masks carry the classes), so the
``manifest`` and ``split_frame`` suites are replaced by ``segmentation_manifest`` and
``segmentation_split_frame``: the same checks less the label ones, plus mask pairing
(``mask_path`` absolute and a PNG, ``mask_hash`` a sha256, ``mask_classes`` present, ``label``
null). ``segmentation_class_coverage`` counts, per (eval split, class), the images whose mask
contains the class: each must reach ``split.min_per_class_eval``.

The leakage suites (groups, exact and near duplicates across splits) and ``split_sizes`` run as
for classification: they read ``group`` / ``content_hash`` / ``phash`` / ``split`` only.
"""

from __future__ import annotations

import polars as pl

from conveyor.kinds.segmentation.sources import class_presence_frame

MANIFEST_SUITE = "segmentation_manifest"
SPLIT_FRAME_SUITE = "segmentation_split_frame"
COVERAGE_SUITE = "segmentation_class_coverage"


def class_coverage_frame(split: pl.DataFrame, classes: list[str], eval_splits: list[str]) -> pl.DataFrame:
    """One row per (eval split, class) over the full class set, with ``count`` = images whose mask
    contains the class (0 when absent)."""
    grid = pl.DataFrame(
        [(s, c) for s in eval_splits for c in classes], schema={"split": pl.String, "label": pl.String}, orient="row"
    )
    if "mask_classes" not in split.columns or split.height == 0:
        return grid.with_columns(pl.lit(0, dtype=pl.Int64).alias("count"))
    counts = (
        class_presence_frame(split.filter(pl.col("split").is_in(eval_splits)))
        .group_by(["split", "label"])
        .agg(pl.col("id").n_unique().alias("count"))
        .with_columns(pl.col("split").cast(pl.String), pl.col("label").cast(pl.String))
    )
    return grid.join(counts, on=["split", "label"], how="left").with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
