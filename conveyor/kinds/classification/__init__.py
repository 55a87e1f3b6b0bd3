"""The classification task kind: one label per image, read from class folders or a manifest.

Every hook keeps the defaults of :class:`~conveyor.kinds.base.TaskKind`, which describe
single-label image classification (metrics, sources, contracts, class occurrences)."""

from __future__ import annotations

from conveyor.kinds.base import TaskKind


class ClassificationKind(TaskKind):
    name = "classification"
    primary_metric = "f1"
    training_module = "conveyor.kinds.classification.model"
