"""The segmentation task kind."""

from __future__ import annotations

from conveyor.kinds.base import TaskKind


class SegmentationKind(TaskKind):
    name = "segmentation"
    primary_metric = "miou"
    training_module = "conveyor.kinds.segmentation.model"
