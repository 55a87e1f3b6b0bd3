"""Reading sources for ingest: folders, manifests, the metadata sidecar, tables and item bytes.

A source is listed into a :class:`~conveyor.data.records.Collection` without decoding anything.
``data.format`` ``folder`` (``<root>/<class>/<image>``) and ``manifest`` (a CSV / Parquet /
JSONL table with ``path`` and ``label``) are read here for every task kind; kind-specific
formats (COCO, YOLO, mask pairs) are read by the kind (:meth:`conveyor.kinds.base.TaskKind.collect`),
with the helpers of this module: :func:`read_sidecar` (camera, scene and capture time from a
``metadata.csv`` / ``.parquet`` / ``.jsonl`` beside the images), :func:`check_metadata`
(labels and timestamps), :func:`read_table` and :func:`read_item`.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from conveyor.data.records import Collection, IngestError, Item, Quarantined

if TYPE_CHECKING:  # pragma: no cover
    from conveyor.core.spec import Spec

MANIFEST_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
SIDECAR_NAMES = ("metadata.csv", "metadata.parquet", "metadata.jsonl")
META_COLUMNS = ("camera", "scene", "captured_at")
GENERIC_FORMATS = ("folder", "manifest")
"""``data.format`` values read here for every task kind."""


def inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both normalised, absolute)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# ---- timestamps ----------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


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


def read_table(path: Path, what: str) -> pl.DataFrame:
    """A CSV (all columns as text), Parquet or JSONL file; :class:`IngestError` naming ``what`` when
    the file type is unknown, the file is empty or it cannot be read or parsed."""
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


def column_values(df: pl.DataFrame, name: str) -> list[Any]:
    """The values of column ``name`` (None for each row when absent); non-text columns other than
    temporal ones and ``captured_at`` are cast to text."""
    if name not in df.columns:
        return [None] * df.height
    s = df.get_column(name)
    if s.dtype in (pl.String, pl.Null) or s.dtype.is_temporal() or name == "captured_at":
        return s.to_list()
    return s.cast(pl.String, strict=False).to_list()


def text_or_none(v: Any) -> str | None:
    """Stripped text, or None for null, NaN and blank values."""
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    t = str(v).strip()
    return t or None


# ---- the metadata sidecar -----------------------------------------------------------------------


@dataclass(frozen=True)
class ItemMeta:
    """One sidecar row: camera, scene and capture time as read (not yet checked)."""

    camera: Any = None
    scene: Any = None
    captured_at: Any = None


@dataclass(frozen=True)
class Sidecar:
    """The metadata sidecar of a data root, keyed by normalised path relative to the root."""

    path: Path
    rows: dict[str, ItemMeta]

    def get(self, rel_path: str | None) -> ItemMeta | None:
        return self.rows.get(rel_path or "")

    def apply(self, item: Item) -> Item:
        """The item with the sidecar's camera, scene and capture time, when the sidecar lists it."""
        m = self.get(item.rel_path)
        if m is None:
            return item
        return item.replace(camera=text_or_none(m.camera), scene=text_or_none(m.scene), captured_at=m.captured_at)


def read_sidecar(root: str | Path) -> Sidecar | None:
    """The first of :data:`SIDECAR_NAMES` in ``root``, read; None when there is none.

    Needs a ``path`` column (relative to the root); ``camera``, ``scene`` and ``captured_at`` are
    optional. The first row of a path wins."""
    sidecar = next((Path(root) / n for n in SIDECAR_NAMES if (Path(root) / n).is_file()), None)
    if sidecar is None:
        return None
    df = read_table(sidecar, "metadata sidecar")
    if "path" not in df.columns:
        raise IngestError(f"metadata sidecar {sidecar} lacks the column 'path' (relative to {root})")
    cams, scenes, times = (column_values(df, c) for c in META_COLUMNS)
    rows: dict[str, ItemMeta] = {}
    for i, p in enumerate(column_values(df, "path")):
        if p is None:
            continue
        rows.setdefault(Path(os.path.normpath(str(p))).as_posix(), ItemMeta(cams[i], scenes[i], times[i]))
    return Sidecar(sidecar, rows)


# ---- checks ---------------------------------------------------------------------------------------


