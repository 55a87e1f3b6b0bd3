"""The split stage: deterministic, grouped train/val/test assignment with a frozen evaluation set.

Groups are cameras, scenes or time windows (``split.group_by``); a whole group always lands in
one split, so no camera, scene or window leaks across splits. With ``split.frozen_eval`` the
assignment is kept in the workspace, keyed by image content hash and by group: once an image or
a group is assigned it keeps its split in every later cycle, even if the file is renamed or
uploaded again. Images of groups never seen before go to train (``new_groups_to: train``) or are
assigned by the ratios (``new_groups_to: ratio``). A new image that is a near-duplicate of a
frozen evaluation image takes that image's split, so it cannot reach train.

Each cycle compares its evaluation set (val+test, by content hash) with the last cycle's, kept in
the workspace state beside the frozen assignments (``eval_set.parquet``): the sizes and the frozen
evaluation images that are gone (deleted or quarantined) land in :class:`EvalSetChange`, in the
split summary, and the data contracts fail when more than ``split.max_eval_loss`` of the last set
is gone. A loss above that limit stays owed: the lost images remain in the stored set, so the next
cycle still counts them until they come back or the limit is raised for a cycle to accept it.

Machine labels (``label_source`` ``machine``, from auto-labelling) train and never evaluate: they
do not count when groups are assigned, a group of machine labels only goes to train, and a
machine-labelled image whose group is in val or test is held out of the split (counted in
``held_out_machine``), so neither the evaluation set nor the grouping changes because of them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from conveyor import kinds
from conveyor.core.spec import Spec, parse_duration_s
from conveyor.data.digest import annotation_digest
from conveyor.data.neardup import near_duplicate_pairs
from conveyor.core.io import atomic_write_json, stable_hash, write_parquet_atomic

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
STATE_FILE = "frozen_split.parquet"
EVAL_SET_FILE = "eval_set.parquet"
_EVAL_SET_SCHEMA = {"dataset_version": pl.Utf8, "content_hash": pl.Utf8, "split": pl.Utf8, "path": pl.Utf8}
_STATE_SCHEMA = {"content_hash": pl.Utf8, "phash": pl.Utf8, "group": pl.Utf8, "split": pl.Utf8, "first_dataset": pl.Utf8}


class SplitError(ValueError):
    """The data cannot be split as the spec asks (e.g. fewer groups than splits)."""


@dataclass(frozen=True)
class LostImage:
    """A frozen evaluation image of the last cycle that this cycle's split no longer holds."""

    content_hash: str
    split: str
    path: str


@dataclass(frozen=True)
class EvalSetChange:
    """This cycle's evaluation set (val+test) against the last cycle's, by size and content hash."""

    previous_dataset: str
    previous_size: int
    size: int
    lost: tuple[LostImage, ...] = ()
    max_loss: float = 0.0

    @property
    def lost_fraction(self) -> float:
        return len(self.lost) / self.previous_size if self.previous_size else 0.0

    @property
    def exceeded(self) -> bool:
        return self.lost_fraction > self.max_loss

    def describe(self) -> str:
        return (f"evaluation set: {len(self.lost)} of {self.previous_size} frozen val/test images of dataset "
                f"{self.previous_dataset} are gone ({self.lost_fraction:.1%}, limit split.max_eval_loss="
                f"{self.max_loss:.1%}); {self.size} now")

    def to_dict(self) -> dict:
        return {**asdict(self), "lost": [asdict(x) for x in self.lost], "lost_count": len(self.lost),
                "lost_fraction": self.lost_fraction, "exceeded": self.exceeded}

    @classmethod
    def from_dict(cls, d: dict) -> "EvalSetChange":
        return cls(previous_dataset=str(d["previous_dataset"]), previous_size=int(d["previous_size"]),
                   size=int(d["size"]), lost=tuple(LostImage(**x) for x in d.get("lost", [])),
                   max_loss=float(d.get("max_loss", 0.0)))


@dataclass(frozen=True)
class SplitResult:
    split_version: str
    split_path: str
    summary_path: str
    counts: dict[str, int]
    groups: dict[str, int]
    per_class: dict[str, dict[str, int]]
    new_assignments: int
    frozen_images: int
    eval_hash: str = field(default="")
    held_out_machine: int = 0
    eval_change: EvalSetChange | None = None  # None: no earlier cycle to compare with

    def to_dict(self) -> dict:
        return asdict(self)


