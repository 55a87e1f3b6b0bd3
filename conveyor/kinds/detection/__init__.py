"""The detection task kind: boxes per image, read from COCO JSON or YOLO labels (or plain
folder / manifest sources, images without boxes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from conveyor.kinds.base import ReportSection, TaskKind

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import polars as pl

    from conveyor.core.spec import Spec
    from conveyor.data.records import Collection
    from conveyor.reporting.rundata import RunData


class DetectionKind(TaskKind):
    name = "detection"
    primary_metric = "map50"
    training_module = "conveyor.kinds.detection.model"

    # ---- Spec and gates
    metrics: ClassVar[dict[str, str]] = {"map50": "higher", "map": "higher", "precision": "higher", "recall": "higher",
                                         "dece": "lower"}
    per_class_metrics: ClassVar[frozenset[str]] = frozenset({"precision", "recall"})
    default_gate_metrics: ClassVar[tuple[str, ...]] = ("map50",)

    # ---- Data
    source_formats: ClassVar[tuple[str, ...]] = ("folder", "manifest", "coco", "yolo")
    annotation_columns: ClassVar[tuple[str, ...]] = ("boxes",)
    contract_suites: ClassVar[tuple[str, ...]] = (
        "detection_manifest", "detection_boxes", "detection_split_frame", "detection_class_coverage")
    coverage_suite: ClassVar[str] = "detection_class_coverage"

    def collect(self, spec: "Spec", src: "Path", fmt: str) -> "Collection":
        if fmt in ("coco", "yolo"):
            from conveyor.kinds.detection import sources

            return sources.collect(spec, src, fmt)
        return super().collect(spec, src, fmt)

    def annotation_digest(self, frame: "pl.DataFrame") -> str:
        from conveyor.data.digest import json_rows_digest

        return json_rows_digest(frame, ("boxes",))

    def class_frame(self, frame: "pl.DataFrame") -> "pl.DataFrame":
        """One row per box, ``cls`` its category."""
        from conveyor.kinds.detection import contracts

        return contracts.class_frame(frame)

    def contract_frames(self, manifest, split, spec):
        from conveyor.kinds.detection import contracts

        return contracts.contract_frames(manifest, split)

    def profile_columns(self, manifest: "pl.DataFrame") -> "list[pl.Expr]":
        """``objects`` (boxes per image) and ``object_size`` (mean box side over the image side)."""
        import polars as pl

        if "boxes" not in manifest.columns or "width" not in manifest.columns:
            return []
        area = (pl.col("width") * pl.col("height")).cast(pl.Float64)
        box_side = ((pl.element().struct.field("x2") - pl.element().struct.field("x1"))
                    * (pl.element().struct.field("y2") - pl.element().struct.field("y1"))).sqrt()
        return [pl.col("boxes").list.len().cast(pl.Float64).alias("objects"),
                (pl.col("boxes").list.eval(box_side).list.mean() / area.sqrt()).alias("object_size")]

    # labels and review
    labelstudio_module = "conveyor.kinds.detection.labelstudio"
    label_field = "boxes"
    label_columns = ("boxes",)
    csv_columns = ("boxes",)
    feedback_trains = False
    finds_label_errors = False
    prediction_required = False
    # scoring and serving
    serving_module = "conveyor.kinds.detection.serving"
    onnx_outputs = ("boxes", "scores", "labels")
    batchable = False

    def report_sections(self, run: RunData) -> list[ReportSection]:
        from conveyor.kinds.detection import report

        return report.sections(run)

    def class_count_unit(self) -> str:
        return "boxes"
