"""Requests to the inference service: headers, the uploaded bytes, safe decode and model inputs.

Preprocessing is the training decode: safe decode with the spec's pixel limit
(:func:`conveyor.data.imageio.open_image`: EXIF transpose, ``to_rgb``), bilinear resize to the
model's side, float32 in [0, 1] (:func:`model_input`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from conveyor.data.imageio import features_from_prepared, open_image, prepare_features

MAX_BODY_BYTES = 20 * 2**20
REQUEST_ID_HEADER = "X-Request-Id"
CAMERA_HEADER = "X-Camera"
DEFAULT_STICKY_HEADER = "X-Request-Key"
MAX_HEADER_CHARS = 200
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]*")


class RequestError(Exception):
    """A request the service answers with an error: ``status`` is the HTTP status, ``reason`` a code."""

    def __init__(self, status: int, reason: str, detail: str, size: int | None = None):
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail, self.size = status, reason, detail, size
        self.request_id: str | None = None  # set once the request has an id

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "reason": self.reason, "request_id": self.request_id}


@dataclass
class RequestContext:
    request_id: str
    camera: str | None
    headers: Mapping[str, str]
    received_at: datetime
    t0: float
    content_type: str | None = None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header value, case-insensitively (starlette's Headers or a plain dict)."""
    value = headers.get(name)
    if value is None:
        low = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == low), None)
    return value


def checked_header(name: str, value: str, pattern: re.Pattern | None = None) -> str:
    value = value.strip()
    if not value or len(value) > MAX_HEADER_CHARS or not value.isprintable() or (
            pattern is not None and not pattern.fullmatch(value)):
        raise RequestError(400, "bad_header", f"{name} must be 1 to {MAX_HEADER_CHARS} printable characters"
                           + (" (letters, digits and ._:@/+=-)" if pattern is not None else "")
                           + f"; got {value[:40]!r}")
    return value


def extract_upload(body: bytes, content_type: str | None, field_name: str = "file") -> bytes:
    """The image bytes of a request: the raw body, or the ``file`` field of a multipart form."""
    if not content_type or not content_type.lower().startswith("multipart/"):
        return body
    params = Message()
    params["content-type"] = content_type
    boundary = params.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RequestError(400, "bad_multipart", "multipart body without a boundary parameter", len(body))
    parts = body.split(b"--" + boundary.encode("latin-1"))
    for part in parts[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = Message()
        for line in head.decode("latin-1").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon and key.strip().lower() == "content-disposition":
                disposition["content-disposition"] = value.strip()
        if disposition.get_param("name", header="content-disposition") == field_name:
            return content[:-2] if content.endswith(b"\r\n") else content
    raise RequestError(400, "missing_file", f"multipart body has no {field_name!r} field", len(body))


# ---- preprocessing ----------------------------------------------------------------------------
class DecodedRequest:
    """One request's image, decoded once: RGB pixels, image statistics, model inputs per side."""

    def __init__(self, image, stats: dict[str, float], fmt: str | None = None):
        self.image = image
        self.format = fmt
        self.capture: str | None = None  # where the service kept the image (relative to the captures folder)
        self.width, self.height = image.size
        self.stats = stats
        self._inputs: dict[int, np.ndarray] = {}

    def input(self, size: int) -> np.ndarray:
        x = self._inputs.get(size)
        if x is None:
            x = self._inputs[size] = model_input(self.image, size)
        return x


def model_input(image, size: int) -> np.ndarray:
    """float32 (1, 3, S, S) in [0, 1], exactly what training decodes for the same image."""
    from PIL import Image

    if image.size != (size, size):
        image = image.resize((size, size), resample=Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(arr.astype(np.float32) / np.float32(255.0))


def image_stats(image) -> dict[str, float]:
    f = features_from_prepared([prepare_features(image, None)], None)[0]
    return {"brightness": f.brightness, "contrast": f.contrast, "saturation": f.saturation, "hue": f.hue,
            "sharpness": f.sharpness}


def decode_request(data: bytes, max_pixels: int, name: str = "<request>") -> DecodedRequest:
    """Decode request bytes safely (raises :class:`conveyor.data.imageio.DecodeError`)."""
    opened = open_image(data, max_pixels=max_pixels, name=name)
    return DecodedRequest(opened.image, image_stats(opened.image), opened.format)


def decode_file(path: str | Path, max_pixels: int) -> DecodedRequest:
    """An image file decoded as serving and training decode it (no statistics: ingest has them)."""
    opened = open_image(Path(path).read_bytes(), max_pixels=max_pixels, name=str(path))
    return DecodedRequest(opened.image, {}, opened.format)
