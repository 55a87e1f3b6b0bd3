"""Safe image decoding, with cheap image statistics and perceptual hashes from the same decode.

One image is decoded once (:func:`open_image`): the declared size is checked against the
decompression-bomb limit *before* any pixel is decoded, EXIF orientation is applied, and the
colour mode is normalised to RGB on purpose. The statistics and the perceptual hash are then
computed in bulk over many decoded images (:func:`image_features`) with numpy, because per-image
numpy or imagehash calls cost more than the decode itself for small images.

Definitions (all computed on the RGB image after EXIF transpose and mode normalisation):

* ``brightness``: mean of the grey image (PIL "L", ITU-R 601-2 luma), scaled to 0..1.
* ``contrast``: standard deviation of the grey image, scaled to 0..1.
* ``saturation``: mean of the HSV saturation ``(max - min) / max`` over the RGB channels
  (0 where ``max == 0``), 0..1.
* ``hue``: the dominant hue, as a fraction of the colour wheel 0..1 (0 red, 1/3 green, 2/3 blue):
  the angle of the sum over pixels of each pixel's opponent-colour vector
  ``(r - (g + b) / 2, sqrt(3) / 2 * (g - b))``, i.e. the chroma-weighted circular mean of the HSV
  hue; 0 for grey images (whose vectors sum to nothing).
* ``sharpness``: variance of the 4-neighbour Laplacian ``[[0,1,0],[1,-4,1],[0,1,0]]`` of the
  grey image scaled to 0..1, over the interior pixels (no padding); 0 for images under 3 px.
* Images whose longer side exceeds ``STATS_MAX_SIDE`` (256 px) are first reduced by an integer
  box filter to at most 256 px (``Image.reduce``, one C call), and statistics and hash come from
  that working copy, so the cost per image stays bounded. Sharpness then describes the image at
  that scale.
* ``phash`` (or ``dhash``/``ahash``/``whash``): the same bits as ``imagehash.<fn>(copy,
  hash_size)`` of the working copy, i.e. of the image itself up to 256 px. The Lanczos resize
  that imagehash does through PIL is reproduced exactly in numpy (PIL's fixed-point
  coefficients, rounding and pass order), in bulk; ``whash`` calls imagehash per image.
  The hex string is ``str(imagehash_result)`` left-padded with zeros to whole bytes, so that
  ``conveyor.data.neardup`` can read it (identical to imagehash's string when ``hash_size`` is a
  multiple of 4).

Mode normalisation (``mode`` records the original):

* images with transparency (RGBA, LA, PA, RGBa, La, P or L/RGB with a transparency key) are
  alpha-composited on **white**;
* 16-bit images (``I;16*``) are scaled ``v * 255 / 65535``; ``I`` (32-bit int) images are taken
  as 8-bit when their values lie in 0..255, as 16-bit when in 0..65535, else min-max stretched;
  ``F`` images as 0..1 when their values lie there, as 0..255 when there, else min-max stretched;
* every other mode (1, L, P, CMYK, YCbCr, HSV, ...) goes through PIL's ``convert("RGB")``.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

STATS_MAX_SIDE = 256
"""Longer side above which statistics and hash come from a copy reduced to at most this."""

SAFE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
"""Formats PIL may open. Others (EPS through Ghostscript, PSD, TGA, ...) are refused."""

HASH_FUNCTIONS = ("phash", "dhash", "ahash", "whash")

_MAGIC: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
)

_EXIF_ORIENTATION = 0x0112
_NO_EXIF_UNLESS_CHUNK = frozenset({"PNG", "GIF", "BMP", "PPM"})  # EXIF only via an info["exif"] chunk
_GREY_WEIGHTS = np.array([19595.0, 38470.0, 7471.0], dtype=np.float32)
_PRECISION_BITS = 22  # PIL Resample.c, 8 bits per channel
_WHITE = (255, 255, 255, 255)


class DecodeError(Exception):
    """An image that cannot be accepted. ``reason`` is a quarantine reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageFeatures:
    brightness: float
    contrast: float
    saturation: float
    sharpness: float
    phash: str
    hue: float = 0.0


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image: the RGB pixels (after EXIF transpose) plus facts and features."""

    image: Image.Image
    mode: str
    format: str
    width: int
    height: int
    brightness: float
    contrast: float
    saturation: float
    sharpness: float
    phash: str


@dataclass
class OpenedImage:
    """The result of :func:`open_image`: RGB pixels and the original mode and format."""

    image: Image.Image
    mode: str
    format: str

    @property
    def width(self) -> int:
        return self.image.size[0]

    @property
    def height(self) -> int:
        return self.image.size[1]


def looks_like_image(data: bytes) -> bool:
    """Whether the bytes start with the signature of a common image format."""
    head = data[:16]
    if head.startswith(_MAGIC):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def pixel_limit(max_pixels: int) -> int:
    """The effective bomb limit: ``max_pixels``, and never above PIL's own warning limit."""
    pil = Image.MAX_IMAGE_PIXELS
    return min(max_pixels, pil) if pil else max_pixels


