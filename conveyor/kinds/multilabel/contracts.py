"""Data contracts of multi-label datasets: the frames the ``multilabel_*`` suites validate.

The image-level ``label`` is null (the ``labels`` list carries the label set), so the ``manifest``
and ``split_frame`` suites are replaced by ``multilabel_manifest`` and ``multilabel_split_frame``
(the same checks less the label ones, plus ``labels`` present). ``multilabel_labels`` checks every
(image, label) pair: a known name, once per image. ``multilabel_class_coverage`` counts, per
(eval split, label), the images that carry the label: each must reach ``split.min_per_class_eval``.
The leakage suites (groups, exact and near duplicates across splits) and ``split_sizes`` run as
for classification: they read ``group`` / ``content_hash`` / ``phash`` / ``split`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

MANIFEST_SUITE = "multilabel_manifest"
SPLIT_FRAME_SUITE = "multilabel_split_frame"
LABELS_SUITE = "multilabel_labels"
COVERAGE_SUITE = "multilabel_class_coverage"
SUITES = (MANIFEST_SUITE, LABELS_SUITE, SPLIT_FRAME_SUITE, COVERAGE_SUITE)
EVAL_SPLITS = ("val", "test")


def label_pairs(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (image, label): ``id``, ``label`` (and ``split`` when the frame has it)."""
    cols = ["id"] + (["split"] if "split" in frame.columns else [])
    if "labels" not in frame.columns:
        return pl.DataFrame(schema={**{c: pl.String for c in cols}, "label": pl.String})
    return (frame.select(*cols, pl.col("labels").alias("label")).explode("label")
            .filter(pl.col("label").is_not_null()))


def class_coverage_frame(split: pl.DataFrame, classes: Sequence[str], eval_splits: Sequence[str]) -> pl.DataFrame:
    """One row per (eval split, label) over the full label set, with ``count`` = images that carry it."""
    grid = pl.DataFrame([(s, c) for s in eval_splits for c in classes],
                        schema={"split": pl.String, "label": pl.String}, orient="row")
    if "labels" not in split.columns or split.height == 0:
        return grid.with_columns(pl.lit(0, dtype=pl.Int64).alias("count"))
    counts = (
        label_pairs(split.filter(pl.col("split").is_in(list(eval_splits))))
        .group_by(["split", "label"]).agg(pl.col("id").n_unique().alias("count"))
        .with_columns(pl.col("split").cast(pl.String), pl.col("label").cast(pl.String))
    )
    return grid.join(counts, on=["split", "label"], how="left").with_columns(pl.col("count").fill_null(0).cast(pl.Int64))


def frames(manifest: pl.DataFrame, split: pl.DataFrame | None, classes: Sequence[str],
           eval_splits: Sequence[str] = EVAL_SPLITS) -> dict[str, "object"]:
    """Suite name -> the pandas frame it validates (split suites only when ``split`` is given)."""
    out = {MANIFEST_SUITE: manifest.to_pandas(), LABELS_SUITE: label_pairs(manifest).select("id", "label").to_pandas()}
    if split is not None:
        out[SPLIT_FRAME_SUITE] = split.to_pandas()
        out[COVERAGE_SUITE] = class_coverage_frame(split, classes, eval_splits).to_pandas()
    return out
