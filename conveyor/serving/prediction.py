"""The record a task kind decodes one image's ONNX outputs into (numpy-free, torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: What a prediction without any object or foreground names (detection, segmentation).
BACKGROUND = "background"


@dataclass(frozen=True)
class Prediction:
    """The service's answer for one image and the prediction log's fields.

    ``payload`` is the task kind's part of the JSON answer; ``features`` holds the prediction log's
    ``predicted`` / ``confidence`` / ``predicted_objects`` / ``predicted_object_size`` /
    ``predicted_foreground`` / ``predicted_count`` values the kind reports.
    """

    payload: dict[str, Any]
    features: dict[str, Any]
