"""The classification task kind."""

from __future__ import annotations

from conveyor.kinds.base import TaskKind


class ClassificationKind(TaskKind):
    name = "classification"
    primary_metric = "f1"
    training_module = "conveyor.kinds.classification.model"