def open_image(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int | None = None,
    max_side: int | None = None,
    name: str = "<bytes>",
    formats: Sequence[str] | None = SAFE_FORMATS,
) -> OpenedImage:
    """Decode image bytes to RGB safely, or raise :class:`DecodeError`.

    Order of checks: empty, not an image / corrupt header, declared ``width * height`` above
    ``max_pixels`` (before any pixel is decoded), declared sides outside ``min_side``/``max_side``,
    then the full decode (truncated or corrupt data), EXIF transpose and mode normalisation.
    PIL's ``DecompressionBombError`` and ``DecompressionBombWarning`` (when warnings are turned
    into errors) are reported as ``decompression_bomb``.
    """
    if not data:
        raise DecodeError("zero_byte", f"{name}: file is empty (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data), formats=list(formats) if formats else None)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DecodeError("decompression_bomb", f"{name}: {err}") from None
    except UnidentifiedImageError:
        if looks_like_image(data):
            raise DecodeError("corrupt", f"{name}: has an image signature but its header cannot be read") from None
        raise DecodeError("not_an_image", f"{name}: not a recognised image ({_describe_head(data)})") from None
    except Exception as err:  # noqa: BLE001 - any failure of a plugin on hostile bytes
        raise DecodeError("corrupt", f"{name}: cannot read image header: {type(err).__name__}: {err}") from None

    try:
        width, height = im.size
        fmt = im.format or "unknown"
        limit = pixel_limit(max_pixels)
        if width * height > limit:
            raise DecodeError(
                "decompression_bomb",
                f"{name}: declared size {width}x{height} = {width * height:,} pixels exceeds the limit of "
                f"{limit:,} pixels (data.max_pixels); not decoded",
            )
        if max_side is not None and max(width, height) > max_side:
            raise DecodeError("too_large", f"{name}: {width}x{height} has a side above data.max_side={max_side}")
        if min_side is not None and min(width, height) < min_side:
            raise DecodeError("too_small", f"{name}: {width}x{height} has a side below data.min_side={min_side}")
        mode = im.mode
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as err:
            raise DecodeError("decompression_bomb", f"{name}: {type(err).__name__}: {err}") from None
        except ValueError as err:
            if "decompress" in str(err).lower():  # e.g. PNG text/ICC chunks over the safety limit
                raise DecodeError("decompression_bomb", f"{name}: {err}") from None
            raise DecodeError("corrupt", f"{name}: cannot decode {fmt} data: {err}") from None
        except Exception as err:  # noqa: BLE001
            raise DecodeError("corrupt", f"{name}: cannot decode {fmt} data (truncated or damaged): {err}") from None
        orientation = 1
        if "exif" in im.info or fmt not in _NO_EXIF_UNLESS_CHUNK or "Raw profile type exif" in im.info:
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not reject good pixels
                orientation = 1
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            im = ImageOps.exif_transpose(im)
        try:
            rgb = to_rgb(im)
        except DecodeError:
            raise
        except Exception as err:  # noqa: BLE001
            raise DecodeError("corrupt", f"{name}: cannot convert colour mode {mode} to RGB: {err}") from None
        return OpenedImage(rgb, mode, fmt)
    except DecodeError:
        im.close()
        raise


def _describe_head(data: bytes) -> str:
    head = data[:64]
    try:
        text = head.decode("utf-8")
        if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
            return f"starts with text {text[:24]!r}"
    except UnicodeDecodeError:
        pass
    return f"starts with bytes {head[:8].hex()}"


def to_rgb(im: Image.Image) -> Image.Image:
    """Normalise any PIL mode to RGB (see the module docstring for the rules)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_l(im), "L").convert("RGB")
    return im.convert("RGB")


def _high_depth_to_l(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16"):
        a = np.asarray(im.convert("I") if mode not in ("I;16", "I;16L", "I;16B") else im).astype(np.float64)
        return np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    a = np.asarray(im).astype(np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        a = a * (255.0 / 65535.0)
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# ---- perceptual hashes ---------------------------------------------------------------------


def _hash_grid_size(hash_fn: str, hash_size: int) -> tuple[int, int]:
    """(width, height) of the grey grid imagehash resizes to."""
    if hash_fn == "phash":
        return hash_size * 4, hash_size * 4
    if hash_fn == "dhash":
        return hash_size + 1, hash_size
    if hash_fn == "ahash":
        return hash_size, hash_size
    raise ValueError(f"no resize grid for {hash_fn!r}")


def check_hash_settings(hash_fn: str, hash_size: int) -> None:
    """Raise ValueError for settings imagehash cannot compute."""
    if hash_fn not in HASH_FUNCTIONS:
        raise ValueError(f"unknown perceptual hash {hash_fn!r}; one of {HASH_FUNCTIONS}")
    if hash_size < 2:
        raise ValueError("hash_size must be >= 2")
    if hash_fn == "whash" and hash_size & (hash_size - 1):
        raise ValueError(f"whash needs a power-of-2 hash_size, got {hash_size}")


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@lru_cache(maxsize=1024)
def _lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """PIL's fixed-point Lanczos coefficients (Resample.c, 8 bpc) as a dense (out, in) matrix."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ss = 1.0 / filterscale
    m = np.zeros((out_size, in_size), dtype=np.float64)
    one = float(1 << _PRECISION_BITS)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in ws:
            ww += w
        for x, w in enumerate(ws):
            k = w / ww if ww != 0.0 else w
            m[xx, xmin + x] = float(int(-0.5 + k * one) if k < 0 else int(0.5 + k * one))
    m.setflags(write=False)
    return m


def _fixed_point_round(acc: np.ndarray) -> np.ndarray:
    """PIL's clip8((1 << 21) + sum(pixel * coeff)) = clip(floor(. / 2**22), 0, 255), in place;
    exact in float64."""
    acc += float(1 << (_PRECISION_BITS - 1))
    acc *= 1.0 / (1 << _PRECISION_BITS)
    np.floor(acc, out=acc)
    return np.clip(acc, 0.0, 255.0, out=acc)


def _resize_passes(x: np.ndarray, width: int, height: int, order: str) -> np.ndarray:
    """Two fixed-point Lanczos passes over a float64 stack (k, h, w) of 8-bit values."""
    for axis in order:
        k, h, w = x.shape
        if axis == "h" and w != width:
            x = _fixed_point_round((x.reshape(k * h, w) @ _lanczos_matrix(w, width).T).reshape(k, h, width))
        elif axis == "v" and h != height:
            x = _fixed_point_round(np.matmul(_lanczos_matrix(h, height), x))
    return x


@lru_cache(maxsize=4096)
def _pass_order(h: int, w: int, width: int, height: int) -> str | None:
    """Which pass order reproduces PIL's Lanczos resize for this shape ("hv" or "vh"), found by
    resizing two random probe images with PIL itself; None when neither matches (then PIL is
    called per image). PIL picks the order by cost, and that rule changes between versions."""
    rng = np.random.default_rng(h * 100_003 + w)
    probes = np.stack([
        rng.integers(0, 256, (h, w), dtype=np.uint8),
        (rng.integers(0, 2, (h, w), dtype=np.uint8) * 255).astype(np.uint8),
    ])
    refs = np.stack([
        np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.LANCZOS)) for p in probes
    ]).astype(np.float64)
    for order in ("hv", "vh"):
        if np.array_equal(_resize_passes(probes.astype(np.float64), width, height, order), refs):
            return order
    return None


