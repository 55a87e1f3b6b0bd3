"""The curate stage: privacy rules, exact and near-duplicate removal, each removal with a reason.

Input is an ingest ``manifest.parquet``; output is ``curated.parquet`` (the kept rows, the same
columns) and ``removed.parquet`` (the removed rows plus ``reason``, ``duplicate_of`` and
``distance``) in ``out_root/<curated_version>/``. ``received == kept + removed`` always.

Order of the rules, each applied to the rows the earlier ones kept:

1. privacy (``curation.privacy``): ``privacy_excluded_camera``, ``privacy_excluded_scene``,
   ``privacy_missing_camera`` (camera null while ``drop_missing_camera``);
2. exact duplicates by ``content_hash`` (``exact_duplicates: drop``): one row is kept, the others
   are ``exact_duplicate`` (``duplicate_of`` = the kept id, ``distance`` = 0); when the copies carry
   different labels all of them are removed as ``label_conflict``;
3. near duplicates by perceptual hash (``near_duplicates.enabled``): images within
   ``max_distance`` are joined into connected groups (union-find, so a chain a~b~c is one group);
   one representative is kept and the others are ``near_duplicate`` (``duplicate_of`` = the
   representative, ``distance`` = Hamming distance of their hashes); a group whose images carry
   different labels is removed entirely as ``label_conflict``. Identical images (same
   ``content_hash``, kept when ``exact_duplicates: keep``) move as one unit.

For ``label_conflict`` rows ``duplicate_of`` names the group's first-ranked member (null for that
member itself), so a person can find the whole group.

Which row is kept (deterministic): rows whose ``content_hash`` is in ``prefer`` (the frozen
evaluation set) first, then labels a person gave over feedback over machine labels
(``label_source``), then the earliest ``captured_at`` (nulls last), then the smallest ``id``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from conveyor.data.digest import annotation_digest, rows_digest
from conveyor.data.neardup import near_pairs
from conveyor.core.spec import Spec
from conveyor.core.io import publish_version

REASONS: dict[str, str] = {
    "privacy_excluded_camera": "camera listed in curation.privacy.exclude_cameras",
    "privacy_excluded_scene": "scene listed in curation.privacy.exclude_scenes",
    "privacy_missing_camera": "no camera while curation.privacy.drop_missing_camera is set",
    "exact_duplicate": "same bytes as the kept row duplicate_of",
    "near_duplicate": "perceptual hash within max_distance of the kept row duplicate_of",
    "label_conflict": "duplicates (exact or near) with different labels: all removed for a person to decide",
}
"""Removal reason codes and what they mean."""

REQUIRED_COLUMNS = ("id", "label", "camera", "scene", "captured_at", "content_hash", "phash")
EXTRA_SCHEMA: dict[str, pl.DataType] = {"reason": pl.String(), "duplicate_of": pl.String(), "distance": pl.Int64()}
"""Columns that ``removed.parquet`` adds to the manifest's."""



class CurateError(ValueError):
    """The manifest cannot be curated (missing file or columns)."""


@dataclass(frozen=True)
class CurateResult:
    curated_version: str
    curated_path: str
    removed_path: str
    received: int
    kept: int
    removed: int
    removed_reasons: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


# ---- curate ----------------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


