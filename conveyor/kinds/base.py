"""The task-kind plug-in: everything that depends on what a model predicts.

A task kind (classification, detection, segmentation, multi-label ...) is a :class:`TaskKind`
subclass registered by name. The generic stages (ingest, curate, split, contracts, train,
evaluate, review, serving, monitoring, reports) ask the kind for what differs and never branch
on the task name themselves.

Heavy parts load lazily: :attr:`TaskKind.training` imports the torch module of the kind
(models, data sets, losses, metrics, ONNX export) only when training or evaluation asks for it,
so serving and the data plane stay free of torch.
"""

from __future__ import annotations

import importlib
from functools import cached_property
from types import ModuleType
from typing import ClassVar


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
