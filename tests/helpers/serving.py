"""Registering tiny models and building request bodies for the serving tests."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from conveyor.core.io import sha256_file
from conveyor.core.workspace import Workspace
from conveyor.release.registry import Registry


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
