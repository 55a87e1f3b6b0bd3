"""Content digests of frames that version keys are built from (dataset, curation, split, labels)."""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import polars as pl


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


def json_rows_digest(df: pl.DataFrame, cols: Sequence[str]) -> str:
    """16 hex of sha256 over the JSON of the rows ``(id, *cols)`` sorted by id ("" when a column is
    missing). Task kinds use it for :meth:`~conveyor.kinds.base.TaskKind.annotation_digest`."""
    if not cols or any(c not in df.columns for c in cols):
        return ""
    rows = df.sort("id").select("id", *cols).rows()
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def annotation_digest(df: pl.DataFrame, task: str | None = None) -> str | None:
    """Hash of the rows' annotations (boxes, masks ...), or None for rows without any.

    ``task``: ask that task kind; None: the first registered kind that finds its annotations in
    the frame (a frame carries the annotation columns of one kind only)."""
    from conveyor import kinds

    names = [task] if task is not None else kinds.available()
    for name in names:
        digest = kinds.get(name).annotation_digest(df)
        if digest:
            return digest
    return None
