"""The gate: absolute rules and champion-vs-challenger rules on the same frozen evaluation set."""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from conveyor import kinds
from conveyor.core.spec import METRIC_DIRECTIONS, RUNTIME_METRICS, Spec
from conveyor.core.summary import SLICED_FIELDS

# How a run reports each gate decision. "pending" is a challenger that passed the gate and waits for a
# reviewer (gates.require_approval); it is the cycle's decision, never the gate's.
DECISION_WORDS = {"promote": "promoted", "reject": "rejected", "skip": "skipped", "pending": "pending_approval"}

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class RuleOutcome:
    rule: str
    kind: str  # "absolute" | "champion" | "history" (a rolled-back version)
    metric: str
    op: str
    threshold: float | None
    value: float | None
    passed: bool
    reason: str
    champion_value: float | None = None
    # Sliced gates (gates.slices) and the paired bootstrap of the champion comparison. ``passed`` says
    # whether the outcome lets the challenger through; ``status`` says whether it was judged at all:
    # "pass" | "fail" | "too small to judge" | "not sliceable" ("" on outcomes without a slice).
    status: str = ""
    slice: str | None = None  # e.g. "camera cam-03"; None: the whole test split
    n: int | None = None  # test images the outcome was measured on (slices)
    delta: float | None = None  # challenger minus champion
    ci_low: float | None = None  # paired bootstrap 95% interval of ``delta``
    ci_high: float | None = None

    @property
    def result(self) -> str:
        """How a report shows it: "pass", "fail", "too small to judge" or "not sliceable"."""
        return self.status or ("pass" if self.passed else "fail")

    def to_dict(self) -> dict[str, Any]:
        """The outcome's fields; those of slices and intervals only where set (the form outcomes always had)."""
        return {k: v for k, v in asdict(self).items() if k not in SLICED_FIELDS or v not in (None, "")}


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    decision: str  # "promote" | "reject" | "skip"
    outcomes: list[RuleOutcome] = field(default_factory=list)
    champion_version: int | None = None
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "decision": self.decision,
            "champion_version": self.champion_version,
            "summary": self.summary,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateDecision":
        """The decision as the registry stores it (``to_dict``)."""
        return cls(bool(d["passed"]), str(d["decision"]), [RuleOutcome(**o) for o in d.get("outcomes") or []],
                   d.get("champion_version"), str(d.get("summary") or ""))


def _value(metrics: dict[str, float], key: str) -> float | None:
    v = metrics.get(key)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _direction(key: str) -> str:
    return METRIC_DIRECTIONS[key.split("[", 1)[0]]


# ---- slices and the paired bootstrap ---------------------------------------------------------------
NOT_JUDGED = ("too small to judge", "not sliceable")
INTERVAL = 0.95


@dataclass(frozen=True)
class SliceEvidence:
    """Per-image prediction records of the challenger and the champion (None: no champion) on the same
    frozen test rows, aligned row by row on the image id, with the split table's columns to slice by."""

    challenger: pl.DataFrame
    champion: pl.DataFrame | None
    classes: tuple[str, ...]


def slice_evidence(split_path: str | Path, challenger_predictions: str | Path,
                   champion_predictions: str | Path | None, columns: Sequence[str], classes: Sequence[str],
                   split: str = "test", champion_subset: bool = False) -> SliceEvidence:
    """Join the evaluations' predictions parquets (``conveyor.model.evaluate``) with the ``columns`` of
    the split table's ``split`` rows. Both models must have been scored on the same images, unless
    ``champion_subset``: the champion's evaluation left out the images of classes it does not know,
    and the evidence then covers the images both models were scored on."""
    rows = pl.read_parquet(split_path).filter(pl.col("split") == split)
    chal = pl.read_parquet(challenger_predictions).sort("id")
    keep = [c for c in dict.fromkeys(columns) if c in rows.columns and c not in chal.columns]
    chal = chal.join(rows.select(["id", *keep]).unique("id", keep="first"), on="id", how="left")
    champ = None
    if champion_predictions is not None:
        champ = pl.read_parquet(champion_predictions).sort("id")
        if champion_subset and set(champ["id"]) < set(chal["id"]):
            chal = chal.filter(pl.col("id").is_in(champ["id"].implode()))
        if champ["id"].to_list() != chal["id"].to_list():
            raise ValueError(f"the champion's predictions ({champion_predictions}) are not on the same test images as "
                             f"the challenger's ({challenger_predictions}): a paired comparison needs the same rows")
    return SliceEvidence(chal, champ, tuple(classes))