def check_metadata(spec: Spec, items: list[Item], labels: bool = True) -> tuple[list[Item], list[Quarantined]]:
    """Label and timestamp checks shared by the sources: the items that pass (``captured_at``
    parsed) and the quarantine rows of the others. ``labels=False`` (sources whose annotations
    carry the classes) checks timestamps only."""
    classes = set(spec.data.classes) if spec.data.classes is not None else None
    ok: list[Item] = []
    bad: list[Quarantined] = []
    for it in items:
        if labels and it.label is None:
            bad.append(it.quarantine("missing_label", "label", "no label"))
            continue
        if labels and classes is not None and it.label not in classes:
            bad.append(it.quarantine("unknown_label", "label", f"label {it.label!r} is not in data.classes {sorted(classes)}"))
            continue
        raw = it.captured_at
        try:
            parsed = parse_timestamp(raw)
        except ValueError as err:
            bad.append(it.quarantine("bad_timestamp", "captured_at", f"captured_at {raw!r} cannot be parsed: {err}"))
            continue
        ok.append(it.replace(captured_at=parsed))
    return ok, bad


# ---- folder and manifest sources ------------------------------------------------------------------


def resolve_source(spec: Spec) -> tuple[Path, str]:
    """``data.source`` and its format (``auto`` resolved to ``folder`` or ``manifest``)."""
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
    return src, fmt


def collect_generic(spec: Spec, src: Path, fmt: str) -> Collection:
    """A ``folder`` or ``manifest`` source with labels."""
    if fmt == "folder":
        return collect_folder(spec, src)
    if fmt == "manifest":
        return collect_manifest(spec, src)
    raise IngestError(f"data.format {fmt!r} is not a folder or manifest source")


def collect_folder(spec: Spec, src: Path, labeled: bool = True) -> Collection:
    """``<root>/<class>/<image>``; ``labeled=False``: every image below the root, without a label."""
    root = os.path.realpath(src)
    items: list[Item] = []
    bad: list[Quarantined] = []

    def walk(dir_real: str, rel_dir: str, label: str | None, visited: set[str]) -> None:
        try:
            entries = sorted(os.scandir(dir_real), key=lambda e: e.name)
        except OSError as err:
            it = Item(rel_dir, rel_dir, None, label=label)
            bad.append(it.quarantine("unreadable", "path", f"folder cannot be listed: {err.strerror or err}"))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            it = Item(rel, rel, None, label=label, norm_path=os.path.join(dir_real, e.name))
            if e.is_symlink():
                target = os.path.realpath(it.norm_path)
                if not inside(target, root):
                    bad.append(it.quarantine("path_escapes_root", "path", f"symlink resolves to {target}, outside the data root {root}"))
                elif os.path.isdir(target):
                    if target not in visited and target != root:  # each real folder once per class
                        visited.add(target)
                        walk(target, rel, label, visited)
                elif not os.path.exists(target):
                    bad.append(it.quarantine("missing_file", "path", f"broken symlink to {target}"))
                else:
                    items.append(it.replace(real_path=target))
            elif e.is_dir(follow_symlinks=False):
                real = os.path.join(dir_real, e.name)
                if real not in visited:
                    visited.add(real)
                    walk(real, rel, label, visited)
            else:
                items.append(it.replace(real_path=it.norm_path))

    class_dirs = 0
    if not labeled:  # every file below the root is an item; there are no class folders to look for
        walk(root, "", None, {root})
    for e in (sorted(os.scandir(root), key=lambda e: e.name) if labeled else []):
        if e.name.startswith(".") or not e.is_dir():  # follows symlinks; top-level files are not items
            continue
        class_dirs += 1
        real = os.path.realpath(e.path)
        if not inside(real, root):
            it = Item(e.name, e.name, None, label=e.name)
            bad.append(it.quarantine("path_escapes_root", "path", f"class folder symlink resolves to {real}, outside the data root {root}"))
            continue
        if real == root:
            continue  # a link to the root itself is no class
        walk(real, e.name, e.name, {root, real})
    if labeled and class_dirs == 0:
        raise IngestError(f"data.source {root} has no class sub-folders (expected <root>/<class>/<image>)")

    meta_files: list[Path] = []
    sidecar = read_sidecar(root)
    if sidecar is not None:
        meta_files.append(sidecar.path)
        items = [sidecar.apply(it) for it in items if it.rel_path != sidecar.path.name]  # the sidecar is no image
    received = len(items) + len(bad)
    cands, more_bad = check_metadata(spec, items, labels=labeled)
    return Collection(root, "folder", cands, bad + more_bad, received, meta_files)


