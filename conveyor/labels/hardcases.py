"""Hard cases: the uncertainty record and measures of raw model outputs, and the review sampler.

Uncertainty measures
--------------------
Every score lies in [0, 1] and is HIGHER when the model is LESS sure:

* ``least_confidence`` -- ``1 - p1``, with ``p1`` the largest class probability.
* ``margin`` -- ``1 - (p1 - p2)``: close to 1 when the two best classes are nearly tied, so it
  ranks a two-way confusion above a flat, many-way one.
* ``entropy`` -- Shannon entropy of the distribution divided by ``log K`` (the uniform maximum):
  highest for a flat distribution over all classes.

Per task kind (probabilities from a numerically stable softmax in float64; ``TaskKind.score`` in
``conveyor/kinds/<kind>/serving.py``, which also makes the kind's machine labels):

* classification: the measures of the softmax of the logits; ``confidence`` is ``p1``.
* detection: each box scoring at least ``floor`` is a yes/no decision with probability ``s``;
  an image is as uncertain as its most uncertain box (``1 - max(s, 1-s)``, ``1 - |2s - 1|``,
  binary entropy in bits). ``confidence`` is the least sure of those decisions.
* segmentation: the per-pixel measures averaged over the image; ``confidence`` is the mean
  of the per-pixel maximum probability.

The sampler (:func:`select_hard_cases`) first collapses near-duplicates (perceptual hashes within
a Hamming distance; each cluster is represented by its most uncertain image), then fills the
review budget with quotas of four strategies -- uncertainty, challenger disagreement, rare
classes, diversity (farthest-point sampling over image statistics and camera) -- passing unused
quota on to the next strategy. Everything is deterministic for the same input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

MEASURES = ("least_confidence", "margin", "entropy")
STRATEGIES = ("uncertainty", "disagreement", "rare", "diversity")
STAT_COLUMNS = ("brightness", "contrast", "saturation", "sharpness", "hue")


@dataclass(frozen=True)
class Scored:
    """What one image's raw model outputs say, and how unsure the model is about it."""

    predicted: str | None
    classes: tuple[str, ...]
    confidence: float
    least_confidence: float
    margin: float
    entropy: float

    def uncertainty(self, measure: str) -> float:
        """The score of one of :data:`MEASURES` (higher = less sure)."""
        if measure not in MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}; expected one of {MEASURES}")
        return float(getattr(self, measure))


# ---- scoring ------------------------------------------------------------------------------------
# The per-kind scores (and machine labels) live with the task kind (``TaskKind.score``,
# ``TaskKind.machine_label``, e.g. :mod:`conveyor.kinds.detection.serving`); these are the numeric
# pieces they share.

def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """A numerically stable softmax in float64."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def unit_interval(v: float) -> float:
    """``v`` clipped to [0, 1] as a Python float."""
    return float(min(1.0, max(0.0, float(v))))


def class_name(classes: Sequence[str], i: int) -> str:
    """The name of class index ``i`` (the index itself as text when it is out of range)."""
    return str(classes[i]) if 0 <= i < len(classes) else str(i)


def uncertainty_measures(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(p1, least_confidence, margin, normalised entropy)`` along axis 0 of probabilities ``p``."""
    k = p.shape[0]
    top = np.sort(p, axis=0)
    p1 = top[-1]
    margin = 1.0 - (p1 - top[-2]) if k > 1 else np.zeros_like(p1)
    if k > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=0)
        entropy = h / np.log(k)
    else:
        entropy = np.zeros_like(p1)
    return p1, 1.0 - p1, margin, entropy


def score_outputs(task: str, outputs: Mapping[str, np.ndarray], classes: Sequence[str]) -> Scored:
    """Score one image's raw ONNX outputs with the task kind ``task`` (with or without the batch
    dimension); ValueError for an unknown kind."""
    from conveyor import kinds

    return kinds.get(task).score(outputs, classes)


# ---- rare classes -------------------------------------------------------------------------------

def rare_classes(counts: Mapping[str, int], classes: Sequence[str], share: float) -> set[str]:
    """Classes never labelled yet, or whose share of the labelled counts is below ``share``."""
    total = sum(int(v) for v in counts.values())
    if total <= 0:
        return set(classes)
    return {c for c in classes if int(counts.get(c, 0)) == 0 or int(counts.get(c, 0)) / total < share}


