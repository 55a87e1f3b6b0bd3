"""The detection task kind."""

from __future__ import annotations

from conveyor.kinds.base import TaskKind


class DetectionKind(TaskKind):
    name = "detection"
    primary_metric = "map50"
    training_module = "conveyor.kinds.detection.model"
