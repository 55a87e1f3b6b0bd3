"""The task-kind plug-in: everything that depends on what a model predicts.

A task kind (classification, detection, segmentation, multi-label ...) is a :class:`TaskKind`
subclass registered by name (see :mod:`conveyor.kinds`). The generic stages (ingest, curate,
split, contracts, train, evaluate, review, serving, monitoring, reports) ask the kind for what
differs and never branch on the task name themselves.

Heavy parts load lazily: :attr:`TaskKind.training` imports the torch module of the kind
(models, data sets, losses, metrics, ONNX export) only when training or evaluation asks for it,
so serving and the data plane stay free of torch.

The hooks, by concern (each kind overrides what it needs; the defaults suit single-label
image classification where one exists):

Spec and gates
    ``metrics`` (name -> "higher"/"lower"), ``per_class_metrics``, ``default_gate_metrics``,
    :meth:`validate_spec`, :meth:`check_classes`.
Data
    ``source_formats``, :meth:`collect`, ``annotation_columns``, :meth:`annotation_digest`,
    :meth:`class_frame`, ``contract_suites``, :meth:`contract_frames`, :meth:`profile_columns`.
Labels and review
    ``label_field``, :meth:`label_digest`, :meth:`labelstudio_config`,
    :meth:`labelstudio_prediction`, :meth:`labelstudio_parse`, :meth:`label_key`, ``csv_columns``,
    :meth:`csv_parse`, :meth:`machine_label`, ``feedback_trains``, ``finds_label_errors``.
Scoring and serving (numpy only)
    ``onnx_outputs``, ``batchable``, :meth:`decode_prediction`, :meth:`score`,
    :meth:`prediction_classes`.
Reports
    :meth:`report_sections` returning :class:`ReportSection` records.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from conveyor.reporting.rundata import RunData


@dataclass(frozen=True)
class ReportSection:
    """One section of the gate report that a task kind contributes.

    The notebook shows ``title`` as a heading, then ``markdown`` (if any), ``table`` (a pandas
    DataFrame, if any) and ``figure`` (a matplotlib Figure, if any), in that order. An empty ``title``
    continues the section before it (no heading).
    """

    title: str
    markdown: str | None = None
    table: Any = None
    figure: Any = None


class TaskKind:
    """Base class of a task kind. Subclasses set the class attributes and override the hooks."""

    #: The name used in specs (``task: <name>``), checkpoints and the registry.
    name: ClassVar[str]
    #: The metric of :meth:`training`'s ``epoch_metrics`` that picks the best epoch (higher is better).
    primary_metric: ClassVar[str]
    #: The module with the torch side of the kind (see :mod:`conveyor.kinds.classification.model`).
    training_module: ClassVar[str]

    @cached_property
    def training(self) -> ModuleType:
        """The torch adapter module: model building, data, losses, metrics and ONNX export."""
        return importlib.import_module(self.training_module)

    def __repr__(self) -> str:
        return f"<task kind {self.name}>"

    # ---- Reports ------------------------------------------------------------------------------------
    def report_sections(self, run: "RunData") -> list[ReportSection]:
        """The kind's sections of the gate report (its quality figures and examples), drawn from ``run``
        (:class:`conveyor.reporting.rundata.RunData`). A kind without its own sections says so."""
        return [ReportSection("Model quality", markdown=f"No figures for task kind {self.name!r}.")]

    def class_count_unit(self) -> str:
        """What one class occurrence in the split's per-class counts is (images; detection: boxes)."""
        return "images"
