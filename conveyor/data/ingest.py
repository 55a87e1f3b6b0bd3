"""The ingest stage: a source folder or manifest in, a validated manifest of images out.

Every received item (each file below a class folder, each row of a manifest) ends up either in
``manifest.parquet`` (accepted) or in ``quarantine.parquet`` with a reason code, a field and a
human message; ``accepted + quarantined == received`` always. Per-item problems never raise;
only a source that cannot be read at all (missing, empty, unreadable, missing columns) raises
:class:`IngestError`.

Each image is read once: the bytes give ``content_hash`` (sha256), one safe decode
(:mod:`conveyor.data.imageio`) gives size, mode, format, the statistics and the perceptual hash
(computed in bulk, per batch of images, with numpy). Chunks of images decode in a thread pool
and their results are merged in submission order, so the output is deterministic. The first
chunk decides the number of threads: several (up to 4, at most the CPU count) when images are
big (PIL releases the GIL while it decodes), one when they are small (then the Python around
each decode dominates and threads only fight over the GIL). ``CONVEYOR_INGEST_THREADS`` sets it.

Outputs go to ``out_root/<dataset_version>/`` (``manifest.parquet``, ``quarantine.parquet``,
``ingest.json``), written into a temporary folder and renamed into place; an existing version
folder is kept as it is.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import stat
import warnings
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image

from conveyor.data import imageio
from conveyor.kinds.segmentation import sources as masks
from conveyor.core.spec import Spec
from conveyor.core.io import publish_version, sha256_bytes

REASONS: dict[str, str] = {
    "missing_file": "the file does not exist (or the manifest row has no path)",
    "unreadable": "the file exists but cannot be opened (permissions, I/O error)",
    "zero_byte": "the file is empty",
    "not_an_image": "not a recognised image (or not a regular file)",
    "corrupt": "an image whose data cannot be decoded (truncated, damaged, unsupported mode)",
    "decompression_bomb": "declared width x height above data.max_pixels (or PIL's bomb limit)",
    "too_small": "a side below data.min_side",
    "too_large": "a side above data.max_side, or the file above data.max_file_mb",
    "unknown_label": "label not in data.classes",
    "missing_label": "no label",
    "path_escapes_root": "the path, after resolving symlinks, leaves the data root",
    "bad_timestamp": "captured_at cannot be parsed",
    "duplicate_row": "the same path listed again in the manifest (the later row is quarantined)",
}
"""Quarantine reason codes and what they mean."""
REASONS.update(masks.REASONS)  # segmentation mask pairs (data.format: masks)

MANIFEST_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
SIDECAR_NAMES = ("metadata.csv", "metadata.parquet", "metadata.jsonl")
META_COLUMNS = ("camera", "scene", "captured_at")

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "path": pl.String(),
    "rel_path": pl.String(),
    "label": pl.String(),
    "camera": pl.String(),
    "scene": pl.String(),
    "captured_at": pl.Datetime("us", "UTC"),
    "content_hash": pl.String(),
    "phash": pl.String(),
    "width": pl.Int64(),
    "height": pl.Int64(),
    "mode": pl.String(),
    "format": pl.String(),
    "file_size": pl.Int64(),
    "brightness": pl.Float64(),
    "contrast": pl.Float64(),
    "saturation": pl.Float64(),
    "sharpness": pl.Float64(),
    "hue": pl.Float64(),
}
"""Columns of ``manifest.parquet``, in order."""

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),
    "rel_path": pl.String(),
    "row": pl.Int64(),
    "field": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
}
"""Columns of ``quarantine.parquet``, in order."""

_VERSION_SCHEMA = 1  # bump when the manifest's columns or statistics change meaning
_CHUNK = 64  # images per decoding task
_FEATURE_BATCH = 1024  # images per bulk statistics task (bigger groups of equal shape, fewer numpy calls)
_BATCH_PIXELS = 16_000_000  # ... or fewer, so the float temporaries stay small
_PARALLEL_MIN_PIXELS = 256 * 256  # mean image size from which decoding runs in several threads


class IngestError(ValueError):
    """The source as a whole cannot be ingested (missing, empty, unreadable, missing columns)."""


@dataclass(frozen=True)
class IngestResult:
    dataset_version: str
    manifest_path: str
    quarantine_path: str
    received: int
    accepted: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    classes: list[str]
    # detection sources (coco, yolo): box counts and box quarantine reasons (conveyor.kinds.detection.sources)
    annotations: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- items -------------------------------------------------------------------------------------


@dataclass
class _Item:
    path: str  # as given: the manifest value, or the relative path for folder sources
    rel_path: str | None
    row: int | None
    label: str | None = None
    camera: str | None = None
    scene: str | None = None
    captured_at: datetime | None = None
    norm_path: str | None = None  # absolute, normalised, symlinks not resolved
    real_path: str | None = None  # resolved, when known to be inside the root


@dataclass
class _Quarantined:
    path: str
    rel_path: str | None
    row: int | None
    field: str | None
    reason: str
    detail: str


@dataclass
class _Collected:
    root: str
    kind: str  # "folder" | "manifest"
    candidates: list[_Item]
    quarantined: list[_Quarantined]
    received: int
    meta_files: list[Path] = field(default_factory=list)  # manifest / sidecar files read
    # coco / yolo: called with the manifest frame after decoding; checks the boxes against the
    # decoded sizes and returns a conveyor.kinds.detection.sources.Finished (manifest with a boxes column)
    finish: Any = None


def _where(it: _Item) -> str:
    return f"row {it.row} ({it.path!r})" if it.row is not None else repr(it.rel_path or it.path)


def _q(it: _Item, reason: str, fld: str | None, detail: str) -> _Quarantined:
    return _Quarantined(it.path, it.rel_path, it.row, fld, reason, f"{_where(it)}: {detail}")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# ---- timestamps ----------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_timestamp(value: Any) -> datetime | None:
    """``captured_at`` to an aware UTC datetime; None for null/empty; ValueError when unparseable.

    Accepts ISO 8601 strings (naive ones are taken as UTC; ``Z`` and offsets are converted),
    datetimes and dates, and epoch numbers (or numeric strings): seconds, or milliseconds /
    microseconds / nanoseconds when the magnitude is at least 1e11 / 1e14 / 1e17.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a timestamp")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return None
        return _from_epoch(float(value))
    text = str(value).strip()
    if not text:
        return None
    if _NUMBER_RE.match(text):
        return _from_epoch(float(text))
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp or an epoch number") from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _from_epoch(v: float) -> datetime:
    if not math.isfinite(v):
        raise ValueError(f"{v!r} is not a finite epoch number")
    a = abs(v)
    scale = 1e9 if a >= 1e17 else 1e6 if a >= 1e14 else 1e3 if a >= 1e11 else 1.0
    try:
        return datetime.fromtimestamp(v / scale, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"epoch value {v!r} is out of range") from None