def gate_evidence(spec: Spec, split_path: str | Path | None, predictions: str | Path | None,
                  champion_predictions: str | Path | None, classes: Sequence[str] | None,
                  champion_subset: bool = False) -> SliceEvidence | None:
    """The per-image evidence the gate uses, when it uses any: with ``gates.slices``, or with a champion
    scored on the same rows (the paired intervals of the champion comparison). None without predictions."""
    if split_path is None or predictions is None or classes is None:
        return None
    if not spec.gates.slices and champion_predictions is None:
        return None
    return slice_evidence(split_path, predictions, champion_predictions, spec.gates.slices, classes,
                          champion_subset=champion_subset)


def paired_bootstrap(kind: kinds.TaskKind, challenger: pl.DataFrame, champion: pl.DataFrame,
                     classes: Sequence[str], keys: Sequence[str], resamples: int, seed: int
                     ) -> dict[str, tuple[float, float]]:
    """The 95% percentile interval of challenger minus champion for each metric in ``keys``, resampling
    the same images for both models (paired); the kind computes the metrics (``slice_metrics``)."""
    n = challenger.height
    rng = np.random.default_rng(seed)
    deltas = {k: np.full(resamples, np.nan) for k in keys}
    for b in range(resamples):
        idx = rng.integers(0, n, n)
        a = kind.slice_metrics(challenger[idx], classes)
        c = kind.slice_metrics(champion[idx], classes)
        for k in keys:
            if a.get(k) is not None and c.get(k) is not None:
                deltas[k][b] = float(a[k]) - float(c[k])
    tail = (1 - INTERVAL) / 2 * 100
    out = {}
    for k, d in deltas.items():
        d = d[~np.isnan(d)]
        out[k] = (float(np.percentile(d, tail)), float(np.percentile(d, 100 - tail))) if d.size else (math.nan, math.nan)
    return out


def _inferior(direction: str, low: float, high: float, tol: float) -> bool:
    """Non-inferiority fails when the whole interval is worse than the champion by more than ``tol``."""
    return high < -tol if direction == "higher" else low > tol


def _interval_text(key: str, delta: float, low: float, high: float, champion_version: int | None) -> str:
    return (f"{key} challenger - champion v{champion_version} = {delta:+.4g} "
            f"({INTERVAL:.0%} CI {low:+.4g} to {high:+.4g})")


def _slice_name(column: str, value: Any) -> str:
    return f"{column} {'(missing)' if value is None else value}"


