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

import numpy as np
import polars as pl
from PIL import Image

from conveyor.core.io import sha256_bytes
from conveyor.data.records import Accepted, Annotated, Collection, Finisher, IngestError, Item, Quarantined
from conveyor.data.sources import SIDECAR_NAMES, check_metadata, inside, read_sidecar

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


def collect(spec, src: Path) -> Collection:
    """Every file below ``src`` as an item (no labels), with sidecar metadata; the masks folder,
    dot files and the sidecar files are skipped. The collection's finisher pairs each decoded
    image with its mask (:class:`MaskPairs`)."""
    if not src.is_dir():
        raise IngestError(f"data.source {src} is not a folder of images (data.format: masks)")
    if not spec.data.classes:
        raise IngestError("data.format 'masks' needs data.classes: the class of each mask index, in order")
    try:
        mroot = os.path.realpath(masks_root(spec))
    except ValueError as err:
        raise IngestError(str(err)) from None
    if not os.path.isdir(mroot):
        raise IngestError(f"data.annotations {mroot} is not a folder (the masks of data.format: masks)")
    root = os.path.realpath(src)
    items: list[Item] = []
    bad: list[Quarantined] = []

    def walk(dir_real: str, rel_dir: str) -> None:
        try:
            entries = sorted(os.scandir(dir_real), key=lambda e: e.name)
        except OSError as err:
            it = Item(rel_dir, rel_dir, None)
            bad.append(it.quarantine("unreadable", "path", f"folder cannot be listed: {err.strerror or err}"))
            return
        for e in entries:
            if e.name.startswith(".") or (not rel_dir and e.name in SIDECAR_NAMES):
                continue
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            full = os.path.join(dir_real, e.name)
            real = os.path.realpath(full)
            if real == mroot:
                continue
            it = Item(rel, rel, None, norm_path=full)
            if not inside(real, root):
                bad.append(it.quarantine("path_escapes_root", "path", f"resolves to {real}, outside the data root {root}"))
            elif os.path.isdir(real):
                if not e.is_symlink():
                    walk(real, rel)
            elif not os.path.exists(real):
                bad.append(it.quarantine("missing_file", "path", f"broken symlink to {real}"))
            else:
                items.append(it.replace(real_path=real))

    walk(root, "")
    if not items and not bad:
        raise IngestError(f"data.source {root} holds no images")
    meta_files: list[Path] = []
    sidecar = read_sidecar(root)
    if sidecar is not None:
        meta_files.append(sidecar.path)
        items = [sidecar.apply(it) for it in items]
    # The masks are part of the source's content (source_fingerprint hashes meta_files).
    for it in items:
        mp = Path(mask_path_for(it.rel_path or "", mroot))
        if mp.is_file():
            meta_files.append(mp)
    received = len(items) + len(bad)
    ok, more_bad = check_metadata(spec, items, labels=False)
    return Collection(root, "masks", ok, bad + more_bad, received, meta_files, finisher=MaskPairs(spec))


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


class MaskPairs(Finisher):
    """Checks the mask of every decoded image (a failing pair goes to the quarantine) and adds
    ``mask_path``, ``mask_hash`` and ``mask_classes`` to the manifest; the mask hashes are part
    of the dataset version."""

    def __init__(self, spec) -> None:
        self.root = os.path.realpath(masks_root(spec))
        self.classes = list(spec.data.classes or [])
        self.ignore_index = int(spec.data.ignore_index)
        self.info: dict[str, MaskInfo] = {}

    def check(self, accepted: Accepted) -> Quarantined | None:
        it = accepted.item
        mp = mask_path_for(it.rel_path or "", self.root)
        try:
            mi = check_mask(mp, int(accepted.width), int(accepted.height), self.classes, self.ignore_index, self.root)
        except MaskError as err:
            return it.quarantine(err.reason, "mask_path", err.detail)
        self.info[it.rel_path] = mi
        return None

    def finish(self, manifest: pl.DataFrame) -> Annotated:
        return Annotated(with_mask_columns(manifest, self.info), version_rows=("masks", ("id", "mask_hash")))


def with_mask_columns(manifest: pl.DataFrame, info: dict[str, MaskInfo]) -> pl.DataFrame:
    """The manifest with ``mask_path``, ``mask_hash`` and ``mask_classes`` (row order kept)."""
    ids = manifest.get_column("id").to_list()
    return manifest.with_columns(
        pl.Series("mask_path", [info[i].mask_path for i in ids], dtype=pl.String),
        pl.Series("mask_hash", [info[i].mask_hash for i in ids], dtype=pl.String),
        pl.Series("mask_classes", [info[i].mask_classes for i in ids], dtype=pl.List(pl.String)),
    )