def lanczos_resize_grey(grey: np.ndarray, width: int, height: int) -> np.ndarray:
    """``Image.fromarray(g).resize((width, height), LANCZOS)`` for a stack ``(k, h, w)`` of grey
    uint8 images, bit-exact with PIL, as float64 (k, height, width). Exact because every partial
    sum of 8-bit pixels times 22-bit integer coefficients is an integer far below 2**53; the pass
    order PIL uses for the shape is checked once per shape (:func:`_pass_order`)."""
    k, h, w = grey.shape
    order = _pass_order(h, w, width, height)
    if order is None:
        return np.stack([
            np.asarray(Image.fromarray(g.astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS)) for g in grey
        ]).astype(np.float64)
    return _resize_passes(grey.astype(np.float64), width, height, order)


def _bits_to_hex(bits: np.ndarray) -> list[str]:
    """(k, nbits) bool → hex strings, most significant bit first, padded to whole bytes."""
    k, nbits = bits.shape
    pad = (-nbits) % 8
    if pad:
        bits = np.concatenate([np.zeros((k, pad), dtype=bool), bits], axis=1)
    packed = np.packbits(bits, axis=1)
    return [row.tobytes().hex() for row in packed]


def _hash_bits(grid: np.ndarray, hash_fn: str, hash_size: int) -> np.ndarray:
    """Hash bits from resized grey grids (k, gh, gw), as imagehash computes them."""
    k = grid.shape[0]
    if hash_fn == "phash":
        import scipy.fftpack

        # imagehash: dct(dct(pixels, axis=0), axis=1)[:n, :n]; rows beyond n of the first
        # transform never reach the low corner, so they are dropped before the second one
        rows = scipy.fftpack.dct(grid, axis=1)[:, :hash_size, :]
        low = scipy.fftpack.dct(rows, axis=2)[:, :, :hash_size].reshape(k, -1)
        med = np.median(low, axis=1)
        return low > med[:, None]
    if hash_fn == "dhash":
        return (grid[:, :, 1:] > grid[:, :, :-1]).reshape(k, -1)
    if hash_fn == "ahash":
        flat = grid.reshape(k, -1)
        return flat > flat.mean(axis=1)[:, None]
    raise ValueError(hash_fn)


