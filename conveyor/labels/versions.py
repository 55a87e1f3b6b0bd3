"""Label versions: every change of labels is a new immutable version, and versions can be diffed.

A label version is the set of ``(content_hash, label, source)`` rows of a dataset: one row per
distinct image content, keyed by content so a renamed file keeps its label. Its id is a hash of
the sorted rows, so the same labels always give the same version and any change gives a new one.
Versions are Parquet files under ``<workspace>/labels/<pipeline>/<version>.parquet``, written
once; ``index.jsonl`` beside them records when each first appeared and its parent (the version
before it). Each model's lineage names the label version it was trained on.

The label stored is the task kind's ``label_digest``: for classification the class, for detection
a digest of the image's boxes, for segmentation the mask's content hash, so an edited box or mask
is a label change too.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from conveyor import kinds
from conveyor.core.events import append_log, read_log
from conveyor.core.io import write_parquet_atomic
from conveyor.core.workspace import Workspace
from conveyor.kinds.base import TaskKind

LABEL_SCHEMA = {"content_hash": pl.String(), "id": pl.String(), "label": pl.String(), "source": pl.String()}
INDEX = "index.jsonl"


class LabelError(ValueError):
    """An unknown label version, or one named ambiguously."""


@dataclass(frozen=True)
class LabelVersion:
    version: str
    path: str
    rows: int
    parent: str | None
    created: bool  # False: these labels were already a version

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def labels_dir(ws: Workspace, name: str, *sub: str) -> Path:
    return ws.subdir("labels", name, *sub)


def manifest_kind(manifest: pl.DataFrame) -> TaskKind:
    """The task kind whose label columns (``TaskKind.label_columns``) the manifest has; a kind that
    reads more than the plain ``label`` column wins over one that reads only it."""
    found = [k for k in (kinds.get(n) for n in kinds.available()) if set(k.label_columns) <= set(manifest.columns)]
    if not found:
        raise LabelError(f"the manifest has no label columns of any task kind (columns {manifest.columns})")
    return min(found, key=lambda k: (tuple(k.label_columns) == ("label",), k.name))


def label_table(manifest: pl.DataFrame, task: str | None = None) -> pl.DataFrame:
    """One row per distinct image content: its label (the kind's ``label_digest``: the class, or a
    digest of the annotations) and where it came from. Without ``task`` the manifest's columns name
    the kind (:func:`manifest_kind`)."""
    kind = kinds.get(task) if task is not None else manifest_kind(manifest)
    label = pl.Series("label", kind.label_digest(manifest), dtype=pl.String)
    source = pl.col("label_source") if "label_source" in manifest.columns else pl.lit("human")
    df = manifest.select(pl.col("content_hash"), pl.col("id").cast(pl.String), pl.lit(label).alias("label"),
                         source.cast(pl.String).alias("source"))
    return df.sort("content_hash", "id").unique("content_hash", keep="first", maintain_order=True)


def _version_id(table: pl.DataFrame) -> str:
    h = hashlib.sha256()
    for ch, label, source in table.select("content_hash", "label", "source").iter_rows():
        h.update(f"{ch}\t{label}\t{source}\n".encode())
    return h.hexdigest()[:16]


def history(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """Every label version of the pipeline, oldest first."""
    return read_log(labels_dir(ws, name) / INDEX)


def publish(ws: Workspace, name: str, manifest: pl.DataFrame, task: str | None = None) -> LabelVersion:
    """The label version of a manifest; written (with an index entry) the first time it appears."""
    return publish_table(ws, name, label_table(manifest, task))


def publish_table(ws: Workspace, name: str, table: pl.DataFrame) -> LabelVersion:
    """Publish a label table (``LABEL_SCHEMA`` rows) as a version, like :func:`publish`."""
    table = table.select(list(LABEL_SCHEMA)).sort("content_hash", "id").unique("content_hash", keep="first",
                                                                                maintain_order=True)
    version = _version_id(table)
    ldir = labels_dir(ws, name)
    path = ldir / f"{version}.parquet"
    past = history(ws, name)
    known = {e["version"]: e for e in past}
    if version in known and path.is_file():
        return LabelVersion(version, str(path), table.height, known[version].get("parent"), False)
    write_parquet_atomic(table, path)
    parent = past[-1]["version"] if past else None
    append_log(ldir / INDEX, {"version": version, "parent": parent, "rows": table.height,
                              "created_at": datetime.now(timezone.utc).isoformat()})
    return LabelVersion(version, str(path), table.height, parent, True)


@dataclass
class ReviewCounts:
    """What a review import did to the labels, counted by image: new images, images whose label changed,
    and images whose label a reviewer confirmed (same label, now from review)."""
    added: int = 0
    changed: int = 0
    confirmed: int = 0


def apply_reviews(ws: Workspace, name: str, reviewed: pl.DataFrame, task: str) -> tuple[LabelVersion, ReviewCounts]:
    """The latest label version with reviewed labels applied (source ``review``), published as a new
    version; returns it with what changed, counted by image. ``reviewed`` has the columns
    content_hash, id and the stored label columns of the task kind (``TaskKind.review_record``)."""
    past = history(ws, name)
    base = (pl.read_parquet(labels_dir(ws, name) / f"{past[-1]['version']}.parquet") if past
            else pl.DataFrame(schema=LABEL_SCHEMA))
    label = kinds.get(task).label_digest(reviewed)
    new = pl.DataFrame({"content_hash": reviewed["content_hash"], "id": reviewed["id"],
                        "label": pl.Series(label, dtype=pl.String), "source": ["review"] * reviewed.height},
                       schema=LABEL_SCHEMA)
    before = dict(zip(base["content_hash"].to_list(), base["label"].to_list()))
    after = dict(zip(new["content_hash"].to_list(), label))  # one label per image: conflicts were quarantined
    counts = ReviewCounts(added=sum(1 for h in after if h not in before),
                          changed=sum(1 for h, lab in after.items() if h in before and before[h] != lab),
                          confirmed=sum(1 for h, lab in after.items() if h in before and before[h] == lab))
    new = new.unique(subset="content_hash", keep="first", maintain_order=True)
    table = pl.concat([new, base.filter(~pl.col("content_hash").is_in(new["content_hash"].to_list()))])
    return publish_table(ws, name, table), counts


def resolve(ws: Workspace, name: str, ref: str) -> str:
    """A full version id from an id, a unique prefix of one, or ``latest`` / ``previous``."""
    versions = [e["version"] for e in history(ws, name)]
    if not versions:
        raise LabelError(f"{name} has no label versions yet (run a cycle first)")
    if ref == "latest":
        return versions[-1]
    if ref == "previous":
        if len(versions) < 2:
            raise LabelError(f"{name} has only one label version")
        return versions[-2]
    hits = sorted({v for v in versions if v.startswith(ref)})
    if len(hits) != 1:
        raise LabelError(f"label version {ref!r} is {'ambiguous' if hits else 'unknown'}; "
                         f"versions: {', '.join(versions)}")
    return hits[0]


@dataclass
class LabelDiff:
    old: str
    new: str
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diff(ws: Workspace, name: str, old_ref: str, new_ref: str) -> LabelDiff:
    """What changed between two label versions, by image content."""
    old, new = resolve(ws, name, old_ref), resolve(ws, name, new_ref)
    ldir = labels_dir(ws, name)
    a, b = pl.read_parquet(ldir / f"{old}.parquet"), pl.read_parquet(ldir / f"{new}.parquet")
    joined = a.join(b, on="content_hash", how="full", suffix="_new", coalesce=True)
    out = LabelDiff(old, new)
    for r in joined.sort("content_hash").iter_rows(named=True):
        if r["label"] is None:
            out.added.append({"id": r["id_new"], "content_hash": r["content_hash"], "label": r["label_new"],
                              "source": r["source_new"]})
        elif r["label_new"] is None:
            out.removed.append({"id": r["id"], "content_hash": r["content_hash"], "label": r["label"],
                                "source": r["source"]})
        elif (r["label"], r["source"]) != (r["label_new"], r["source_new"]):
            out.changed.append({"id": r["id_new"], "content_hash": r["content_hash"], "old": r["label"],
                                "new": r["label_new"], "old_source": r["source"], "new_source": r["source_new"]})
    return out
