"""The gate: absolute rules and champion-vs-challenger rules on the same frozen evaluation set."""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from conveyor.core.spec import METRIC_DIRECTIONS, Spec

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def evaluate_gate(
    spec: Spec,
    challenger: dict[str, float],
    champion: dict[str, float] | None = None,
    champion_version: int | None = None,
    common: Mapping[str, Any] | None = None,
) -> GateDecision:
    """Check the challenger's metrics against the spec's rules.

    With no champion (the first model) only the absolute rules apply. A metric the evaluation did
    not produce fails its rule: a missing number is never a pass. ``common`` (``EvalResult.common``
    of the challenger: its metrics on the classes the champion knows too) replaces the challenger's
    metrics in the champion comparison when the data has classes the champion does not know.
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

    passed = all(o.passed for o in outcomes)
    failed = [o for o in outcomes if not o.passed]
    if passed:
        summary = "all gate rules pass" + ("" if champion is not None else " (no champion yet: absolute rules only)")
    else:
        summary = f"{len(failed)} of {len(outcomes)} gate rules fail: " + "; ".join(o.reason for o in failed)
    if on_common:
        summary += f"; champion compared{on_common}"
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
