"""The detection task kind."""

from __future__ import annotations

from conveyor.kinds.base import TaskKind


class DetectionKind(TaskKind):
    name = "detection"
    primary_metric = "map50"
    training_module = "conveyor.kinds.detection.model"

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
