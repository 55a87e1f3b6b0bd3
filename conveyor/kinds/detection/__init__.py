"""The detection task kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.kinds.base import ReportSection, TaskKind

if TYPE_CHECKING:
    from conveyor.reporting.rundata import RunData


class DetectionKind(TaskKind):
    name = "detection"
    primary_metric = "map50"
    training_module = "conveyor.kinds.detection.model"

    def report_sections(self, run: RunData) -> list[ReportSection]:
        from conveyor.kinds.detection import report

        return report.sections(run)

    def class_count_unit(self) -> str:
        return "boxes"
