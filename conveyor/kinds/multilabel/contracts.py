"""Data contracts of multi-label datasets: the frames the ``multilabel_*`` suites validate.

The image-level ``label`` is null (the ``labels`` list carries the label set), so the ``manifest``
and ``split_frame`` suites are replaced by ``multilabel_manifest`` and ``multilabel_split_frame``
(the same checks less the label ones, plus ``labels`` present). ``multilabel_labels`` checks every
(image, label) pair: a known name, once per image. ``multilabel_class_coverage`` counts, per
(eval split, label), the images that carry the label (the kind's ``class_frame``, counted by
:func:`conveyor.data.contracts.class_coverage_frame`): each must reach ``split.min_per_class_eval``.
The leakage suites (groups, exact and near duplicates across splits) and ``split_sizes`` run as
for classification: they read ``group`` / ``content_hash`` / ``phash`` / ``split`` only.
"""

from __future__ import annotations

import polars as pl

MANIFEST_SUITE = "multilabel_manifest"
SPLIT_FRAME_SUITE = "multilabel_split_frame"
LABELS_SUITE = "multilabel_labels"
COVERAGE_SUITE = "multilabel_class_coverage"
SUITES = (MANIFEST_SUITE, LABELS_SUITE, SPLIT_FRAME_SUITE, COVERAGE_SUITE)


def label_pairs(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (image, label): ``id``, ``label`` (and ``split`` when the frame has it)."""
    cols = ["id"] + (["split"] if "split" in frame.columns else [])
    if "labels" not in frame.columns:
        return pl.DataFrame(schema={**{c: pl.String for c in cols}, "label": pl.String})
    return (frame.select(*cols, pl.col("labels").alias("label")).explode("label")
            .filter(pl.col("label").is_not_null()))


def contract_frames(manifest: pl.DataFrame, split: pl.DataFrame | None) -> dict[str, pl.DataFrame]:
    """The manifest suites (``split`` None: the manifest rows, then one row per (image, label)) or the
    split suite (the split rows). Class coverage runs on the kind's ``class_frame``."""
    if split is None:
        return {MANIFEST_SUITE: manifest, LABELS_SUITE: label_pairs(manifest).select("id", "label")}
    return {SPLIT_FRAME_SUITE: split}