def curate(
    manifest_path: str | Path, spec: Spec, out_root: Path, prefer: frozenset[str] = frozenset()
) -> CurateResult:
    """Apply ``spec.curation`` to an ingest manifest and write the curated version."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise CurateError(f"manifest {manifest_path} does not exist")
    df = pl.read_parquet(manifest_path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CurateError(f"manifest {manifest_path} lacks the column(s) {missing}")
    cur = spec.curation
    n = df.height
    ids: list[str] = df.get_column("id").to_list()
    labels: list[str] = df.get_column("label").to_list()
    cams: list[str | None] = df.get_column("camera").to_list()
    scenes: list[str | None] = df.get_column("scene").to_list()
    times: list[datetime | None] = df.get_column("captured_at").to_list()
    chashes: list[str] = df.get_column("content_hash").to_list()
    phashes: list[str] = df.get_column("phash").to_list()

    reason: list[str | None] = [None] * n
    dup_of: list[str | None] = [None] * n
    distance: list[int | None] = [None] * n

    # labels a person gave are kept over machine labels (conveyor.labels.stage.LABEL_SOURCES order)
    trust = {"human": 0, "review": 0, "feedback": 1, "machine": 2}
    sources = df.get_column("label_source").to_list() if "label_source" in df.columns else [None] * n

    def rank(i: int) -> tuple:
        t = times[i]
        return (chashes[i] not in prefer, trust.get(sources[i], 0), t is None, t.timestamp() if t is not None else 0.0,
                ids[i])

    # 1. privacy
    pv = cur.privacy
    ex_cams, ex_scenes = set(pv.exclude_cameras), set(pv.exclude_scenes)
    for i in range(n):
        if cams[i] is not None and cams[i] in ex_cams:
            reason[i] = "privacy_excluded_camera"
        elif scenes[i] is not None and scenes[i] in ex_scenes:
            reason[i] = "privacy_excluded_scene"
        elif pv.drop_missing_camera and cams[i] is None:
            reason[i] = "privacy_missing_camera"

    # 2. exact duplicates
    if cur.exact_duplicates == "drop":
        groups: dict[str, list[int]] = {}
        for i in range(n):
            if reason[i] is None:
                groups.setdefault(chashes[i], []).append(i)
        for members in groups.values():
            if len(members) < 2:
                continue
            members.sort(key=rank)
            best = members[0]
            conflict = len({labels[m] for m in members}) > 1
            for m in members[1:]:
                reason[m] = "label_conflict" if conflict else "exact_duplicate"
                dup_of[m] = ids[best]
                distance[m] = None if conflict else 0
            if conflict:
                reason[best] = "label_conflict"

    # 3. near duplicates, over units of identical content
    nd = cur.near_duplicates
    if nd.enabled:
        unit_rows: dict[str, list[int]] = {}
        for i in range(n):
            if reason[i] is None:
                unit_rows.setdefault(chashes[i], []).append(i)
        units = list(unit_rows.values())
        for rows in units:
            rows.sort(key=rank)
        unit_hash = [phashes[rows[0]] or "" for rows in units]
        hashed = [u for u, h in enumerate(unit_hash) if h]  # a row without a hash joins no group
        uf = _UnionFind(len(units))
        for a, b, _ in near_pairs([unit_hash[u] for u in hashed], nd.max_distance):
            uf.union(hashed[a], hashed[b])
        clusters: dict[int, list[int]] = {}
        for u in range(len(units)):
            clusters.setdefault(uf.find(u), []).append(u)
        for members in clusters.values():
            if len(members) < 2 and len({labels[r] for r in units[members[0]]}) < 2:
                continue
            members.sort(key=lambda u: rank(units[u][0]))
            best_u = members[0]
            best = units[best_u][0]
            all_rows = [r for u in members for r in units[u]]
            if len({labels[r] for r in all_rows}) > 1:
                for r in all_rows:
                    reason[r] = "label_conflict"
                    dup_of[r] = None if r == best else ids[best]
                continue
            for u in members[1:]:
                dd = _hamming(unit_hash[u], unit_hash[best_u])
                for r in units[u]:
                    reason[r] = "near_duplicate"
                    dup_of[r] = ids[best]
                    distance[r] = dd

    keep_mask = pl.Series("keep", [r is None for r in reason], dtype=pl.Boolean)
    curated = df.filter(keep_mask).sort("id")
    removed = (
        df.with_columns(
            pl.Series("reason", reason, dtype=pl.String),
            pl.Series("duplicate_of", dup_of, dtype=pl.String),
            pl.Series("distance", distance, dtype=pl.Int64),
        )
        .filter(~keep_mask)
        .sort("id")
    )
    reasons = dict(sorted(Counter(r for r in reason if r is not None).items()))
    version = _curated_version(curated, removed, spec, prefer)
    summary = {
        "curated_version": version,
        "manifest": str(manifest_path),
        "received": n,
        "kept": curated.height,
        "removed": removed.height,
        "removed_reasons": reasons,
        "curation": spec.resolved_dict()["curation"],
        "prefer": len(prefer),
    }
    final = _write_version(Path(out_root), version, curated, removed, summary)
    return CurateResult(
        curated_version=version,
        curated_path=str(final / "curated.parquet"),
        removed_path=str(final / "removed.parquet"),
        received=n,
        kept=curated.height,
        removed=removed.height,
        removed_reasons=reasons,
    )


def _curated_version(curated: pl.DataFrame, removed: pl.DataFrame, spec: Spec, prefer: frozenset[str]) -> str:
    """16 hex of sha256 over the kept rows' identity and content (id, content_hash, label, camera,
    scene, captured_at, path), the removed rows' (id, content_hash, reason, duplicate_of), the
    curation section hash and the sorted ``prefer`` set."""
    h = hashlib.sha256()
    h.update(f"curation={spec.section_hash('curation')}\0".encode())
    kcols = ["id", "content_hash", "label", "camera", "scene", "captured_at"] + (["path"] if "path" in curated.columns else [])
    rows_digest(h, curated, kcols)
    h.update(f"\0annotations={annotation_digest(curated, spec.task)}\0".encode())  # boxes or masks of the kept rows
    h.update(b"\0removed\0")
    rows_digest(h, removed, ["id", "content_hash", "reason", "duplicate_of"])
    h.update(b"\0prefer\0")
    h.update("\n".join(sorted(prefer)).encode())
    return h.hexdigest()[:16]


def _write_version(out_root: Path, version: str, curated: pl.DataFrame, removed: pl.DataFrame,
                   summary: dict[str, Any]) -> Path:
    return publish_version(out_root, version, {"curated.parquet": curated, "removed.parquet": removed},
                           "curate.json", summary)


# ---- the same rules for images outside the labelled source (the review pool) -----------------------
def private_rows(spec: Spec) -> pl.Expr:
    """True for the rows ``curation.privacy`` excludes: an excluded camera or scene, or no camera
    while ``drop_missing_camera`` is set."""
    privacy = spec.curation.privacy
    private = pl.col("camera").is_in(privacy.exclude_cameras).fill_null(False) | pl.col("scene").is_in(
        privacy.exclude_scenes).fill_null(False)
    if privacy.drop_missing_camera:
        private = private | pl.col("camera").is_null()
    return private


def drop_private(frame: pl.DataFrame, spec: Spec) -> tuple[pl.DataFrame, int]:
    """(the rows ``curation.privacy`` keeps, how many it excluded)."""
    if frame.height == 0:
        return frame, 0
    private = private_rows(spec)
    return frame.filter(~private), int(frame.select(private.sum()).item())


def near_duplicates_of(frame: pl.DataFrame, reference: pl.DataFrame, max_distance: int) -> set[int]:
    """Row indices of ``frame`` whose perceptual hash (``phash``) is within ``max_distance`` of one in
    ``reference``; rows without a hash never match, and hashes of different lengths match nothing."""
    from conveyor.data.neardup import near_duplicate_pairs

    ph = frame["phash"].fill_null("").to_list()
    lph = reference["phash"].fill_null("").to_list()
    idx = [i for i, h in enumerate(ph) if h]
    lidx = [h for h in lph if h]
    if not idx or not lidx or len({len(ph[i]) for i in idx} | {len(h) for h in lidx}) != 1:
        return set()
    return {idx[a] for a, _, _ in near_duplicate_pairs([ph[i] for i in idx], max_distance, lidx)}