# ---- tables ---------------------------------------------------------------------------------


def _read_table(path: Path, what: str) -> pl.DataFrame:
    kind = MANIFEST_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise IngestError(
            f"{what} {path}: unsupported file type {path.suffix!r}; use one of {sorted(MANIFEST_SUFFIXES)}"
        )
    try:
        if path.stat().st_size == 0:
            raise IngestError(f"{what} {path} is empty (0 bytes)")
        if kind == "csv":
            df = pl.read_csv(path, infer_schema=False)
        elif kind == "parquet":
            df = pl.read_parquet(path)
        else:
            df = pl.read_ndjson(path, infer_schema_length=None)
    except IngestError:
        raise
    except OSError as err:
        raise IngestError(f"{what} {path} cannot be read: {err}") from None
    except Exception as err:  # noqa: BLE001 - polars raises many kinds for broken files
        raise IngestError(f"{what} {path} cannot be parsed as {kind}: {type(err).__name__}: {err}") from None
    return df


def _column(df: pl.DataFrame, name: str) -> list[Any]:
    if name not in df.columns:
        return [None] * df.height
    s = df.get_column(name)
    if s.dtype in (pl.String, pl.Null) or s.dtype.is_temporal() or name == "captured_at":
        return s.to_list()
    return s.cast(pl.String, strict=False).to_list()


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    t = str(v).strip()
    return t or None


