"""Typed records of the ingest stage: what a source lists, what it rejects and what decoding accepts.

A source (a folder, a manifest, or a task kind's own format such as COCO, YOLO or mask pairs)
is read into a :class:`Collection`: the :class:`Item` records to decode plus the items it
already rejected (:class:`Quarantined`). Decoding turns each item into an :class:`Accepted`
record or another quarantine row. A kind whose annotations live beside the images gives the
collection a :class:`Finisher` that checks them against the decoded images and returns an
:class:`Annotated` manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

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
"""Quarantine reason codes of every source, and what they mean (task kinds add their own,
e.g. :data:`conveyor.kinds.segmentation.sources.REASONS`)."""

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
"""Columns of ``manifest.parquet``, in order (task kinds append their annotation columns)."""

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),
    "rel_path": pl.String(),
    "row": pl.Int64(),
    "field": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
}
"""Columns of ``quarantine.parquet``, in order."""


class IngestError(ValueError):
    """The source as a whole cannot be ingested (missing, empty, unreadable, missing columns)."""


@dataclass(frozen=True)
class Quarantined:
    """One rejected item: a row of ``quarantine.parquet``."""

    path: str
    rel_path: str | None
    row: int | None
    field: str | None
    reason: str
    detail: str


@dataclass(frozen=True)
class Item:
    """One received item of a source, before decoding."""

    path: str  # as given: the manifest value, or the relative path for folder sources
    rel_path: str | None
    row: int | None  # the manifest row (1-based), None for folder-like sources
    label: str | None = None
    camera: str | None = None
    scene: str | None = None
    captured_at: Any = None  # as read; an aware UTC datetime once the metadata is checked
    norm_path: str | None = None  # absolute, normalised, symlinks not resolved
    real_path: str | None = None  # resolved, when known to be inside the root

    def replace(self, **changes: Any) -> "Item":
        return dataclasses.replace(self, **changes)

    @property
    def where(self) -> str:
        """How messages name the item: its manifest row and path, or its relative path."""
        return f"row {self.row} ({self.path!r})" if self.row is not None else repr(self.rel_path or self.path)

    def quarantine(self, reason: str, fld: str | None, detail: str) -> Quarantined:
        """The quarantine row of this item; ``detail`` is prefixed with :attr:`where`."""
        return Quarantined(self.path, self.rel_path, self.row, fld, reason, f"{self.where}: {detail}")


@dataclass(frozen=True)
class Accepted:
    """An item whose bytes were read and decoded: what the manifest row needs besides the statistics."""

    item: Item  # with ``real_path`` the file actually read
    content_hash: str  # sha256 of the bytes
    file_size: int
    mode: str
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class Annotated:
    """What a kind's :class:`Finisher` makes of the decoded manifest.

    ``manifest``: the manifest with the kind's annotation columns; ``frames``: extra parquet files
    of the version (e.g. ``box_quarantine.parquet``); ``summary``: ``annotations`` of
    ``ingest.json``; ``classes``: the class list when the annotations define it; ``version_rows``:
    a tag and manifest columns hashed with the accepted rows into the dataset version;
    ``digest``: a digest of the annotations hashed after the quarantine.
    """

    manifest: pl.DataFrame
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    classes: list[str] | None = None
    version_rows: tuple[str, tuple[str, ...]] | None = None
    digest: str = ""


class Finisher:
    """The post-decode step of a kind's source: check each decoded image's annotation
    (:meth:`check`), then turn the manifest into an :class:`Annotated` one (:meth:`finish`)."""

    def check(self, accepted: Accepted) -> Quarantined | None:
        """A quarantine row when the image's annotation does not fit the decoded image, else None."""
        return None

    def finish(self, manifest: pl.DataFrame) -> Annotated:
        return Annotated(manifest)


@dataclass
class Collection:
    """Everything a source lists: items to decode, items already rejected, the files read."""

    root: str  # the data root (real path); item paths stay inside it
    format: str  # "folder" | "manifest" | a kind's format ("coco", "yolo", "masks", ...)
    candidates: list[Item]
    quarantined: list[Quarantined]
    received: int  # items received: accepted + quarantined in the end
    meta_files: list[Path] = field(default_factory=list)  # manifest / sidecar / annotation files read
    finisher: Finisher | None = None


def quarantine_frame(rows: list[Quarantined]) -> pl.DataFrame:
    """The quarantine rows as a frame of :data:`QUARANTINE_SCHEMA`, sorted by row, then path."""
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
