"""Tiny images and broken files for the ingest and curate tests (all written under tmp_path)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _prep(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def noise_array(size: tuple[int, int] = (24, 24), seed: int = 0) -> np.ndarray:
    """Smooth random texture (h, w, 3) uint8: distinct seeds give perceptually distinct images."""
    w, h = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def write_image(path: Path, size: tuple[int, int] = (24, 24), seed: int = 0, fmt: str | None = None,
                **save_kwargs) -> Path:
    """A textured RGB image; the format follows the suffix unless ``fmt`` is given."""
    path = _prep(path)
    Image.fromarray(noise_array(size, seed)).save(path, format=fmt, **save_kwargs)
    return path


def write_mode(path: Path, mode: str, size: tuple[int, int] = (20, 16)) -> Path:
    """An image in the given PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1)."""
    path = _prep(path)
    base = Image.fromarray(noise_array(size, seed=len(mode)))
    if mode == "I;16":
        arr = (np.asarray(base.convert("L")).astype(np.uint16) * 257)
        im = Image.fromarray(arr)  # uint16 -> I;16
    elif mode == "I":
        im = Image.fromarray(np.asarray(base.convert("L")).astype(np.int32) * 100)  # int32 -> I
    elif mode == "F":
        im = Image.fromarray(np.asarray(base.convert("L")).astype(np.float32) / 255.0)  # float32 -> F
    elif mode == "RGBA":
        im = base.convert("RGBA")
        a = np.asarray(im).copy()
        a[: size[1] // 2, :, 3] = 0  # top half fully transparent
        im = Image.fromarray(a, "RGBA")
    elif mode == "P":
        im = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        im = base.convert(mode)
    im.save(path)
    return path


def write_jpeg_with_orientation(path: Path, orientation: int, size: tuple[int, int] = (40, 20), seed: int = 0) -> Path:
    path = _prep(path)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(noise_array(size, seed)).save(path, format="JPEG", exif=exif, quality=95)
    return path


def write_zero_byte(path: Path) -> Path:
    path = _prep(path)
    path.write_bytes(b"")
    return path


def write_truncated_png(path: Path, size: tuple[int, int] = (48, 48), keep: float = 0.5) -> Path:
    """A valid PNG cut in the middle of its pixel data: the header reads, the decode fails."""
    path = _prep(path)
    rng = np.random.default_rng(1)
    tmp = path.with_suffix(".full.png")
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_random_bytes(path: Path, n: int = 500, seed: int = 0) -> Path:
    path = _prep(path)
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(b"\x00garbage" + data)
    return path


def write_text(path: Path, text: str = "this is not an image, just some notes\n") -> Path:
    path = _prep(path)
    path.write_text(text)
    return path


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header declares ``width x height`` (a decompression bomb when big):
    only a few bytes of compressed pixel data follow, so nothing big is ever written."""
    path = _prep(path)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def smooth_array(seed: int = 0, size: int = 64) -> np.ndarray:
    """A smooth colour field (no pixel noise): perceptual hashes of unrelated seeds lie far apart,
    while a brightened or re-encoded copy stays within a few bits."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def write_smooth(path: Path, seed: int = 0, size: int = 64, brighten: int = 0, **save_kwargs) -> Path:
    path = _prep(path)
    arr = np.clip(smooth_array(seed, size).astype(np.int16) + brighten, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, **save_kwargs)
    return path