# ---- collecting items ------------------------------------------------------------------------


def _source_kind(spec: Spec) -> tuple[Path, str]:
    src = spec.source_path
    if not src.exists():
        raise IngestError(f"data.source {src} does not exist")
    fmt = spec.data.format
    if fmt == "auto":
        fmt = "folder" if src.is_dir() else "manifest"
    if fmt == "folder" and not src.is_dir():
        raise IngestError(f"data.source {src} is not a folder (data.format: folder)")
    if fmt == "manifest" and not src.is_file():
        raise IngestError(f"data.source {src} is not a manifest file (data.format: manifest)")
    if fmt == "masks" and not src.is_dir():
        raise IngestError(f"data.source {src} is not a folder of images (data.format: masks)")
    return src, fmt


def _collect(spec: Spec, unlabeled: bool = False) -> _Collected:
    src, fmt = _source_kind(spec)
    if unlabeled:  # images without labels (labeling.unlabeled): a folder at any depth, or a manifest
        if fmt not in ("folder", "manifest"):
            raise IngestError(f"images without labels come as a folder or a manifest, not data.format {fmt!r}")
        return _collect_folder(spec, src, labeled=False) if fmt == "folder" else _collect_manifest(spec, src, False)
    if fmt == "masks":
        return masks.collect(spec, src)
    if fmt in ("coco", "yolo"):
        from conveyor.kinds.detection import sources as detection_io

        return detection_io.collect(spec, src, fmt)
    return _collect_folder(spec, src) if fmt == "folder" else _collect_manifest(spec, src)


def _collect_folder(spec: Spec, src: Path, labeled: bool = True) -> _Collected:
    """``<root>/<class>/<image>``; ``labeled=False``: every image below the root, without a label."""
    root = os.path.realpath(src)
    items: list[_Item] = []
    bad: list[_Quarantined] = []

    def walk(dir_real: str, rel_dir: str, label: str, visited: set[str]) -> None:
        try:
            entries = sorted(os.scandir(dir_real), key=lambda e: e.name)
        except OSError as err:
            it = _Item(rel_dir, rel_dir, None, label=label)
            bad.append(_q(it, "unreadable", "path", f"folder cannot be listed: {err.strerror or err}"))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            it = _Item(rel, rel, None, label=label, norm_path=os.path.join(dir_real, e.name))
            if e.is_symlink():
                target = os.path.realpath(it.norm_path)
                if not _inside(target, root):
                    bad.append(_q(it, "path_escapes_root", "path", f"symlink resolves to {target}, outside the data root {root}"))
                elif os.path.isdir(target):
                    if target not in visited and target != root:  # each real folder once per class
                        visited.add(target)
                        walk(target, rel, label, visited)
                elif not os.path.exists(target):
                    bad.append(_q(it, "missing_file", "path", f"broken symlink to {target}"))
                else:
                    it.real_path = target
                    items.append(it)
            elif e.is_dir(follow_symlinks=False):
                real = os.path.join(dir_real, e.name)
                if real not in visited:
                    visited.add(real)
                    walk(real, rel, label, visited)
            else:
                it.real_path = it.norm_path
                items.append(it)

    class_dirs = 0
    if not labeled:  # every file below the root is an item; there are no class folders to look for
        walk(root, "", None, {root})
    for e in (sorted(os.scandir(root), key=lambda e: e.name) if labeled else []):
        if e.name.startswith(".") or not e.is_dir():  # follows symlinks; top-level files are not items
            continue
        class_dirs += 1
        real = os.path.realpath(e.path)
        if not _inside(real, root):
            it = _Item(e.name, e.name, None, label=e.name)
            bad.append(_q(it, "path_escapes_root", "path", f"class folder symlink resolves to {real}, outside the data root {root}"))
            continue
        if real == root:
            continue  # a link to the root itself is no class
        walk(real, e.name, e.name, {root, real})
    if labeled and class_dirs == 0:
        raise IngestError(f"data.source {root} has no class sub-folders (expected <root>/<class>/<image>)")

    meta_files: list[Path] = []
    sidecar = next((Path(root) / n for n in SIDECAR_NAMES if (Path(root) / n).is_file()), None)
    if sidecar is not None:
        meta_files.append(sidecar)
        df = _read_table(sidecar, "metadata sidecar")
        if "path" not in df.columns:
            raise IngestError(f"metadata sidecar {sidecar} lacks the column 'path' (relative to {root})")
        meta: dict[str, tuple[Any, Any, Any]] = {}
        paths = _column(df, "path")
        cols = [_column(df, c) for c in META_COLUMNS]
        for i, p in enumerate(paths):
            if p is None:
                continue
            key = Path(os.path.normpath(str(p))).as_posix()
            meta.setdefault(key, (cols[0][i], cols[1][i], cols[2][i]))
        items = [it for it in items if it.rel_path != sidecar.name]  # the sidecar is no image
        for it in items:
            m = meta.get(it.rel_path or "")
            if m is not None:
                it.camera, it.scene, it.captured_at = _text(m[0]), _text(m[1]), m[2]
    received = len(items) + len(bad)
    cands, more_bad = _check_metadata(spec, items, labels=labeled)
    return _Collected(root, "folder", cands, bad + more_bad, received, meta_files)