def perceptual_hash(image: Image.Image, hash_fn: str = "phash", hash_size: int = 8) -> str:
    """The perceptual hash of one image, as :func:`image_features` computes it."""
    return image_features([image], hash_fn=hash_fn, hash_size=hash_size)[0].phash


# ---- bulk features -------------------------------------------------------------------------


@dataclass
class _Prepared:
    rgb: bytes  # the working copy, RGB packed
    size: tuple[int, int]  # (w, h) of the working copy
    hash_hex: str | None  # precomputed hash (whash)


def prepare_features(image: Image.Image, hash_fn: str | None = "phash", hash_size: int = 8) -> _Prepared:
    """The per-image part of :func:`image_features`: the working copy (reduced by an integer box
    filter to at most ``STATS_MAX_SIDE`` px when larger) as packed RGB bytes; whash here."""
    w, h = image.size
    work = image
    if max(w, h) > STATS_MAX_SIDE:
        work = image.reduce(math.ceil(max(w, h) / STATS_MAX_SIDE))
    hash_hex = None
    if hash_fn == "whash":
        import imagehash

        hash_hex = _bits_to_hex(np.asarray(imagehash.whash(work, hash_size=hash_size).hash).reshape(1, -1))[0]
    return _Prepared(work.tobytes(), work.size, hash_hex)


@lru_cache(maxsize=32)
def _ones_row(n: int) -> np.ndarray:
    return np.ones((1, n), dtype=np.float32)


