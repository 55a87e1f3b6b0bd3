"""The classification task kind: one label per image, read from class folders or a manifest.

Every hook keeps the defaults of :class:`~conveyor.kinds.base.TaskKind`, which describe
single-label image classification (metrics, sources, contracts, class occurrences), except the
sliced-gate hook, whose default computes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from conveyor.kinds.base import ReportSection, TaskKind

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from conveyor.reporting.rundata import RunData


class ClassificationKind(TaskKind):
    name = "classification"
    primary_metric = "f1"
    training_module = "conveyor.kinds.classification.model"

    # labels and review
    labelstudio_module = "conveyor.kinds.classification.labelstudio"
    label_field = "label"
    label_columns = ("label",)
    csv_columns = ()
    feedback_trains = True
    finds_label_errors = True
    prediction_required = True
    # scoring and serving
    serving_module = "conveyor.kinds.classification.serving"
    onnx_outputs = ("logits",)
    batchable = True

    def report_sections(self, run: RunData) -> list[ReportSection]:
        from conveyor.kinds.classification import report

        return report.sections(run)

    # slices: every metric decomposes into the per-image records (predicted, label, confidence, correct)
    sliceable_metrics = frozenset({"accuracy", "f1", "precision", "recall", "ece"})

    def slice_metrics(self, predictions: pl.DataFrame, classes: Sequence[str]) -> dict[str, float]:
        return self.training.record_metrics(predictions, classes)