def class_occurrences(df: pl.DataFrame, task: str) -> pl.DataFrame:
    """One row (split, cls) per occurrence of a class, as the task kind counts them (an image's
    label, a box, an image whose mask contains the class ...)."""
    return kinds.get(task).class_frame(df)


def group_keys(df: pl.DataFrame, spec: Spec) -> pl.Series:
    """The group of each row: its camera, scene, time window or (``none``) its own content hash."""
    by = spec.split.group_by
    if by == "none":
        return df["content_hash"].alias("group")
    if by in ("camera", "scene"):
        return df[by].cast(pl.Utf8).fill_null("(unknown)").map_elements(lambda v: f"{by}:{v}", return_dtype=pl.Utf8).alias("group")
    window = int(parse_duration_s(spec.split.time_window))
    out = []
    for ts in df["captured_at"].to_list():
        if ts is None:
            out.append("time:(unknown)")
            continue
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        start = int(ts.timestamp()) // window * window
        out.append("time:" + datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return pl.Series("group", out, dtype=pl.Utf8)


def _order_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def assign_by_ratio(sizes: dict[str, int], ratios: dict[str, float], seed: int, start: dict[str, int] | None = None) -> dict[str, str]:
    """Assign whole groups to splits so that image counts approach the ratios.

    Groups are visited in a seeded hash order; each goes to the split furthest below its target,
    relative to that target. Ties go to train, then test, then val, so two groups fill train and
    test and three fill every split.
    """
    current = {s: (start or {}).get(s, 0) for s in SPLITS}
    total = sum(current.values()) + sum(sizes.values())
    out: dict[str, str] = {}
    for g in sorted(sizes, key=lambda g: _order_key(seed, g)):
        best, best_deficit = None, None
        for s in ("train", "test", "val"):
            if ratios[s] <= 0:
                continue
            target = ratios[s] * total
            deficit = (target - current[s]) / target
            if best_deficit is None or deficit > best_deficit + 1e-12:
                best, best_deficit = s, deficit
        out[g] = best
        current[best] += sizes[g]
    return out


def load_state(state_dir: str | Path) -> pl.DataFrame:
    p = Path(state_dir) / STATE_FILE
    if p.exists():
        return pl.read_parquet(p)
    return pl.DataFrame(schema=_STATE_SCHEMA)


def frozen_eval_hashes(state_dir: str | Path, exclude_dataset: str | None = None) -> frozenset[str]:
    """Content hashes of the frozen val/test images (curation keeps these over later copies).

    ``exclude_dataset`` leaves out the images that dataset version itself froze, so rerunning a
    dataset sees the same set as its first run did (and its cached curation stays valid).
    """
    st = load_state(state_dir).filter(pl.col("split").is_in(EVAL_SPLITS))
    if exclude_dataset is not None:
        st = st.filter(pl.col("first_dataset") != exclude_dataset)
    return frozenset(st["content_hash"].to_list())


def frozen_state_key(state_dir: str | Path, dataset_version: str) -> str:
    """A key of the frozen assignments a split of ``dataset_version`` starts from: the state rows
    other dataset versions wrote (this version's own rows are its output, so a rerun keys the same),
    and the evaluation set it is compared with."""
    st = load_state(state_dir).filter(pl.col("first_dataset") != dataset_version)
    key = stable_hash(st.sort(st.columns).rows()) if st.height else "empty"
    ref = previous_eval_set(state_dir, dataset_version)
    return key if ref.height == 0 else stable_hash([key, ref.sort(ref.columns).rows()])


def load_eval_sets(state_dir: str | Path) -> pl.DataFrame:
    p = Path(state_dir) / EVAL_SET_FILE
    if p.exists():
        return pl.read_parquet(p)
    return pl.DataFrame(schema=_EVAL_SET_SCHEMA)


def previous_eval_set(state_dir: str | Path, dataset_version: str) -> pl.DataFrame:
    """The evaluation set a split of ``dataset_version`` is compared with: the one the last other
    dataset version stored (a rerun of a version compares with the same set as its first run)."""
    sets = load_eval_sets(state_dir).filter(pl.col("dataset_version") != dataset_version)
    if sets.height == 0:
        return sets
    last = sets["dataset_version"][-1]
    return sets.filter(pl.col("dataset_version") == last)


def compare_eval_sets(previous: pl.DataFrame, current: pl.DataFrame, max_loss: float) -> EvalSetChange | None:
    """``current``'s evaluation rows (content_hash, split, path) against ``previous``'s stored set."""
    if previous.height == 0:
        return None
    now = set(current["content_hash"].to_list())
    gone = previous.filter(~pl.col("content_hash").is_in(list(now))).sort("path")
    lost = tuple(LostImage(content_hash=h, split=s, path=p)
                 for h, s, p in gone.select("content_hash", "split", "path").rows())
    return EvalSetChange(previous_dataset=str(previous["dataset_version"][0]), previous_size=previous.height,
                         size=current.height, lost=lost, max_loss=float(max_loss))


def _store_eval_set(state_dir: str | Path, dataset_version: str, current: pl.DataFrame,
                    previous: pl.DataFrame, change: EvalSetChange | None) -> None:
    """Keep this version's evaluation set (and the one before it, for reruns of this version). A
    loss above the limit stays owed: the lost rows are kept in the stored set."""
    rows = current.select("content_hash", "split", "path")
    if change is not None and change.exceeded:
        owed = previous.filter(pl.col("content_hash").is_in([x.content_hash for x in change.lost]))
        rows = pl.concat([rows, owed.select("content_hash", "split", "path")], how="vertical_relaxed")
    rows = rows.unique("content_hash", keep="first", maintain_order=True).with_columns(
        pl.lit(dataset_version).alias("dataset_version")).select(list(_EVAL_SET_SCHEMA))
    keep = pl.concat([previous.select(list(_EVAL_SET_SCHEMA)), rows], how="vertical_relaxed") \
        if previous.height else rows
    os.makedirs(state_dir, exist_ok=True)
    write_parquet_atomic(keep, Path(state_dir) / EVAL_SET_FILE)


def read_eval_change(split_path: str | Path) -> EvalSetChange | None:
    """The :class:`EvalSetChange` recorded in the summary beside a split table (None: none)."""
    import json

    p = Path(split_path).parent / "summary.json"
    if not p.exists():
        return None
    d = json.loads(p.read_text()).get("eval_set")
    return EvalSetChange.from_dict(d) if d else None


def split(
    curated_path: str | Path,
    spec: Spec,
    out_root: str | Path,
    state_dir: str | Path,
    dataset_version: str,
    classes: list[str] | None = None,
) -> SplitResult:
    df = pl.read_parquet(curated_path).sort("id")
    if df.height == 0:
        raise SplitError(f"nothing to split: {curated_path} has no rows")
    df = df.with_columns(group_keys(df, spec))
    ratios = dict(spec.split.ratios)
    seed = spec.split.seed
    frozen = spec.split.frozen_eval
    state = load_state(state_dir) if frozen else pl.DataFrame(schema=_STATE_SCHEMA)

    by_hash = dict(zip(state["content_hash"].to_list(), state["split"].to_list()))
    by_group = dict(zip(state["group"].to_list(), state["split"].to_list()))

    hashes = df["content_hash"].to_list()
    groups = df["group"].to_list()
    machine = (df["label_source"] == "machine").fill_null(False).to_list() if "label_source" in df.columns \
        else [False] * df.height
    assigned: list[str | None] = [by_hash.get(h) or by_group.get(g) for h, g in zip(hashes, groups)]

    # Near-duplicates of frozen evaluation images take that image's split, and pull their group along.
    pending_idx = [i for i, a in enumerate(assigned) if a is None]
    group_forced: dict[str, str] = {}
    eval_state = state.filter(pl.col("split").is_in(EVAL_SPLITS))
    if pending_idx and eval_state.height:
        pend_ph = [df["phash"][i] for i in pending_idx]
        eval_ph = eval_state["phash"].to_list()
        eval_split = eval_state["split"].to_list()
        if len({len(h) for h in pend_ph + eval_ph}) == 1:
            md = spec.curation.near_duplicates.max_distance
            for a, b, _ in near_duplicate_pairs(pend_ph, md, eval_ph):
                group_forced.setdefault(groups[pending_idx[a]], eval_split[b])

    # Groups not decided yet.
    new_sizes: dict[str, int] = {}
    machine_only: set[str] = set()
    for i in pending_idx:
        g = groups[i]
        if g not in group_forced and not machine[i]:
            new_sizes[g] = new_sizes.get(g, 0) + 1
        elif g not in group_forced:
            machine_only.add(g)
    machine_only -= set(new_sizes)
    first_cycle = state.height == 0
    if first_cycle or spec.split.new_groups_to == "ratio":
        start = {s: sum(1 for a in assigned if a == s) for s in SPLITS}
        if spec.split.group_by == "none" and first_cycle:
            # Each image is its own group: stratify by label so every class reaches val and test.
            labels = df["label"].to_list()
            decided: dict[str, str] = {}
            for lab in sorted(set(labels[i] for i in pending_idx)):
                sizes = {groups[i]: 1 for i in pending_idx if labels[i] == lab and groups[i] in new_sizes}
                decided.update(assign_by_ratio(sizes, ratios, seed))
        else:
            decided = assign_by_ratio(new_sizes, ratios, seed, start=start)
    else:
        decided = {g: "train" for g in new_sizes}
    decided.update(group_forced)
    decided.update({g: "train" for g in machine_only})  # a group of machine labels only never evaluates
    for i in pending_idx:
        assigned[i] = decided[groups[i]]

    df = df.with_columns(pl.Series("split", assigned, dtype=pl.Utf8))
    held = pl.Series([m and a in EVAL_SPLITS for m, a in zip(machine, assigned)])
    held_out_machine = int(held.sum())
    if held_out_machine:  # machine labels never reach val or test
        df = df.filter(~held)
        hashes, groups, assigned = df["content_hash"].to_list(), df["group"].to_list(), df["split"].to_list()
    present = {s for s in assigned}
    if first_cycle and not {"train", "test"} <= present:
        raise SplitError(
            f"split.group_by={spec.split.group_by}: {df['group'].n_unique()} group(s) cannot fill train and test; "
            "add data from more groups or choose another group_by"
        )

    split_version = stable_hash(
        {"rows": list(zip(df["id"].to_list(), hashes, df["label"].to_list(), groups, assigned)), "spec": spec.section_hash("split"),
         # boxes or masks: changed annotations are a new split version (training must not reuse a stale model)
         "annotations": annotation_digest(df, spec.task)}
    )
    out_dir = Path(out_root) / split_version
    out_dir.mkdir(parents=True, exist_ok=True)
    split_path = write_parquet_atomic(df, out_dir / "split.parquet")

    new_rows = df.filter(~pl.col("content_hash").is_in(list(by_hash)))
    if frozen and new_rows.height:
        add = new_rows.select("content_hash", "phash", "group", "split").unique("content_hash", keep="first", maintain_order=True)
        add = add.with_columns(pl.lit(dataset_version).alias("first_dataset"))
        os.makedirs(state_dir, exist_ok=True)
        write_parquet_atomic(pl.concat([state, add], how="vertical_relaxed"), Path(state_dir) / STATE_FILE)

    occ = class_occurrences(df, spec.task)
    class_list = classes or sorted(set(occ["cls"].to_list()))
    counts = {s: int((df["split"] == s).sum()) for s in SPLITS}
    n_groups = {s: int(df.filter(pl.col("split") == s)["group"].n_unique()) for s in SPLITS}
    per_class = {
        s: {c: int(((occ["split"] == s) & (occ["cls"] == c)).sum()) for c in class_list} for s in SPLITS
    }
    eval_rows = df.filter(pl.col("split").is_in(EVAL_SPLITS))
    eval_hash = stable_hash(sorted(eval_rows.select("content_hash", "split").rows()))
    eval_change: EvalSetChange | None = None
    if frozen:
        previous = previous_eval_set(state_dir, dataset_version)
        eval_change = compare_eval_sets(previous, eval_rows, spec.split.max_eval_loss)
        _store_eval_set(state_dir, dataset_version, eval_rows, previous, eval_change)
    summary = {
        "split_version": split_version,
        "group_by": spec.split.group_by,
        "counts": counts,
        "groups": n_groups,
        "per_class": per_class,
        "new_assignments": new_rows.height,
        "frozen_images": len(by_hash),
        "eval_hash": eval_hash,
        "held_out_machine": held_out_machine,
        "eval_set": eval_change.to_dict() if eval_change is not None else None,
    }
    summary_path = atomic_write_json(out_dir / "summary.json", summary)
    return SplitResult(
        split_version=split_version,
        split_path=str(split_path),
        summary_path=str(summary_path),
        counts=counts,
        groups=n_groups,
        per_class=per_class,
        new_assignments=new_rows.height,
        frozen_images=len(by_hash),
        eval_hash=eval_hash,
        held_out_machine=held_out_machine,
        eval_change=eval_change,
    )
