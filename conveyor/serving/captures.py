"""Images the inference service keeps (``deploy.capture``), content-addressed, for the review pool."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from conveyor.core.workspace import Workspace

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


def captures_dir(ws: Workspace, name: str) -> Path:
    """Images the service kept, content-addressed: ``<sha256[:2]>/<sha256>.<ext>``."""
    return ws.root / "monitoring" / name / "captures"


def should_capture(request_id: str, share: float) -> bool:
    """Whether to keep a request's image: a stable draw from the request id (same id, same answer)."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def capture_image(root: Path, data: bytes, fmt: str | None) -> str:
    """Keep the request's bytes once per content; returns the path relative to ``root``."""
    digest = hashlib.sha256(data).hexdigest()
    rel = f"{digest[:2]}/{digest}{_EXTENSIONS.get((fmt or '').upper(), '.img')}"
    path = root / rel
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return rel
