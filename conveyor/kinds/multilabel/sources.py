"""Multi-label sources (``data.format: manifest``): a table of images and their label sets.

The manifest is a CSV, Parquet or JSONL file with the columns ``path`` (relative to the manifest's
folder, or absolute inside it) and ``labels``, plus optional ``camera``, ``scene`` and
``captured_at``. ``labels`` is a list column (Parquet, JSONL) or a string of names separated by
``;`` (CSV; a JSON-style list string ``["a", "b"]`` is read too). An empty or missing label set is a
valid negative: the image shows none of the labels.

Every row ends up as an :class:`Item` (accepted for decoding) or a :class:`Quarantined` record
with a reason code (:data:`REASONS`, ingest's codes where they mean the same), the field and a
detail naming the file, the row and the field; ``len(items) + len(quarantined) == received``.
Only a manifest that cannot be read at all (missing, empty, unparsable, no ``path`` / ``labels``
column) raises ``conveyor.data.records.IngestError``.

:func:`collect_for_ingest` hands the rows to the ingest stage as a
:class:`conveyor.data.records.Collection`; its :class:`LabelsFinisher` adds the ``labels`` list
column to the decoded manifest (``label`` stays null) and hashes the label sets into the dataset
version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from conveyor.data import sources as ingest
from conveyor.data import records

SEPARATOR = ";"
REQUIRED_COLUMNS = ("path", "labels")
REASONS: dict[str, str] = {
    "missing_file": "the manifest row has no path",
    "path_escapes_root": "the path leaves the manifest's folder",
    "duplicate_row": "the same path listed again in the manifest (the later row is quarantined)",
    "unknown_label": "a label not in data.classes",
    "bad_labels": "the labels cell cannot be read as a list of names",
    "bad_timestamp": "captured_at cannot be parsed",
}
"""Quarantine reason codes of multi-label manifest rows."""


@dataclass(frozen=True)
class Item:
    """One accepted manifest row: the image to decode and its label set."""

    path: str  # as the manifest gives it
    rel_path: str  # relative to the manifest's folder, POSIX
    real_path: str  # absolute, the folder's symlinks resolved
    row: int  # 1-based data row of the manifest
    labels: tuple[str, ...]  # distinct, in data.classes order (empty: a negative)
    camera: str | None = None
    scene: str | None = None
    captured_at: datetime | None = None


@dataclass(frozen=True)
class Quarantined:
    path: str
    rel_path: str | None
    row: int
    field: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Collection:
    """What :func:`collect` read from one manifest."""

    root: str
    manifest: str
    items: list[Item]
    quarantined: list[Quarantined]
    received: int
    meta_files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.items) + len(self.quarantined) != self.received:  # a bug, never a data problem
            raise AssertionError(f"{len(self.items)} + {len(self.quarantined)} != {self.received} rows")

    @property
    def kind(self) -> str:
        return "manifest"


class LabelsError(ValueError):
    """A labels cell that is not a list of names."""


def parse_labels(value: Any) -> list[str]:
    """A labels cell as a list of stripped names (order kept, repeats dropped); None/empty: ``[]``.

    Accepts a list / tuple / array of strings, a string of names separated by ``;``, or a string
    holding a JSON list of strings. Raises :class:`LabelsError` otherwise.
    """
    if value is None:
        return []
    if isinstance(value, float) and value != value:  # NaN from pandas-made files
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as err:
                raise LabelsError(f"{text!r} starts like a JSON list but is not one: {err}") from None
        else:
            value = [] if not text else text.split(SEPARATOR)
    if hasattr(value, "to_list"):
        value = value.to_list()
    elif hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise LabelsError(f"{value!r} is {type(value).__name__}, not a list of names")
    out: list[str] = []
    for v in value:
        if v is None:
            continue
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise LabelsError(f"label {v!r} is {type(v).__name__}, not a name")
        name = str(v).strip()
        if name and name not in out:
            out.append(name)
    return out


def format_labels(labels: Sequence[str]) -> str:
    """A label set as one CSV cell (names joined by ``;``)."""
    bad = [name for name in labels if SEPARATOR in name]
    if bad:
        raise ValueError(f"label names {bad} contain {SEPARATOR!r} and cannot be written to one CSV cell")
    return SEPARATOR.join(labels)


def _labels_column(df: pl.DataFrame) -> list[Any]:
    s = df.get_column("labels")
    if isinstance(s.dtype, (pl.List, pl.Array)):
        return s.to_list()
    if s.dtype in (pl.String, pl.Null):
        return s.to_list()
    return s.cast(pl.String, strict=False).to_list()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def collect(manifest_path: str | Path, classes: Sequence[str] | None) -> Collection:
    """Read a multi-label manifest into items and quarantine records (see the module doc).

    ``classes``: the allowed labels (``data.classes``); None accepts every name.
    """
    manifest = Path(manifest_path).resolve()
    if not manifest.is_file():
        raise records.IngestError(f"data.source {manifest} is not a manifest file (data.format: manifest)")
    df = ingest.read_table(manifest, "manifest")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise records.IngestError(
            f"manifest {manifest} lacks the required column(s) {', '.join(repr(c) for c in missing)} "
            f"(a multilabel manifest has path and labels); found columns {df.columns}"
        )
    if df.height == 0:
        raise records.IngestError(f"manifest {manifest} has no rows")
    allowed = None if classes is None else list(classes)
    order = {c: i for i, c in enumerate(allowed or [])}
    root = os.path.realpath(manifest.parent)
    paths = ingest.column_values(df, "path")
    labels = _labels_column(df)
    cams, scenes, times = (ingest.column_values(df, c) for c in ingest.META_COLUMNS)
    items: list[Item] = []
    bad: list[Quarantined] = []
    seen: dict[str, int] = {}
    for i in range(df.height):
        row = i + 1
        given = "" if paths[i] is None else str(paths[i])

        def reject(reason: str, fld: str, detail: str, rel: str | None = None) -> None:
            bad.append(Quarantined(given, rel, row, fld, reason, f"{manifest.name} row {row} ({given!r}) {fld}: {detail}"))

        if not given.strip():
            reject("missing_file", "path", "the path is empty")
            continue
        norm = os.path.normpath(given if os.path.isabs(given) else os.path.join(root, given))
        if not _inside(norm, root):
            reject("path_escapes_root", "path", f"{norm} is outside the data root {root}")
            continue
        rel = Path(os.path.relpath(norm, root)).as_posix()
        parent, name = os.path.split(norm)
        real_parent = os.path.realpath(parent)
        if not _inside(real_parent, root):
            reject("path_escapes_root", "path", f"its folder resolves to {real_parent}, outside the data root {root}", rel)
            continue
        if norm in seen:
            reject("duplicate_row", "path", f"the path is already listed in row {seen[norm]}", rel)
            continue
        seen[norm] = row
        try:
            names = parse_labels(labels[i])
        except LabelsError as err:
            reject("bad_labels", "labels", str(err), rel)
            continue
        if allowed is not None:
            unknown = [n for n in names if n not in order]
            if unknown:
                reject("unknown_label", "labels", f"label(s) {unknown} not in data.classes {allowed}", rel)
                continue
            names.sort(key=order.__getitem__)
        raw = times[i]
        try:
            captured = ingest.parse_timestamp(raw)
        except ValueError as err:
            reject("bad_timestamp", "captured_at", f"{raw!r} cannot be parsed: {err}", rel)
            continue
        items.append(Item(given, rel, os.path.join(real_parent, name), row, tuple(names),
                          ingest.text_or_none(cams[i]), ingest.text_or_none(scenes[i]), captured))
    return Collection(root, str(manifest), items, bad, df.height, [manifest])


def labels_frame(items: Sequence[Item]) -> pl.DataFrame:
    """``id`` (the relative path, as ingest names images) and ``labels`` (list of names) per item:
    the column the kind adds to the manifest."""
    return pl.DataFrame({"id": [it.rel_path for it in items], "labels": [list(it.labels) for it in items]},
                        schema={"id": pl.String, "labels": pl.List(pl.String)})


class LabelsFinisher(records.Finisher):
    """Adds the ``labels`` list column (by image id) to the decoded manifest and digests it."""

    def __init__(self, classes: Sequence[str] | None, labels: dict[str, list[str]]) -> None:
        self.classes = None if classes is None else [str(c) for c in classes]
        self.labels = labels

    def finish(self, manifest: pl.DataFrame) -> records.Annotated:
        ids = manifest.get_column("id").to_list()
        col = pl.Series("labels", [self.labels.get(i, []) for i in ids], dtype=pl.List(pl.String))
        manifest = manifest.with_columns(col)
        counts: dict[str, int] = {}
        for names in col.to_list():
            for n in names:
                counts[n] = counts.get(n, 0) + 1
        order = self.classes or sorted(counts)
        summary = {"format": "manifest", "labels_per_class": {c: counts.get(c, 0) for c in order},
                   "negative_images": int(sum(1 for v in col.to_list() if not v)),
                   "labels_total": int(sum(counts.values()))}
        from conveyor.data.digest import json_rows_digest

        return records.Annotated(manifest, summary=summary, classes=self.classes,
                                 digest=json_rows_digest(manifest, ("labels",)))


def collect_for_ingest(spec: Any, src: Path) -> records.Collection:
    """The manifest ``src`` as ingest's :class:`~conveyor.data.records.Collection`: one item per
    accepted row (``label`` None, the label set kept for :class:`LabelsFinisher`), the rejected rows
    as quarantine records."""
    classes = list(spec.data.classes) if spec.data.classes is not None else None
    col = collect(src, classes)
    items = [records.Item(it.path, it.rel_path, it.row, None, it.camera, it.scene, it.captured_at,
                          norm_path=os.path.join(col.root, it.rel_path), real_path=it.real_path)
             for it in col.items]
    bad = [records.Quarantined(q.path, q.rel_path, q.row, q.field, q.reason, q.detail) for q in col.quarantined]
    finisher = LabelsFinisher(classes, {it.rel_path: list(it.labels) for it in col.items})
    return records.Collection(col.root, "manifest", items, bad, col.received, list(col.meta_files), finisher=finisher)