def _check_metadata(spec: Spec, items: list[_Item], labels: bool = True) -> tuple[list[_Item], list[_Quarantined]]:
    """Label and timestamp checks shared by both source kinds (captured_at parsed in place).
    ``labels=False`` (detection sources: the boxes carry the classes) checks timestamps only."""
    classes = set(spec.data.classes) if spec.data.classes is not None else None
    ok: list[_Item] = []
    bad: list[_Quarantined] = []
    for it in items:
        if labels and it.label is None:
            bad.append(_q(it, "missing_label", "label", "no label"))
            continue
        if labels and classes is not None and it.label not in classes:
            bad.append(_q(it, "unknown_label", "label", f"label {it.label!r} is not in data.classes {sorted(classes)}"))
            continue
        raw = it.captured_at
        try:
            it.captured_at = parse_timestamp(raw)
        except ValueError as err:
            bad.append(_q(it, "bad_timestamp", "captured_at", f"captured_at {raw!r} cannot be parsed: {err}"))
            continue
        ok.append(it)
    return ok, bad


def _collect_manifest(spec: Spec, src: Path, labeled: bool = True) -> _Collected:
    manifest = src.resolve()
    df = _read_table(manifest, "manifest")
    missing = [c for c in (("path", "label") if labeled else ("path",)) if c not in df.columns]
    if missing:
        raise IngestError(
            f"manifest {manifest} lacks the required column(s) {', '.join(repr(c) for c in missing)}; "
            f"found columns {df.columns}"
        )
    if df.height == 0:
        raise IngestError(f"manifest {manifest} has no rows")
    root = os.path.realpath(manifest.parent)
    paths = _column(df, "path")
    labels = _column(df, "label") if labeled else [None] * df.height
    cams, scenes, times = (_column(df, c) for c in META_COLUMNS)
    items: list[_Item] = []
    bad: list[_Quarantined] = []
    seen: dict[str, int] = {}
    dir_real: dict[str, str] = {}
    for i in range(df.height):
        row = i + 1
        given = paths[i]
        given_s = "" if given is None else str(given)
        it = _Item(given_s, None, row, label=_text(labels[i]), camera=_text(cams[i]), scene=_text(scenes[i]),
                   captured_at=times[i])
        if not given_s.strip():
            bad.append(_q(it, "missing_file", "path", "the path is empty"))
            continue
        norm = os.path.normpath(given_s if os.path.isabs(given_s) else os.path.join(root, given_s))
        if not _inside(norm, root):
            bad.append(_q(it, "path_escapes_root", "path", f"{norm} is outside the data root {root}"))
            continue
        it.norm_path = norm
        it.rel_path = Path(os.path.relpath(norm, root)).as_posix()
        if norm in seen:
            bad.append(_q(it, "duplicate_row", "path", f"the path is already listed in row {seen[norm]}"))
            continue
        seen[norm] = row
        parent, name = os.path.split(norm)
        real_parent = dir_real.get(parent)
        if real_parent is None:
            real_parent = dir_real[parent] = os.path.realpath(parent)
        if not _inside(real_parent, root):
            bad.append(_q(it, "path_escapes_root", "path", f"its folder resolves to {real_parent}, outside the data root {root}"))
            continue
        it.real_path = os.path.join(real_parent, name)  # a symlinked file is resolved when opened
        items.append(it)
    cands, more_bad = _check_metadata(spec, items, labels=labeled)
    return _Collected(root, "manifest", cands, bad + more_bad, df.height, [manifest])