def collect_manifest(spec: Spec, src: Path, labeled: bool = True) -> Collection:
    """A table with ``path`` (relative to the table's folder, or absolute inside it) and ``label``
    (``labeled=False``: no label column needed), plus optional camera, scene and captured_at."""
    manifest = src.resolve()
    df = read_table(manifest, "manifest")
    missing = [c for c in (("path", "label") if labeled else ("path",)) if c not in df.columns]
    if missing:
        raise IngestError(
            f"manifest {manifest} lacks the required column(s) {', '.join(repr(c) for c in missing)}; "
            f"found columns {df.columns}"
        )
    if df.height == 0:
        raise IngestError(f"manifest {manifest} has no rows")
    root = os.path.realpath(manifest.parent)
    paths = column_values(df, "path")
    labels = column_values(df, "label") if labeled else [None] * df.height
    cams, scenes, times = (column_values(df, c) for c in META_COLUMNS)
    items: list[Item] = []
    bad: list[Quarantined] = []
    seen: dict[str, int] = {}
    dir_real: dict[str, str] = {}
    for i in range(df.height):
        row = i + 1
        given = paths[i]
        given_s = "" if given is None else str(given)
        it = Item(given_s, None, row, label=text_or_none(labels[i]), camera=text_or_none(cams[i]),
                  scene=text_or_none(scenes[i]), captured_at=times[i])
        if not given_s.strip():
            bad.append(it.quarantine("missing_file", "path", "the path is empty"))
            continue
        norm = os.path.normpath(given_s if os.path.isabs(given_s) else os.path.join(root, given_s))
        if not inside(norm, root):
            bad.append(it.quarantine("path_escapes_root", "path", f"{norm} is outside the data root {root}"))
            continue
        it = it.replace(norm_path=norm, rel_path=Path(os.path.relpath(norm, root)).as_posix())
        if norm in seen:
            bad.append(it.quarantine("duplicate_row", "path", f"the path is already listed in row {seen[norm]}"))
            continue
        seen[norm] = row
        parent, name = os.path.split(norm)
        real_parent = dir_real.get(parent)
        if real_parent is None:
            real_parent = dir_real[parent] = os.path.realpath(parent)
        if not inside(real_parent, root):
            bad.append(it.quarantine("path_escapes_root", "path", f"its folder resolves to {real_parent}, outside the data root {root}"))
            continue
        items.append(it.replace(real_path=os.path.join(real_parent, name)))  # a symlinked file is resolved when opened
    cands, more_bad = check_metadata(spec, items, labels=labeled)
    return Collection(root, "manifest", cands, bad + more_bad, df.height, [manifest])


# ---- reading an item's bytes ------------------------------------------------------------------------

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class ItemError(Exception):
    """An item that cannot be read: ``reason`` (a quarantine code), ``field`` and ``detail``."""

    def __init__(self, reason: str, fld: str | None, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, fld, detail


def read_item(it: Item, root: str, max_bytes: int) -> tuple[bytes, str]:
    """The bytes of an item and the path they were read from (a symlinked file resolved once),
    refusing anything that is not a regular file inside the root (:class:`ItemError`)."""
    path = it.real_path or it.norm_path or ""
    for _ in range(2):
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise ItemError("missing_file", "path", f"file not found: {path}") from None
        except OSError as err:
            if err.errno == errno.ELOOP:  # the file is a symlink: resolve it once and check the root
                target = os.path.realpath(path)
                if not inside(target, root):
                    raise ItemError("path_escapes_root", "path", f"symlink resolves to {target}, outside the data root {root}") from None
                if target == path:
                    break
                path = target
                continue
            if err.errno == errno.EISDIR:
                raise ItemError("not_an_image", "path", f"{path} is a folder, not an image file") from None
            raise ItemError("unreadable", "path", f"cannot open {path}: {err.strerror or err}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise ItemError("not_an_image", "path", f"{path} is {kind}, not an image file")
            if st.st_size == 0:
                raise ItemError("zero_byte", "path", f"{path} is empty (0 bytes)")
            if st.st_size > max_bytes:
                raise ItemError("too_large", "path",
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
                raise ItemError("zero_byte", "path", f"{path} is empty (0 bytes)")
            return data, path
        except OSError as err:
            raise ItemError("unreadable", "path", f"cannot read {path}: {err.strerror or err}") from None
        finally:
            os.close(fd)
    raise ItemError("unreadable", "path", f"cannot open {path}: too many symlink levels")