# ---- the sampler --------------------------------------------------------------------------------

@dataclass
class Selection:
    """The review queue chosen from a pool, and how it was chosen."""

    selected: pl.DataFrame
    considered: int
    collapsed: int
    quotas: dict[str, int] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"considered": self.considered, "collapsed": self.collapsed, "quotas": dict(self.quotas),
                "taken": dict(self.taken), "selected": self.selected.height}


def _quotas(budget: int, mix: Mapping[str, float]) -> dict[str, int]:
    unknown = sorted(set(mix) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown hard-case strategies {unknown}; expected {list(STRATEGIES)}")
    weights = [float(mix.get(k, 0.0)) for k in STRATEGIES]
    if any(not np.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"hard-case mix weights must be finite and >= 0, got {dict(mix)}")
    total = sum(weights)
    if total <= 0:
        raise ValueError("hard-case mix weights sum to 0")
    raw = [budget * w / total for w in weights]
    base = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - base[i]), i))
    for i in order[: budget - sum(base)]:
        base[i] += 1
    return dict(zip(STRATEGIES, base))


def _column(pool: pl.DataFrame, name: str, dtype: type[pl.DataType]) -> list[Any]:
    if name not in pool.columns:
        return [None] * pool.height
    return pool.get_column(name).cast(dtype, strict=False).to_list()


