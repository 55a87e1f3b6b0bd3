"""Segmentation sources (``data.format: masks``): image + mask PNG pairs.

Images live under ``data.source`` (any folder layout), masks under ``data.annotations`` at the
same relative path with the suffix ``.png`` (``a/b/img-1.jpg`` -> ``<masks>/a/b/img-1.png``).
A mask holds one class index per pixel (index into ``data.classes``) and ``data.ignore_index``
for unlabelled pixels. Camera, scene and capture time come from a sidecar table
(``metadata.csv`` / ``.parquet`` / ``.jsonl`` at the top of ``data.source``, column ``path``
relative to it), as for folder sources.

Modes: ``L`` (8-bit grey) and ``P`` (palette) masks are read as indices (a palette mask's index,
not its colour, is the class); anything else (RGB, RGBA, LA, 16-bit, 1-bit, float) is rejected as
``mask_bad_mode`` since a colour or wide value has no unambiguous class index.

Images go through ingest's safe decode like any other; :func:`check_pairs` then checks each
accepted image's mask and moves failing pairs to the quarantine. The manifest gains
``mask_path`` (absolute), ``mask_hash`` (sha256 of the mask bytes, part of the dataset version)
and ``mask_classes`` (the classes present in the mask, for the class-coverage contract). The
image-level ``label`` is null: it has no meaning for segmentation.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from conveyor.core.io import sha256_bytes

REASONS: dict[str, str] = {
    "missing_mask": "no mask file for the image under data.annotations (same relative path, .png)",
    "unreadable_mask": "the mask file cannot be read or decoded as a PNG",
    "mask_size_mismatch": "the mask's width x height differs from the image's",
    "mask_bad_values": "mask values outside 0..len(classes)-1 other than data.ignore_index",
    "mask_bad_mode": "the mask is not a single-channel 8-bit index image (L or P), e.g. RGB",
}
"""Quarantine reason codes of mask pairs."""

MASK_SUFFIX = ".png"
MAX_MASK_BYTES = 64 * 2**20


def masks_root(spec) -> Path:
    if not spec.data.annotations:
        raise ValueError("data.format 'masks' needs data.annotations: the folder that holds the masks")
    return spec.resolve_path(spec.data.annotations)


def mask_path_for(rel_path: str, root: str | Path) -> str:
    """The mask path of an image at ``rel_path`` (relative to the images root)."""
    rel = Path(rel_path)
    return os.path.join(str(root), rel.with_suffix(MASK_SUFFIX).as_posix())


def collect(spec, src: Path):
    """Every file below ``src`` as an item (no labels), with sidecar metadata; the masks folder,
    dot files and the sidecar itself are skipped. Returns ingest's ``_Collected``."""
    from conveyor.data import ingest as ing

    if not spec.data.classes:
        raise ing.IngestError("data.format 'masks' needs data.classes: the class of each mask index, in order")
    try:
        mroot = os.path.realpath(masks_root(spec))
    except ValueError as err:
        raise ing.IngestError(str(err)) from None
    if not os.path.isdir(mroot):
        raise ing.IngestError(f"data.annotations {mroot} is not a folder (the masks of data.format: masks)")
    root = os.path.realpath(src)
    items: list[ing._Item] = []
    bad: list[ing._Quarantined] = []

    def walk(dir_real: str, rel_dir: str) -> None:
        try:
            entries = sorted(os.scandir(dir_real), key=lambda e: e.name)
        except OSError as err:
            it = ing._Item(rel_dir, rel_dir, None)
            bad.append(ing._q(it, "unreadable", "path", f"folder cannot be listed: {err.strerror or err}"))
            return
        for e in entries:
            if e.name.startswith(".") or (not rel_dir and e.name in ing.SIDECAR_NAMES):
                continue
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            full = os.path.join(dir_real, e.name)
            real = os.path.realpath(full)
            if real == mroot:
                continue
            it = ing._Item(rel, rel, None, norm_path=full)
            if not ing._inside(real, root):
                bad.append(ing._q(it, "path_escapes_root", "path", f"resolves to {real}, outside the data root {root}"))
            elif os.path.isdir(real):
                if not e.is_symlink():
                    walk(real, rel)
            elif not os.path.exists(real):
                bad.append(ing._q(it, "missing_file", "path", f"broken symlink to {real}"))
            else:
                it.real_path = real
                items.append(it)

    walk(root, "")
    if not items and not bad:
        raise ing.IngestError(f"data.source {root} holds no images")
    meta_files: list[Path] = []
    sidecar = next((Path(root) / n for n in ing.SIDECAR_NAMES if (Path(root) / n).is_file()), None)
    if sidecar is not None:
        meta_files.append(sidecar)
        df = ing._read_table(sidecar, "metadata sidecar")
        if "path" not in df.columns:
            raise ing.IngestError(f"metadata sidecar {sidecar} lacks the column 'path' (relative to {root})")
        paths = ing._column(df, "path")
        cols = [ing._column(df, c) for c in ing.META_COLUMNS]
        meta: dict[str, tuple[Any, Any, Any]] = {}
        for i, p in enumerate(paths):
            if p is not None:
                meta.setdefault(Path(os.path.normpath(str(p))).as_posix(), (cols[0][i], cols[1][i], cols[2][i]))
        for it in items:
            m = meta.get(it.rel_path or "")
            if m is not None:
                it.camera, it.scene, it.captured_at = ing._text(m[0]), ing._text(m[1]), m[2]
    # The masks are part of the source's content (source_fingerprint hashes meta_files).
    for it in items:
        mp = Path(mask_path_for(it.rel_path or "", mroot))
        if mp.is_file():
            meta_files.append(mp)
    received = len(items) + len(bad)
    ok: list[ing._Item] = []
    for it in items:
        raw = it.captured_at
        try:
            it.captured_at = ing.parse_timestamp(raw)
        except ValueError as err:
            bad.append(ing._q(it, "bad_timestamp", "captured_at", f"captured_at {raw!r} cannot be parsed: {err}"))
            continue
        ok.append(it)
    return ing._Collected(root, "masks", ok, bad, received, meta_files)


