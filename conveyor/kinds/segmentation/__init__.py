"""The segmentation task kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.kinds.base import ReportSection, TaskKind

if TYPE_CHECKING:
    from conveyor.reporting.rundata import RunData


class SegmentationKind(TaskKind):
    name = "segmentation"
    primary_metric = "miou"
    training_module = "conveyor.kinds.segmentation.model"

    def report_sections(self, run: RunData) -> list[ReportSection]:
        from conveyor.kinds.segmentation import report

        return report.sections(run)
