"""The serving tests' tiny ONNX models, registering them, and request bodies."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from conveyor.core.io import sha256_file
from conveyor.core.workspace import Workspace
from conveyor.release.registry import Registry

from helpers.tinymodels import FixedDetector, RedSegmenter, classifier, export_model


def register(ws: Workspace, name: str, model: Path, tag: str) -> int:
    metrics = model.parent / f"metrics-{tag}.json"
    metrics.write_text("{}")
    v = Registry(ws.registry).register(name, files={"model.onnx": model, "metrics.json": metrics},
                                       model_hash=f"{sha256_file(model)}-{tag}", metrics={}, lineage={}, gate={})
    return v.version


def set_champion(ws: Workspace, name: str, version: int) -> None:
    Registry(ws.registry).set_alias(name, version, reason="test")


def png(rgb=(200, 30, 30), size=(24, 20), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, rgb).save(buf, "PNG")
    return buf.getvalue()


def tiny_models(root: Path, classes: list[str]) -> dict[str, Path]:
    """The serving tests' ONNX models, written into ``root``; ``broken`` is a file that is not a graph."""
    cls_out, cls_axes = ["logits"], {"images": {0: "batch"}, "logits": {0: "batch"}}
    out = {
        # always red / always green, whatever the image
        "red": export_model(classifier(torch.zeros(3, 3), torch.tensor([4.0, -4.0, -4.0])), root / "red.onnx",
                            "classification", classes, cls_out, cls_axes),
        "green": export_model(classifier(torch.zeros(3, 3), torch.tensor([-4.0, 4.0, -4.0])), root / "green.onnx",
                              "classification", classes, cls_out, cls_axes),
        # 1/3 for every class: a challenger whose confidence collapses
        "uniform": export_model(classifier(torch.zeros(3, 3), torch.zeros(3)), root / "uniform.onnx",
                                "classification", classes, cls_out, cls_axes),
        # the image's dominant colour: proves the service feeds real, normalised pixels
        "colour": export_model(classifier(torch.eye(3) * 3.0, torch.zeros(3)), root / "colour.onnx",
                               "classification", classes, cls_out, cls_axes),
        "det": export_model(FixedDetector(), root / "det.onnx", "detection", ["red", "green"],
                            ["boxes", "scores", "labels"],
                            {"boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"}}),
        "seg": export_model(RedSegmenter(), root / "seg.onnx", "segmentation", ["background", "defect"], cls_out,
                            cls_axes),
    }
    broken = root / "broken.onnx"
    broken.write_bytes(b"this is not an onnx graph")
    out["broken"] = broken
    return out
