"""Tiny ONNX models with conveyor's metadata, built in a second without training (tests only)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

SIDE = 16
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def export_model(module: nn.Module, path: Path, task: str, classes: list[str], outputs: list[str], axes: dict) -> Path:
    from conveyor import kinds
    from conveyor.model.evaluate import export_onnx_model

    meta = {"classes": classes, "image_size": SIDE, "model_name": path.stem, "mean": MEAN, "std": STD}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the fixed outputs are constants on purpose
        return export_onnx_model(module, path, torch.rand(1, 3, SIDE, SIDE), input_names=["images"],
                                 output_names=outputs, dynamic_axes=axes, metadata=kinds.get(task).training.onnx_metadata(meta))


def classifier(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """Normalisation (the deployed graph's DeployModel), global mean colour, a linear layer."""
    from conveyor.kinds.classification.model import DeployModel

    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return DeployModel(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin), MEAN, STD)


class FixedDetector(nn.Module):
    """Three fixed detections in the S x S frame (the third below the score threshold)."""

    def forward(self, images):
        zero = images.sum() * 0.0
        boxes = torch.tensor([[2.0, 4.0, 10.0, 12.0], [0.0, 0.0, 8.0, 8.0], [1.0, 1.0, 3.0, 3.0]]) + zero
        scores = torch.tensor([0.7, 0.9, 0.2]) + zero
        labels = torch.tensor([1, 0, 1], dtype=torch.int64) + zero.long()
        return boxes, scores, labels


class RedSegmenter(nn.Module):
    """Class 1 where the red channel is above one half."""

    def forward(self, images):
        r = images[:, 0:1]
        return torch.cat([(0.5 - r) * 10.0, (r - 0.5) * 10.0], dim=1)
