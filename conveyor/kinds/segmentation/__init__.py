"""The segmentation task kind: one class index per pixel, read from image + mask PNG pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

from conveyor.kinds.base import ReportSection, TaskKind

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import polars as pl

    from conveyor.core.spec import Spec
    from conveyor.data.records import Collection
    from conveyor.reporting.rundata import RunData


class SegmentationKind(TaskKind):
    name = "segmentation"
    primary_metric = "miou"
    training_module = "conveyor.kinds.segmentation.model"

    # ---- Spec and gates
    metrics: ClassVar[dict[str, str]] = {"miou": "higher", "boundary_iou": "higher", "iou": "higher", "fn_rate": "lower",
                                         "defect_recall": "higher", "instance_miss_rate": "lower"}
    per_class_metrics: ClassVar[frozenset[str]] = frozenset({"iou", "fn_rate", "defect_recall", "instance_miss_rate"})
    default_gate_metrics: ClassVar[tuple[str, ...]] = ("miou",)

    def check_classes(self, classes: Sequence[str]) -> list[str]:
        """Background at index 0 and at least one other class."""
        names = super().check_classes(classes)
        if len(names) < 2:
            raise ValueError("segmentation needs a background class (index 0) and at least one other class")
        return names

    # ---- Data
    source_formats: ClassVar[tuple[str, ...]] = ("folder", "manifest", "masks")
    annotation_columns: ClassVar[tuple[str, ...]] = ("mask_path", "mask_hash", "mask_classes")
    contract_suites: ClassVar[tuple[str, ...]] = (
        "segmentation_manifest", "segmentation_split_frame", "segmentation_class_coverage")
    coverage_suite: ClassVar[str] = "segmentation_class_coverage"

    def collect(self, spec: "Spec", src: "Path", fmt: str) -> "Collection":
        if fmt == "masks":
            from conveyor.kinds.segmentation import sources

            return sources.collect(spec, src)
        return super().collect(spec, src, fmt)

    def annotation_digest(self, frame: "pl.DataFrame") -> str:
        """The mask contents (``mask_hash``) by id: a changed mask is changed data."""
        from conveyor.data.digest import json_rows_digest

        return json_rows_digest(frame, ("mask_hash",))

    def class_frame(self, frame: "pl.DataFrame") -> "pl.DataFrame":
        """One row per (image, class present in its mask)."""
        from conveyor.kinds.segmentation import contracts

        return contracts.class_frame(frame)

    def contract_frames(self, manifest, split, spec):
        from conveyor.kinds.segmentation import contracts

        return contracts.contract_frames(manifest, split)
    # labels and review
    labelstudio_module = "conveyor.kinds.segmentation.labelstudio"
    label_field = "mask"
    label_columns = ("mask_hash",)
    csv_columns = ("mask",)
    feedback_trains = False
    finds_label_errors = False
    prediction_required = False
    # scoring and serving
    serving_module = "conveyor.kinds.segmentation.serving"
    onnx_outputs = ("logits",)
    batchable = True

    def report_sections(self, run: RunData) -> list[ReportSection]:
        from conveyor.kinds.segmentation import report

        return report.sections(run)
