"""The classification task kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.kinds.base import ReportSection, TaskKind

if TYPE_CHECKING:
    from conveyor.reporting.rundata import RunData


class ClassificationKind(TaskKind):
    name = "classification"
    primary_metric = "f1"
    training_module = "conveyor.kinds.classification.model"

    def report_sections(self, run: RunData) -> list[ReportSection]:
        from conveyor.kinds.classification import report

        return report.sections(run)