def _representatives(phash: list[str | None], unc: list[float | None], hashes: list[str],
                     max_distance: int) -> list[int]:
    """One row index per near-duplicate cluster: its most uncertain row."""
    from conveyor.data.neardup import near_pairs

    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    have = [i for i in range(n) if phash[i]]
    for i, j, _ in near_pairs([str(phash[k]) for k in have], max_distance):
        a, b = find(have[i]), find(have[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    best: dict[int, int] = {}
    for i in range(n):
        r = find(i)
        if r not in best or _unc_key(i, unc, hashes) < _unc_key(best[r], unc, hashes):
            best[r] = i
    return sorted(best.values(), key=lambda i: hashes[i])


def _unc_key(i: int, unc: list[float | None], hashes: list[str]) -> tuple[int, float, str]:
    u = unc[i]
    return (1, 0.0, hashes[i]) if u is None else (0, -u, hashes[i])


def _features(pool: pl.DataFrame) -> np.ndarray | None:
    """Z-scored image statistics plus one-hot camera, ``None`` without any usable statistic."""
    cols = []
    for name in STAT_COLUMNS:
        if name not in pool.columns:
            continue
        v = np.array(_column(pool, name, pl.Float64), dtype=np.float64)
        ok = np.isfinite(v)
        if ok.sum() == 0:
            continue
        sd = float(v[ok].std())
        if sd <= 0:
            continue
        cols.append(np.where(ok, (v - v[ok].mean()) / sd, 0.0))
    if not cols:
        return None
    cams = _column(pool, "camera", pl.Utf8)
    for cam in sorted({c for c in cams if c is not None}):
        cols.append(np.array([1.0 if c == cam else 0.0 for c in cams]))
    return np.stack(cols, axis=1)


def select_hard_cases(pool: pl.DataFrame, *, budget: int, mix: Mapping[str, float], measure: str,
                      rare: set[str] | frozenset[str] = frozenset(), max_distance: int = 2,
                      seed: int = 0) -> Selection:
    """Choose up to ``budget`` pool rows for human review (see the module docstring).

    ``seed`` breaks exact distance ties in diversity sampling (seed 0: smallest content hash).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; expected one of {MEASURES}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    quotas = _quotas(int(budget), mix)
    taken = {k: 0 for k in STRATEGIES}
    n = pool.height
    extra = {"reason": pl.Utf8, "priority": pl.Int64, "score": pl.Float64}
    base = pool.drop([c for c in extra if c in pool.columns])
    empty = base.head(0).with_columns([pl.lit(None, dtype=t).alias(c) for c, t in extra.items()])
    if budget == 0 or n == 0:
        return Selection(empty, n, 0, quotas, taken)

    hashes = [str(h) for h in _column(pool, "content_hash", pl.Utf8)]
    unc = _column(pool, measure, pl.Float64)
    unc = [None if u is None or not np.isfinite(u) else float(u) for u in unc]
    reps = _representatives(_column(pool, "phash", pl.Utf8), unc, hashes, max_distance)
    predicted = _column(pool, "predicted", pl.Utf8)
    challenger = _column(pool, "challenger_predicted", pl.Utf8)
    if "pred_classes" in pool.columns:
        pc = pool.get_column("pred_classes").to_list()
    else:
        pc = [None] * n
    present = [set(p) if p is not None else ({predicted[i]} if predicted[i] is not None else set())
               for i, p in enumerate(pc)]

    picks: list[tuple[int, str, float | None]] = []
    chosen: set[int] = set()
    # uncertainty, disagreement and rare consider only rows a model scored, most uncertain first
    scored = [i for i in sorted(reps, key=lambda i: _unc_key(i, unc, hashes)) if unc[i] is not None]

    def take_ordered(name: str, rows: list[int], want: int) -> int:
        got = 0
        for i in rows:
            if got >= want:
                break
            if i not in chosen:
                chosen.add(i)
                picks.append((i, name, unc[i]))
                got += 1
        taken[name] += got
        return got

    feats = _features(pool)
    cams = _column(pool, "camera", pl.Utf8)

    def take_diverse(want: int) -> int:
        cand = [i for i in reps if i not in chosen]  # content_hash order
        want = min(want, len(cand))
        if want <= 0:
            return 0
        if feats is None:  # round-robin over cameras, fewest already chosen first
            groups: dict[str, list[int]] = {}
            for i in cand:
                groups.setdefault("" if cams[i] is None else "\x01" + str(cams[i]), []).append(i)
            load = {g: sum(1 for j in chosen if ("" if cams[j] is None else "\x01" + str(cams[j])) == g)
                    for g in groups}
            for _ in range(want):
                g = min((g for g in groups if groups[g]), key=lambda g: (load[g], g))
                i = groups[g].pop(0)
                load[g] += 1
                chosen.add(i)
                picks.append((i, "diversity", None))
            taken["diversity"] += want
            return want
        x = feats[cand]
        if chosen:
            dist = np.full(len(cand), np.inf)
            for j in sorted(chosen):
                dist = np.minimum(dist, np.sqrt(((x - feats[j]) ** 2).sum(-1)))
        else:
            dist = np.sqrt(((x - feats.mean(axis=0)) ** 2).sum(-1))
        alive = np.ones(len(cand), dtype=bool)
        for _ in range(want):
            d = np.where(alive, dist, -np.inf)
            ties = np.flatnonzero(d == d.max())
            k = int(ties[seed % len(ties)])
            i = cand[k]
            chosen.add(i)
            picks.append((i, "diversity", float(dist[k])))
            alive[k] = False
            dist = np.minimum(dist, np.sqrt(((x - x[k]) ** 2).sum(-1)))
        taken["diversity"] += want
        return want

    carry = 0
    for name in STRATEGIES:
        want = quotas[name] + carry
        if name == "uncertainty":
            got = take_ordered(name, scored, want)
        elif name == "disagreement":
            rows = [i for i in scored if challenger[i] is not None and challenger[i] != predicted[i]]
            got = take_ordered(name, rows, want)
        elif name == "rare":
            rows = [i for i in scored if present[i] & set(rare)] if rare else []
            got = take_ordered(name, rows, want)
        else:
            got = take_diverse(want)
        carry = want - got
    if carry > 0:
        carry -= take_ordered("uncertainty", scored, carry)
    if carry > 0:
        take_diverse(carry)

    order = [i for i, _, _ in picks]
    selected = base[order].with_columns(
        pl.Series("reason", [r for _, r, _ in picks], dtype=pl.Utf8),
        pl.Series("priority", list(range(1, len(picks) + 1)), dtype=pl.Int64),
        pl.Series("score", [s for _, _, s in picks], dtype=pl.Float64),
    )
    return Selection(selected, n, n - len(reps), quotas, taken)