def features_from_prepared(items: Sequence[_Prepared], hash_fn: str | None = "phash",
                           hash_size: int = 8) -> list[ImageFeatures]:
    """The bulk (numpy) part of :func:`image_features`: groups images by shape and computes
    every statistic and the hash with a few array operations per group. ``hash_fn=None`` skips
    the hash (``phash`` is then empty): the monitor's profiles need the statistics only."""
    n = len(items)
    bright = np.zeros(n)
    contrast = np.zeros(n)
    sat = np.zeros(n)
    hue = np.zeros(n)
    sharp = np.zeros(n)
    hashes: list[str | None] = [it.hash_hex for it in items]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.size, []).append(i)
    grid_size = _hash_grid_size(hash_fn, hash_size) if hash_fn not in ("whash", None) else None
    grid_parts: list[np.ndarray] = []
    grid_rows: list[int] = []
    for (w, h), idx in groups.items():
        npx = w * h
        step = max(1, (1 << 18) // max(1, npx))  # bound the temporaries (cache-sized blocks)
        for s in range(0, len(idx), step):
            block = idx[s : s + step]
            k = len(block)
            rgbf = np.frombuffer(b"".join(items[i].rgb for i in block), dtype=np.uint8).reshape(k, npx, 3)
            rgbf = rgbf.astype(np.float32)
            # PIL's RGB -> L (Convert.c: (r*19595 + g*38470 + b*7471 + 0x8000) >> 16), bit-exact:
            # every partial sum is an integer below 2**24, exact in float32
            grey = rgbf @ _GREY_WEIGHTS
            grey += 32768.0
            grey *= 1.0 / 65536.0
            np.floor(grey, out=grey)
            m1 = grey.sum(axis=1, dtype=np.float64) / npx
            m2 = np.einsum("ij,ij->i", grey, grey, dtype=np.float64) / npx
            bright[block] = m1 / 255.0
            contrast[block] = np.sqrt(np.maximum(m2 - m1 * m1, 0.0)) / 255.0
            r, g, b = rgbf[..., 0], rgbf[..., 1], rgbf[..., 2]
            # (k, 3) channel sums; a matmul with ones is ~40x faster than sum(axis=1) here
            sums = np.matmul(_ones_row(npx), rgbf)[:, 0, :].astype(np.float64)
            hx = sums[:, 0] - 0.5 * (sums[:, 1] + sums[:, 2])
            hy = (math.sqrt(3.0) / 2.0) * (sums[:, 1] - sums[:, 2])
            grey_img = np.hypot(hx, hy) < 1e-6 * npx
            hue[block] = np.where(grey_img, 0.0, np.mod(np.arctan2(hy, hx) / (2.0 * math.pi), 1.0))
            mx = np.maximum(r, g)
            np.maximum(mx, b, out=mx)
            mn = np.minimum(r, g)
            np.minimum(mn, b, out=mn)
            np.subtract(mx, mn, out=mn)
            np.maximum(mx, 1.0, out=mx)
            np.divide(mn, mx, out=mn)
            sat[block] = mn.sum(axis=1, dtype=np.float64) / npx
            g2 = grey.reshape(k, h, w)
            if h >= 3 and w >= 3:
                lap = g2[:, :-2, 1:-1] + g2[:, 2:, 1:-1]
                lap += g2[:, 1:-1, :-2]
                lap += g2[:, 1:-1, 2:]
                lap -= 4.0 * g2[:, 1:-1, 1:-1]  # integers |lap| <= 1020: exact in float32
                lap = lap.reshape(k, -1)
                nl = float(lap.shape[1])
                l1 = lap.sum(axis=1, dtype=np.float64) / (255.0 * nl)
                l2 = np.einsum("ij,ij->i", lap, lap, dtype=np.float64) / (255.0 * 255.0 * nl)
                sharp[block] = np.maximum(l2 - l1 * l1, 0.0)
            if grid_size is not None:
                grid_parts.append(lanczos_resize_grey(g2, *grid_size))
                grid_rows.extend(block)
    if grid_parts:
        grids = np.concatenate(grid_parts) if len(grid_parts) > 1 else grid_parts[0]
        for i, hx in zip(grid_rows, _bits_to_hex(_hash_bits(grids, hash_fn, hash_size))):
            hashes[i] = hx
    return [
        ImageFeatures(float(bright[i]), float(contrast[i]), float(sat[i]), float(sharp[i]), hashes[i] or "",
                      float(hue[i]))
        for i in range(n)
    ]


def image_features(images: Sequence[Image.Image], *, hash_fn: str = "phash", hash_size: int = 8) -> list[ImageFeatures]:
    """Statistics and perceptual hash of many RGB images, in bulk."""
    check_hash_settings(hash_fn, hash_size)
    return features_from_prepared([prepare_features(im, hash_fn, hash_size) for im in images], hash_fn, hash_size)


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int | None = None,
    max_side: int | None = None,
    hash_fn: str = "phash",
    hash_size: int = 8,
    name: str = "<bytes>",
) -> DecodedImage:
    """Decode one image safely and compute its features, or raise :class:`DecodeError`.

    The ``DecompressionBombWarning`` of PIL is turned into an error (and so a quarantine) here.
    For many images prefer :func:`open_image` plus :func:`image_features` (what ingest does).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        opened = open_image(data, max_pixels=max_pixels, min_side=min_side, max_side=max_side, name=name)
    f = image_features([opened.image], hash_fn=hash_fn, hash_size=hash_size)[0]
    return DecodedImage(
        opened.image, opened.mode, opened.format, opened.width, opened.height,
        f.brightness, f.contrast, f.saturation, f.sharpness, f.phash,
    )