# ---- reading ------------------------------------------------------------------------------------

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class _ItemError(Exception):
    def __init__(self, reason: str, fld: str | None, detail: str):
        self.reason, self.field, self.detail = reason, fld, detail


def _read_item(it: _Item, root: str, max_bytes: int) -> bytes:
    """The bytes of an item, refusing anything that is not a regular file inside the root."""
    path = it.real_path or it.norm_path or ""
    for _ in range(2):
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise _ItemError("missing_file", "path", f"file not found: {path}") from None
        except OSError as err:
            if err.errno == errno.ELOOP:  # the file is a symlink: resolve it once and check the root
                target = os.path.realpath(path)
                if not _inside(target, root):
                    raise _ItemError("path_escapes_root", "path", f"symlink resolves to {target}, outside the data root {root}") from None
                if target == path:
                    break
                path = it.real_path = target
                continue
            if err.errno == errno.EISDIR:
                raise _ItemError("not_an_image", "path", f"{path} is a folder, not an image file") from None
            raise _ItemError("unreadable", "path", f"cannot open {path}: {err.strerror or err}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise _ItemError("not_an_image", "path", f"{path} is {kind}, not an image file")
            if st.st_size == 0:
                raise _ItemError("zero_byte", "path", f"{path} is empty (0 bytes)")
            if st.st_size > max_bytes:
                raise _ItemError("too_large", "path",
                                 f"{path} is {st.st_size / 2**20:.1f} MiB, above data.max_file_mb={max_bytes / 2**20:g}")
            chunks = []
            remaining = st.st_size
            while remaining > 0:
                b = os.read(fd, remaining)
                if not b:
                    break
                chunks.append(b)
                remaining -= len(b)
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if not data:
                raise _ItemError("zero_byte", "path", f"{path} is empty (0 bytes)")
            return data
        except OSError as err:
            raise _ItemError("unreadable", "path", f"cannot read {path}: {err.strerror or err}") from None
        finally:
            os.close(fd)
    raise _ItemError("unreadable", "path", f"cannot open {path}: too many symlink levels")


def _single_threaded_blas():
    """The statistics do many small matrix products: a multi-threaded BLAS only spins its threads
    against the decoding threads there. Limit it to one thread while ingest runs (restored after)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _workers(mean_pixels: float) -> int:
    """Decoding threads. PIL releases the GIL while it decodes, so threads pay off for big images
    (up to the cores); for small ones the Python around each decode dominates, and more threads
    only fight over the GIL: one thread then. ``CONVEYOR_INGEST_THREADS`` overrides."""
    env = os.environ.get("CONVEYOR_INGEST_THREADS")
    if env:
        return max(1, int(env))
    if mean_pixels < _PARALLEL_MIN_PIXELS:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def _decode_chunk(items: list[_Item], *, root: str, max_bytes: int, max_pixels: int, min_side: int,
                  max_side: int, hash_fn: str, hash_size: int) -> list[Any]:
    """Read, hash and decode a chunk of items (in a worker thread). Per item either a
    :class:`_Quarantined` or a tuple (item, sha256, size, mode, format, width, height, prepared)."""
    out: list[Any] = []
    for it in items:
        try:
            data = _read_item(it, root, max_bytes)
            opened = imageio.open_image(data, max_pixels=max_pixels, min_side=min_side, max_side=max_side,
                                        name=it.rel_path or it.path)
        except _ItemError as err:
            out.append(_q(it, err.reason, err.field, err.detail))
            continue
        except imageio.DecodeError as err:
            out.append(_q(it, err.reason, "path", err.detail))
            continue
        try:
            prep = imageio.prepare_features(opened.image, hash_fn, hash_size)
        finally:
            opened.image.close()
        out.append((it, sha256_bytes(data), len(data), opened.mode, opened.format, opened.width, opened.height, prep))
    return out


# ---- ingest ---------------------------------------------------------------------------------------


def ingest(spec: Spec, out_root: Path, progress: bool = False, unlabeled: bool = False) -> IngestResult:
    """Validate and describe every image of ``spec.data.source``; write the dataset version.

    ``unlabeled``: the source is a folder (any depth) or a manifest of images without labels
    (the ``label`` column stays empty); everything else, quarantine included, is the same."""
    d = spec.data
    nd = spec.curation.near_duplicates
    try:
        imageio.check_hash_settings(nd.hash, nd.hash_size)
    except ValueError as err:
        raise IngestError(f"curation.near_duplicates: {err}") from None
    col = _collect(spec, unlabeled)
    root = col.root
    quarantined: list[_Quarantined] = list(col.quarantined)
    max_bytes = int(d.max_file_mb * 2**20)
    opts = dict(root=root, max_bytes=max_bytes, max_pixels=d.max_pixels, min_side=d.min_side,
                max_side=d.max_side, hash_fn=nd.hash, hash_size=nd.hash_size)

    accepted: list[tuple[_Item, str, int, str, str, int, int]] = []  # item, sha256, size, mode, format, w, h
    feature_futures: list[Future] = []
    batch_prep: list[Any] = []
    batch_pixels = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(col.candidates), desc="ingest", unit="img")
    chunks = iter([col.candidates[i : i + _CHUNK] for i in range(0, len(col.candidates), _CHUNK)])
    pending: deque[Future] = deque()
    pool: ThreadPoolExecutor | None = None
    try:
        with warnings.catch_warnings(), _single_threaded_blas():
            # PIL warns between MAX_IMAGE_PIXELS and twice that: an error here, i.e. a quarantine.
            # The filter list is process-wide, so the decoding threads see it too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)

            def take(results: list[Any]) -> None:
                nonlocal batch_prep, batch_pixels
                for r in results:
                    if isinstance(r, _Quarantined):
                        quarantined.append(r)
                        continue
                    accepted.append(r[:7])
                    prep = r[7]
                    batch_prep.append(prep)
                    batch_pixels += prep.size[0] * prep.size[1]
                    if len(batch_prep) >= _FEATURE_BATCH or batch_pixels >= _BATCH_PIXELS:
                        feature_futures.append(submit(imageio.features_from_prepared, batch_prep, nd.hash, nd.hash_size))
                        batch_prep, batch_pixels = [], 0
                if bar is not None:
                    bar.update(len(results))

            def submit(fn, *args) -> Future:
                if pool is None:
                    fut: Future = Future()
                    fut.set_result(fn(*args))
                    return fut
                return pool.submit(fn, *args)

            # The first chunk decodes here; its image sizes decide the threads for the rest.
            first = next(chunks, None)
            if first is not None:
                results = _decode_chunk(first, **opts)
                sizes = [r[5] * r[6] for r in results if not isinstance(r, _Quarantined)]
                workers = _workers(sum(sizes) / len(sizes) if sizes else 0.0)
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="conveyor-ingest")
                take(results)

                def fill() -> None:
                    while len(pending) < 2 * workers:
                        chunk = next(chunks, None)
                        if chunk is None:
                            return
                        pending.append(pool.submit(_decode_chunk, chunk, **opts))

                fill()
                while pending:  # results in submission order: deterministic
                    results = pending.popleft().result()
                    fill()
                    take(results)
            if batch_prep:
                feature_futures.append(submit(imageio.features_from_prepared, batch_prep, nd.hash, nd.hash_size))
            features = [f for fut in feature_futures for f in fut.result()]
    finally:
        for fut in pending:
            fut.cancel()
        if pool is not None:
            pool.shutdown(wait=True)
        if bar is not None:
            bar.close()

    mask_info = None
    if col.kind == "masks":  # pair each accepted image with its mask; failing pairs to the quarantine
        accepted, features, bad_pairs, mask_info = masks.check_pairs(spec, col, accepted, features)
        quarantined.extend(bad_pairs)
    manifest = _manifest_frame(accepted, features)
    if mask_info is not None:
        manifest = masks.with_mask_columns(manifest, mask_info)
    # detection (coco, yolo): boxes checked against the decoded sizes, a boxes column, box quarantine
    boxes = col.finish(manifest) if col.finish is not None else None
    if boxes is not None:
        manifest = boxes.manifest
    qdf = _quarantine_frame(quarantined)
    version = _dataset_version(manifest, qdf, root, spec, extra=boxes.digest if boxes is not None else "",
                               unlabeled=unlabeled)
    reasons = dict(sorted(Counter(q.reason for q in quarantined).items()))
    classes = list(d.classes) if d.classes is not None else sorted(set(manifest.get_column("label").drop_nulls().to_list()))
    if boxes is not None:
        classes = boxes.classes
    received = col.received
    if manifest.height + qdf.height != received:  # a bug, never a data problem
        raise AssertionError(f"ingest lost items: {manifest.height} + {qdf.height} != {received}")
    summary = {
        "dataset_version": version,
        "source": str(spec.source_path),
        "data_root": root,
        "format": col.kind,
        "received": received,
        "accepted": manifest.height,
        "quarantined": qdf.height,
        "quarantine_reasons": reasons,
        "classes": classes,
        "hash": nd.hash,
        "hash_size": nd.hash_size,
    }
    if boxes is not None:
        summary["annotations"] = boxes.summary
    final = _write_version(Path(out_root), version, manifest, qdf, summary,
                           extra_frames=boxes.frames if boxes is not None else None)
    return IngestResult(
        dataset_version=version,
        manifest_path=str(final / "manifest.parquet"),
        quarantine_path=str(final / "quarantine.parquet"),
        received=received,
        accepted=manifest.height,
        quarantined=qdf.height,
        quarantine_reasons=reasons,
        classes=classes,
        annotations=boxes.summary if boxes is not None else {},
    )


def _manifest_frame(accepted: list[tuple], features: list[imageio.ImageFeatures]) -> pl.DataFrame:
    items = [a[0] for a in accepted]
    cols: dict[str, list[Any]] = {
        "id": [it.rel_path for it in items],
        "path": [it.real_path for it in items],
        "rel_path": [it.rel_path for it in items],
        "label": [it.label for it in items],
        "camera": [it.camera for it in items],
        "scene": [it.scene for it in items],
        "captured_at": [None if it.captured_at is None else it.captured_at.replace(tzinfo=None) for it in items],
        "content_hash": [a[1] for a in accepted],
        "phash": [f.phash for f in features],
        "width": [a[5] for a in accepted],
        "height": [a[6] for a in accepted],
        "mode": [a[3] for a in accepted],
        "format": [a[4] for a in accepted],
        "file_size": [a[2] for a in accepted],
        "brightness": [f.brightness for f in features],
        "contrast": [f.contrast for f in features],
        "saturation": [f.saturation for f in features],
        "sharpness": [f.sharpness for f in features],
        "hue": [f.hue for f in features],
    }
    schema = dict(MANIFEST_SCHEMA)
    schema["captured_at"] = pl.Datetime("us")
    df = pl.DataFrame(cols, schema=schema)
    df = df.with_columns(pl.col("captured_at").dt.replace_time_zone("UTC"))
    return df.sort("id")


def _quarantine_frame(rows: list[_Quarantined]) -> pl.DataFrame:
    df = pl.DataFrame(
        {
            "path": [q.path for q in rows],
            "rel_path": [q.rel_path for q in rows],
            "row": [q.row for q in rows],
            "field": [q.field for q in rows],
            "reason": [q.reason for q in rows],
            "detail": [q.detail for q in rows],
        },
        schema=QUARANTINE_SCHEMA,
    )
    return df.sort(["row", "path"], nulls_last=True)


# Per-image annotation columns of detection (boxes) and segmentation (mask content) sources:
# a change to any of them is a change of the data every later version must see.
ANNOTATION_COLUMNS = ("boxes", "mask_hash")


def annotation_digest(df: pl.DataFrame) -> str | None:
    """Hash of the rows' annotations (by id), or None for sources without any (classification)."""
    cols = [c for c in ANNOTATION_COLUMNS if c in df.columns]
    if not cols:
        return None
    rows = df.sort("id").select("id", *cols).rows()
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rows_digest(h: "hashlib._Hash", df: pl.DataFrame, cols: list[str]) -> None:
    """Feed the rows of ``df[cols]``, in frame order, into hash ``h`` (vectorised; nulls and
    datetimes, as epoch microseconds, encoded unambiguously)."""
    if df.height == 0:
        return
    exprs = []
    for c in cols:
        e = pl.col(c)
        if df.schema[c] == pl.Datetime or isinstance(df.schema[c], pl.Datetime):
            e = e.dt.epoch("us")
        exprs.append(e.cast(pl.String).fill_null("\x00"))
    rows = df.select(pl.concat_str(exprs, separator="\x1f").alias("r")).get_column("r").to_list()
    h.update("\x1e".join(rows).encode())


def _dataset_version(manifest: pl.DataFrame, qdf: pl.DataFrame, root: str, spec: Spec, extra: str = "",
                     unlabeled: bool = False) -> str:
    """16 hex of sha256 over the sorted accepted (id, content_hash, label, camera, scene,
    captured_at), the sorted quarantine (path, reason), the data root and the hash settings
    (the manifest stores absolute paths and perceptual hashes, so those belong to the version).
    ``extra``: a digest of annotations kept beside the images (detection boxes and their quarantine)."""
    h = hashlib.sha256()
    settings = {
        "schema": _VERSION_SCHEMA,
        "root": root,
        "hash": spec.curation.near_duplicates.hash,
        "hash_size": spec.curation.near_duplicates.hash_size,
    }
    if unlabeled:
        settings["unlabeled"] = True
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(b"\0accepted\0")
    rows_digest(h, manifest.sort("id"), ["id", "content_hash", "label", "camera", "scene", "captured_at"])
    if "mask_hash" in manifest.columns:  # segmentation: a changed mask is a new dataset version
        h.update(b"\0masks\0")
        rows_digest(h, manifest.sort("id"), ["id", "mask_hash"])
    h.update(b"\0quarantine\0")
    rows_digest(h, qdf.select("path", "reason").sort(["path", "reason"]), ["path", "reason"])
    if extra:  # detection: any changed box is a new dataset version
        h.update(b"\0annotations\0" + extra.encode())
    return h.hexdigest()[:16]


def _write_version(out_root: Path, version: str, manifest: pl.DataFrame, qdf: pl.DataFrame,
                   summary: dict[str, Any], extra_frames: dict[str, pl.DataFrame] | None = None) -> Path:
    # extra_frames: e.g. box_quarantine.parquet of detection sources
    frames = {"manifest.parquet": manifest, "quarantine.parquet": qdf, **(extra_frames or {})}
    return publish_version(out_root, version, frames, "ingest.json", summary)


# ---- fingerprint --------------------------------------------------------------------------------


def source_fingerprint(spec: Spec, unlabeled: bool = False) -> str:
    """A content key of the source for caching: sha256 over the sorted (relative path, sha256 of
    the bytes) of every file ingest would read, plus the manifest / sidecar bytes. Changes when one
    image's bytes change under the same path; does not decode anything."""
    col = _collect(spec, unlabeled)
    root = col.root
    max_bytes = int(spec.data.max_file_mb * 2**20)

    def digest(it: _Item) -> tuple[str, str]:
        key = it.rel_path or it.path
        try:
            return key, sha256_bytes(_read_item(it, root, max_bytes))
        except _ItemError as err:
            return key, f"!{err.reason}"

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        entries = list(pool.map(digest, col.candidates))
    entries += [(q.rel_path or q.path, f"!{q.reason}") for q in col.quarantined]
    for m in col.meta_files:
        entries.append((f"@{m.name}", sha256_bytes(m.read_bytes())))
    h = hashlib.sha256()
    h.update(f"{col.kind}\0{root}\0".encode())
    for key, value in sorted(entries):
        h.update(f"{key}\0{value}\n".encode())
    return h.hexdigest()


# Public names for the table helpers other stages reuse (feedback and prediction logs).
read_table = _read_table
column_values = _column
text_or_none = _text