def _slice_outcomes(spec: Spec, evidence: SliceEvidence | None, champion_version: int | None) -> list[RuleOutcome]:
    """Each slice of ``gates.slices``: the absolute rules, and with a champion the paired bootstrap."""
    gates = spec.gates
    if not gates.slices:
        return []
    if evidence is None:
        return [RuleOutcome(f"slices by {', '.join(gates.slices)}", "slice", "*", "==", None, None, False,
                            "the gate slices the test split, but no per-image predictions were given: "
                            "the slices were not judged", status="fail")]
    kind = kinds.get(spec.task)
    rules = [r for r in gates.parsed_rules() if r.metric not in RUNTIME_METRICS]
    champ_keys = [] if evidence.champion is None else [
        k for k in gates.champion.metrics if k.split("[", 1)[0] not in RUNTIME_METRICS]
    out: list[RuleOutcome] = []
    for key in dict.fromkeys([r.key for r in rules] + champ_keys):
        if key.split("[", 1)[0] not in kind.sliceable_metrics:
            out.append(RuleOutcome(f"{key} per slice", "slice", key, "==", None, None, True,
                                   f"{key}: not sliceable for task {spec.task!r} (no per-image decomposition); "
                                   f"judged on the whole test split only", status="not sliceable"))
    rules = [r for r in rules if r.metric in kind.sliceable_metrics]
    champ_keys = [k for k in champ_keys if k.split("[", 1)[0] in kind.sliceable_metrics]
    chal, classes, tol = evidence.challenger, list(evidence.classes), gates.champion.tolerance
    for column in gates.slices:
        if column not in chal.columns:
            out.append(RuleOutcome(f"slices by {column}", "slice", "*", "==", None, None, False,
                                   f"slice column {column!r} is not in the split table: the slices were not judged",
                                   status="fail"))
            continue
        values = chal[column].to_list()
        for value in sorted(set(values), key=lambda v: (v is None, str(v))):
            name = _slice_name(column, value)
            idx = np.array([i for i, v in enumerate(values) if v == value], dtype=np.int64)
            n = int(idx.size)
            if n < gates.min_slice_size:
                out.append(RuleOutcome(f"{name}: n >= {gates.min_slice_size}", "slice", "n", ">=",
                                       float(gates.min_slice_size), float(n), True,
                                       f"{name}: too small to judge (n={n} < {gates.min_slice_size})",
                                       status="too small to judge", slice=name, n=n))
                continue
            part = chal[idx]
            got = kind.slice_metrics(part, classes)
            for rule in rules:
                value_ = _value(got, rule.key)
                if value_ is None:
                    out.append(RuleOutcome(f"{name}: {rule}", "slice", rule.key, rule.op, rule.threshold, None, False,
                                           f"{name}: {rule.key} was not measured (n={n})", status="fail",
                                           slice=name, n=n))
                    continue
                ok = bool(_OPS[rule.op](value_, rule.threshold))
                out.append(RuleOutcome(f"{name}: {rule}", "slice", rule.key, rule.op, rule.threshold, value_, ok,
                                       f"{name}: {rule.key} = {value_:.4g} {'meets' if ok else 'fails'} {rule.op} "
                                       f"{rule.threshold:g} (n={n})", status="pass" if ok else "fail",
                                       slice=name, n=n))
            if not champ_keys:
                continue
            champ_part = evidence.champion[idx]
            base = kind.slice_metrics(champ_part, classes)
            ci = paired_bootstrap(kind, part, champ_part, classes, champ_keys, gates.bootstrap_resamples,
                                  gates.bootstrap_seed)
            for key in champ_keys:
                direction = _direction(key)
                mine, theirs = _value(got, key), _value(base, key)
                low, high = ci[key]
                if mine is None or theirs is None or math.isnan(low):
                    out.append(RuleOutcome(f"{name}: {key} vs champion", "slice-champion", key, "", -tol, mine, False,
                                           f"{name}: {key} was not measured for both models (n={n})", status="fail",
                                           champion_value=theirs, slice=name, n=n))
                    continue
                bad = _inferior(direction, low, high, tol)
                verdict = (f"worse than the champion beyond tolerance {tol:g}" if bad
                           else f"not worse than the champion beyond tolerance {tol:g}")
                op = ">=" if direction == "higher" else "<="
                out.append(RuleOutcome(f"{name}: {key} vs champion", "slice-champion", key, op,
                                       -tol if direction == "higher" else tol, mine, not bad,
                                       f"{name}: {_interval_text(key, mine - theirs, low, high, champion_version)}, "
                                       f"n={n}: {verdict}", champion_value=theirs, status="fail" if bad else "pass",
                                       slice=name, n=n, delta=mine - theirs, ci_low=low, ci_high=high))
    return out


def _with_intervals(spec: Spec, outcomes: list[RuleOutcome], evidence: SliceEvidence | None,
                    champion_version: int | None) -> list[RuleOutcome]:
    """The whole-split champion outcomes with the paired bootstrap interval of the difference (shown,
    not decided on: the whole split keeps its point rule, which is the stricter one)."""
    if evidence is None or evidence.champion is None:
        return outcomes
    kind = kinds.get(spec.task)
    keys = [o.metric for o in outcomes if o.kind == "champion" and o.value is not None
            and o.champion_value is not None and o.metric.split("[", 1)[0] in kind.sliceable_metrics]
    if not keys:
        return outcomes
    ci = paired_bootstrap(kind, evidence.challenger, evidence.champion, list(evidence.classes), keys,
                          spec.gates.bootstrap_resamples, spec.gates.bootstrap_seed)
    out = []
    for o in outcomes:
        if o.kind == "champion" and o.metric in ci:
            low, high = ci[o.metric]
            delta = o.value - o.champion_value
            o = replace(o, delta=delta, ci_low=low, ci_high=high, n=evidence.challenger.height,
                        reason=f"{o.reason}; {_interval_text(o.metric, delta, low, high, champion_version)}")
        out.append(o)
    return out


