"""The segmentation task kind."""

from __future__ import annotations

from conveyor.kinds.base import TaskKind


class SegmentationKind(TaskKind):
    name = "segmentation"
    primary_metric = "miou"
    training_module = "conveyor.kinds.segmentation.model"

    # labels and review
    labelstudio_module = "conveyor.kinds.segmentation.labelstudio"
    label_field = "mask"
    label_columns = ("mask_hash",)
    csv_columns = ("mask",)
    feedback_trains = False
    finds_label_errors = False
    prediction_required = False
    # scoring and serving
    serving_module = "conveyor.kinds.segmentation.serving"
    onnx_outputs = ("logits",)
    batchable = True