@dataclass(frozen=True)
class MaskInfo:
    mask_path: str
    mask_hash: str
    mask_classes: list[str]


class MaskError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def check_mask(mask_path: str, width: int, height: int, classes: list[str], ignore_index: int,
               mask_root: str | None = None) -> MaskInfo:
    """Read and check one mask against its image's size and the class list; raises MaskError."""
    if mask_root is not None:
        real = os.path.realpath(mask_path)
        if not (real == mask_root or real.startswith(mask_root.rstrip(os.sep) + os.sep)):
            raise MaskError("unreadable_mask", f"mask {mask_path} resolves to {real}, outside data.annotations {mask_root}")
    if not os.path.isfile(mask_path):
        raise MaskError("missing_mask", f"no mask file {mask_path}")
    try:
        size = os.path.getsize(mask_path)
        if size == 0 or size > MAX_MASK_BYTES:
            raise MaskError("unreadable_mask", f"mask {mask_path} is {size} bytes")
        with open(mask_path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise MaskError("unreadable_mask", f"cannot read mask {mask_path}: {err.strerror or err}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise MaskError("unreadable_mask", f"mask {mask_path} is {im.format}, not a PNG")
            mode, msize = im.mode, im.size
            if mode not in ("L", "P"):
                raise MaskError("mask_bad_mode", f"mask {mask_path} has mode {mode}; masks must be L or P (one class index per pixel)")
            if msize != (width, height):
                raise MaskError("mask_size_mismatch",
                                f"mask {mask_path} is {msize[0]}x{msize[1]}, the image is {width}x{height}")
            arr = np.asarray(im, dtype=np.uint8)  # P: the palette indices
    except MaskError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise MaskError("unreadable_mask", f"mask {mask_path} cannot be decoded: {type(err).__name__}: {err}") from None
    counts = np.bincount(arr.reshape(-1), minlength=256)
    present = np.flatnonzero(counts)
    k = len(classes)
    wrong = [int(v) for v in present if v >= k and v != ignore_index]
    if wrong:
        raise MaskError("mask_bad_values",
                        f"mask {mask_path} has values {wrong[:10]} outside 0..{k - 1} (data.ignore_index is {ignore_index})")
    return MaskInfo(mask_path, sha256_bytes(data), [classes[int(v)] for v in present if v < k])


def check_pairs(spec, col, accepted: list[tuple], features: list[Any]):
    """Check the mask of every accepted image. Returns (accepted, features, quarantined, info by id)
    with failing pairs moved from the first two to the quarantine."""
    from conveyor.data import ingest as ing

    mroot = os.path.realpath(masks_root(spec))
    classes = list(spec.data.classes or [])
    keep, keep_f, bad, info = [], [], [], {}
    for a, f in zip(accepted, features):
        it = a[0]
        mp = mask_path_for(it.rel_path or "", mroot)
        try:
            mi = check_mask(mp, int(a[5]), int(a[6]), classes, int(spec.data.ignore_index), mroot)
        except MaskError as err:
            bad.append(ing._q(it, err.reason, "mask_path", err.detail))
            continue
        keep.append(a)
        keep_f.append(f)
        info[it.rel_path] = mi
    return keep, keep_f, bad, info


def with_mask_columns(manifest: pl.DataFrame, info: dict[str, MaskInfo]) -> pl.DataFrame:
    """The manifest with ``mask_path``, ``mask_hash`` and ``mask_classes`` (row order kept)."""
    ids = manifest.get_column("id").to_list()
    return manifest.with_columns(
        pl.Series("mask_path", [info[i].mask_path for i in ids], dtype=pl.String),
        pl.Series("mask_hash", [info[i].mask_hash for i in ids], dtype=pl.String),
        pl.Series("mask_classes", [info[i].mask_classes for i in ids], dtype=pl.List(pl.String)),
    )


def class_presence_frame(split: pl.DataFrame) -> pl.DataFrame:
    """One row per (image, class present in its mask) with ``split`` and ``label`` = the class,
    the frame the class-coverage contract counts for segmentation."""
    return (
        split.select("id", "split", pl.col("mask_classes").alias("label"))
        .explode("label")
        .filter(pl.col("label").is_not_null())
    )