def evaluate_gate(
    spec: Spec,
    challenger: dict[str, float],
    champion: dict[str, float] | None = None,
    champion_version: int | None = None,
    evidence: SliceEvidence | None = None,
    common: Mapping[str, Any] | None = None,
) -> GateDecision:
    """Check the challenger's metrics against the spec's rules.

    With no champion (the first model) only the absolute rules apply. A metric the evaluation did
    not produce fails its rule: a missing number is never a pass. ``common`` (``EvalResult.common``
    of the challenger: its metrics on the classes the champion knows too) replaces the challenger's
    metrics in the champion comparison when the data has classes the champion does not know.

    ``evidence`` (per-image predictions of both models, :func:`slice_evidence`) adds the slices of
    ``gates.slices`` and the paired bootstrap intervals of the champion comparison; a spec that slices
    without evidence fails the gate. Slices under ``gates.min_slice_size`` images and metrics the
    kind cannot slice are reported as such and never block.
    """
    outcomes: list[RuleOutcome] = []
    rules = spec.gates.parsed_rules()
    if not rules:  # the spec refuses this; a spec built around the validation must not promote either
        return GateDecision(False, "reject", [], champion_version,
                            "no absolute gate rule: a gate with no rule promotes nothing")
    for rule in rules:
        value = _value(challenger, rule.key)
        if value is None:
            outcomes.append(RuleOutcome(str(rule), "absolute", rule.key, rule.op, rule.threshold, None, False,
                                        f"{rule.key} was not measured"))
            continue
        ok = bool(_OPS[rule.op](value, rule.threshold))
        outcomes.append(RuleOutcome(str(rule), "absolute", rule.key, rule.op, rule.threshold, value, ok,
                                    f"{rule.key} = {value:.4g} {'meets' if ok else 'fails'} {rule.op} {rule.threshold:g}"))

    on_common = ""
    compared = challenger
    if champion is not None and common:
        compared = dict(common["metrics"])
        on_common = (f" on the common classes ({', '.join(common['classes'])}; new class(es) "
                     f"{', '.join(common['left_out'])} left out of both: the champion does not know them)")
    if champion is not None:
        tol = spec.gates.champion.tolerance
        for key in spec.gates.champion.metrics:
            direction = _direction(key)
            value, champ = _value(compared, key), _value(champion, key)
            op = ">=" if direction == "higher" else "<="
            threshold = None if champ is None else (champ - tol if direction == "higher" else champ + tol)
            text = f"{key} {op} champion {'-' if direction == 'higher' else '+'} {tol:g}"
            if value is None or champ is None:
                who = "challenger" if value is None else "champion"
                outcomes.append(RuleOutcome(text, "champion", key, op, threshold, value, False,
                                            f"{key} was not measured for the {who}", champion_value=champ))
                continue
            ok = bool(_OPS[op](value, threshold))
            verb = "beats or ties" if ok else "is worse than"
            outcomes.append(RuleOutcome(text, "champion", key, op, threshold, value, ok,
                                        f"challenger {key} = {value:.4g} {verb} champion v{champion_version} "
                                        f"({champ:.4g}, tolerance {tol:g}){on_common}", champion_value=champ))

    outcomes = _with_intervals(spec, outcomes, evidence, champion_version)
    outcomes += _slice_outcomes(spec, evidence if champion is not None or evidence is None
                                else replace(evidence, champion=None), champion_version)
    passed = all(o.passed for o in outcomes)
    failed = [o for o in outcomes if not o.passed]
    judged = [o for o in outcomes if o.status not in NOT_JUDGED]
    if passed:
        summary = "all gate rules pass" + ("" if champion is not None else " (no champion yet: absolute rules only)")
    else:
        summary = f"{len(failed)} of {len(judged)} gate rules fail: " + "; ".join(o.reason for o in failed)
    if on_common:
        summary += f"; champion compared{on_common}"
    unjudged = [f"{sum(o.status == s for o in outcomes)} {what}" for s, what in
                (("too small to judge", "slices too small to judge"), ("not sliceable", "metrics not sliceable"))
                if any(o.status == s for o in outcomes)]
    if unjudged:
        summary += f" ({'; '.join(unjudged)})"
    return GateDecision(passed, "promote" if passed else "reject", outcomes, champion_version, summary)


def withdrawn_decision(withdrawal: dict[str, Any], message: str, champion_version: int | None) -> GateDecision:
    """A challenger that is a rolled-back version (the same weights): rejected whatever its metrics,
    since it already failed in production."""
    outcome = RuleOutcome("not rolled back before", "history", "rolled_back", "==", None, None, False, message)
    return GateDecision(False, "reject", [outcome], champion_version,
                        f"{message}; only a person sends it out again "
                        f"(`conveyor rollout start SPEC --version {withdrawal['version']} --force --reason TEXT`)")


def skip_decision(version: int, reason: str) -> GateDecision:
    """The challenger is already the champion: nothing to decide."""
    return GateDecision(True, "skip", [], version, reason)
