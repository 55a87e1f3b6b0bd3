"""Data contracts for segmentation datasets (the segmentation kind's ``contract_frames`` and
``class_frame``, run by :mod:`conveyor.data.contracts`).

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

MANIFEST_SUITE = "segmentation_manifest"
SPLIT_FRAME_SUITE = "segmentation_split_frame"
COVERAGE_SUITE = "segmentation_class_coverage"


def contract_frames(manifest: pl.DataFrame, split: pl.DataFrame | None) -> dict[str, pl.DataFrame]:
    """The manifest suite (``split`` None) or the split suite, on the frames themselves."""
    if split is None:
        return {MANIFEST_SUITE: manifest}
    return {SPLIT_FRAME_SUITE: split}


def class_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """One row (split, cls) per (image, class present in its mask); no rows without ``mask_classes``."""
    if "mask_classes" not in frame.columns:
        return pl.DataFrame(schema={"split": pl.String, "cls": pl.String})
    return frame.select("split", pl.col("mask_classes").alias("cls")).explode("cls").drop_nulls("cls")


def class_coverage_frame(split: pl.DataFrame, classes: list[str], eval_splits: list[str]) -> pl.DataFrame:
    """One row per (eval split, class) over the full class set, with ``count`` = images whose mask
    contains the class (0 when absent)."""
    from conveyor.data.contracts import class_coverage_frame as coverage

    return coverage(class_frame(split), classes, eval_splits)
