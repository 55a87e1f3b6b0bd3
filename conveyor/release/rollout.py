"""Promotion, rollouts and rollback: who serves, and how a challenger gets there.

``promote`` moves the champion alias (the ``replace`` strategy, and the first model of a pipeline:
with nothing serving there is nothing to compare against). With ``shadow``, ``canary`` or
``blue_green`` a challenger that passes its gate goes through a *rollout* instead:
``start_rollout`` records it in the registry and writes ``<workspace>/state/<name>/rollout.json``,
which the inference service reads to route traffic; ``check_rollout`` computes the live metrics
(``conveyor.release.live``), decides, and ``finish_rollout`` promotes (moves the alias) or rolls back (the
alias stays). ``rollback`` points the alias back at any registered version and ends a running
rollout. The registry is the source of truth: the rollout's start and end are rows in its
``rollouts`` table, and the end and the alias move are one transaction; ``rollout.json`` is
rewritten from the registry whenever it is behind (after a crash between the two writes).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from conveyor.core import events
from conveyor.release.gate import GateDecision
from conveyor.core.timeutil import as_utc, utcnow
from conveyor.release.live import LiveMetrics, RolloutDecision, decide, live_metrics
from conveyor.release.registry import Registry, RegistryError
from conveyor.core.spec import Spec, parse_duration_s
from conveyor.core.io import atomic_write_json
from conveyor.core.workspace import Workspace

ROLLOUT_STRATEGIES = ("shadow", "canary", "blue_green")


@dataclass(frozen=True)
class PromotionResult:
    action: str  # "promoted" | "kept" | "unchanged"
    champion_version: int | None
    previous_version: int | None
    alias: str
    message: str
    rollout: dict | None = None  # a rollout this call ended (manual rollback during a rollout)

    def to_dict(self) -> dict:
        return asdict(self)


def promote(registry: Registry, name: str, version: int, decision: GateDecision, strategy: str = "replace",
            run_id: str | None = None, note: str | None = None) -> PromotionResult:
    """Move the champion alias to ``version`` when ``decision`` passed; ``note`` (e.g. who approved it)
    is added to the reason kept in the alias history."""
    current = registry.alias(name)
    if decision.decision == "skip":
        return PromotionResult("unchanged", current, current, "champion", decision.summary)
    if not decision.passed:
        return PromotionResult("kept", current, current, "champion",
                               f"v{version} rejected by the gate; champion stays v{current}" if current else
                               f"v{version} rejected by the gate; there is no champion yet")
    why = f"promoted: passed gate (deploy strategy {strategy})" + (f"; {note}" if note else "")
    previous = registry.set_alias(name, version, reason=why, run_id=run_id)
    return PromotionResult("promoted", version, previous, "champion",
                           f"v{version} is the champion" + (f" (was v{previous})" if previous else ""))


# ---- rollout state --------------------------------------------------------------------------------
class RolloutError(RuntimeError):
    """A rollout that cannot start or go on; the message says why."""


STRATEGIES = ("shadow", "canary", "blue_green")
ROLLOUT_STATUSES = ("running", "promoted", "rolled_back")


@dataclass
class RolloutState:
    """The content of ``rollout.json``, the contract with the inference service."""

    rollout_id: str
    strategy: str  # shadow | canary | blue_green
    champion: int
    challenger: int
    traffic: float
    sticky_header: str | None
    started_at: str
    ends_at: str
    status: str  # running | promoted | rolled_back
    reason: str | None
    updated_at: str
    # when a rollout still short of evidence is rolled back (ends_at + extension up to deploy.max_duration)
    deadline: str | None = None
    bake: str | None = None  # blue_green: how long the challenger serves all traffic before promotion

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "RolloutState":
        """Checked: a file the service cannot route by raises ValueError naming the field."""
        if not isinstance(d, dict):
            raise ValueError("rollout state must be a JSON object")
        if d.get("strategy") not in STRATEGIES:
            raise ValueError(f"strategy {d.get('strategy')!r} is not one of {STRATEGIES}")
        if d.get("status") not in ROLLOUT_STATUSES:
            raise ValueError(f"status {d.get('status')!r} is not one of {ROLLOUT_STATUSES}")
        traffic = float(d.get("traffic") or 0.0)
        if not 0.0 <= traffic <= 1.0:
            raise ValueError(f"traffic {traffic} is outside 0..1")

        def version(key: str) -> int | None:
            v = d.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or int(v) != v:
                raise ValueError(f"{key} {v!r} is not a version number")
            return int(v)

        text = {k: (None if d.get(k) is None else str(d[k]))
                for k in ("sticky_header", "started_at", "ends_at", "reason", "updated_at", "deadline", "bake")}
        return cls(rollout_id=str(d.get("rollout_id") or ""), strategy=d["strategy"], champion=version("champion"),
                   challenger=version("challenger"), traffic=traffic, status=d["status"], **text)

    @property
    def running(self) -> bool:
        return self.status == "running"


def _ws(ws: Workspace | str | Path) -> Workspace:
    return ws if isinstance(ws, Workspace) else Workspace(Path(ws))


def _iso(t: datetime) -> str:
    return as_utc(t).isoformat(timespec="milliseconds")


def rollout_path(ws: Workspace | str | Path, name: str) -> Path:
    return _ws(ws).state(name) / "rollout.json"


def read_state_file(path: Path) -> RolloutState | None:
    try:
        return RolloutState.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _sync(registry: Registry, name: str, path: Path) -> RolloutState | None:
    """The latest rollout as the registry records it, with ``rollout.json`` rewritten when it disagrees."""
    rows = registry.rollouts(name)
    if not rows:
        return read_state_file(path)
    latest = RolloutState.from_dict(rows[-1]["state"])
    if read_state_file(path) != latest:
        atomic_write_json(path, latest.to_dict())
    return latest


def current_state(spec: Spec, ws: Workspace | str | Path) -> RolloutState | None:
    """The pipeline's latest rollout (running or ended), or None when it never had one."""
    ws = _ws(ws)
    return _sync(Registry(ws.registry), spec.name, rollout_path(ws, spec.name))


def rollout_event(kind: str, name: str, state: RolloutState, reasons: list[str] | None = None,
                  metrics: LiveMetrics | dict | None = None, **extra: Any) -> dict[str, Any]:
    """``conveyor.rollout.<kind>`` (started, promoted, rolled_back) for ``state``."""
    payload = {"rollout_id": state.rollout_id, "strategy": state.strategy, "champion_version": state.champion,
               "challenger_version": state.challenger, "traffic": state.traffic, "started_at": state.started_at,
               "ends_at": state.ends_at, "status": state.status, "reason": state.reason, "reasons": reasons or [],
               "metrics": metrics.to_dict() if isinstance(metrics, LiveMetrics) else metrics, **extra}
    return events.make_event(f"conveyor.rollout.{kind}", name, payload)


def start_rollout(spec: Spec, ws: Workspace | str | Path, challenger_version: int,
                  now: datetime | None = None, *, force_by: str | None = None,
                  force_reason: str | None = None) -> RolloutState:
    """Start a rollout of ``challenger_version`` against the champion, as ``spec.deploy`` says.

    Refused for the ``replace`` strategy (not a rollout), without a champion, when the challenger is
    the champion, while another rollout of the pipeline runs, or when the challenger was rolled back
    before; only a person (``force_by``, with ``force_reason``) sends such a version out again, and
    that is recorded in the registry."""
    ws = _ws(ws)
    d = spec.deploy
    if d.strategy not in ROLLOUT_STRATEGIES:
        raise RolloutError(f"deploy.strategy is {d.strategy!r}: promotion replaces the champion at once, there is "
                           f"no rollout; use one of {', '.join(ROLLOUT_STRATEGIES)}")
    registry = Registry(ws.registry)
    path = rollout_path(ws, spec.name)
    _sync(registry, spec.name, path)
    champion = registry.alias(spec.name)
    if champion is None:
        raise RolloutError(f"{spec.name} has no champion yet: there is nothing to roll out against "
                           f"(the first model is promoted directly)")
    registry.get(spec.name, challenger_version)  # raises with the known versions when missing
    if challenger_version == champion:
        raise RolloutError(f"v{challenger_version} is already the champion of {spec.name}: nothing to roll out")
    now = as_utc(now or utcnow())
    state = RolloutState(
        rollout_id=uuid.uuid4().hex[:12], strategy=d.strategy, champion=champion, challenger=challenger_version,
        traffic=d.traffic if d.strategy == "canary" else 1.0, sticky_header=d.sticky_header,
        started_at=_iso(now), ends_at=_iso(now + timedelta(seconds=parse_duration_s(d.duration))),
        status="running", reason=None, updated_at=_iso(now), deadline=_iso(now + timedelta(seconds=d.max_duration_s)),
        bake=d.bake if d.strategy == "blue_green" else None)
    try:
        registry.begin_rollout(spec.name, state.to_dict(), person=force_by, reason=force_reason)
    except RegistryError as err:
        raise RolloutError(str(err)) from None
    atomic_write_json(path, state.to_dict())
    return state


@dataclass
class RolloutResult:
    state: RolloutState
    ended: bool  # this call ended the rollout (False: it had ended already, e.g. by the monitor)
    message: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.to_dict(), "ended": self.ended, "message": self.message,
                "events": [e["event"] for e in self.events]}


def finish_rollout(spec: Spec, ws: Workspace | str | Path, state: RolloutState, decision: RolloutDecision,
                   metrics: LiveMetrics | None = None, now: datetime | None = None) -> RolloutResult:
    """Promote (the champion alias moves to the challenger) or roll back (the alias stays) as
    ``decision`` says; record the end in the registry, write ``rollout.json`` and return the events.
    When the rollout had already ended (the monitor and the rollout flow race), nothing changes."""
    if decision.action not in ("promote", "rollback"):
        raise ValueError(f"decision {decision.action!r} does not end a rollout")
    ws = _ws(ws)
    registry = Registry(ws.registry)
    outcome = "promoted" if decision.action == "promote" else "rolled_back"
    final = RolloutState.from_dict({**state.to_dict(), "status": outcome, "reason": decision.reason,
                                    "updated_at": _iso(now or utcnow())})
    m = metrics.to_dict() if metrics is not None else None
    row, ended = registry.end_rollout(
        spec.name, state.rollout_id, outcome=outcome, reason=decision.reason, state=final.to_dict(),
        metrics={"live": m, "decision": decision.to_dict()},
        alias_to=state.challenger if outcome == "promoted" else None,
        alias_reason=f"promoted: {state.strategy} rollout {state.rollout_id}: {decision.reason}")
    path = rollout_path(ws, spec.name)
    if not ended:
        latest = _sync(registry, spec.name, path)
        return RolloutResult(RolloutState.from_dict(row["state"]), False,
                             f"rollout {state.rollout_id} had already ended: {row['outcome']} ({row['reason']})"
                             + ("" if latest is None or latest.rollout_id == state.rollout_id else
                                f"; the latest rollout is {latest.rollout_id} ({latest.status})"))
    atomic_write_json(path, final.to_dict())
    reasons = decision.reasons
    if outcome == "promoted":
        msg = (f"rollout {state.rollout_id} promoted: v{state.challenger} is the champion (was v{state.champion}); "
               f"{decision.reason}")
        evs = [rollout_event("promoted", spec.name, final, reasons, m),
               events.make_event("conveyor.model.promoted", spec.name, {
                   "decision": "promoted", "reason": decision.reason, "model_version": state.challenger,
                   "champion_version": state.challenger, "previous_version": state.champion,
                   "rollout_id": state.rollout_id, "strategy": state.strategy,
                   "metrics": m["challenger"] if m else None})]
    else:
        msg = (f"rollout {state.rollout_id} rolled back: champion stays v{state.champion}, v{state.challenger} "
               f"gets no traffic; {decision.reason}")
        evs = [rollout_event("rolled_back", spec.name, final, reasons, m)]
    return RolloutResult(final, True, msg, evs)


@dataclass
class RolloutCheck:
    """One look at the pipeline's rollout: its state, the live metrics and decision when it runs,
    and the result when this check ended it."""

    state: RolloutState | None
    metrics: LiveMetrics | None = None
    decision: RolloutDecision | None = None
    result: RolloutResult | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.result.events if self.result else []

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.to_dict() if self.state else None,
                "metrics": self.metrics.to_dict() if self.metrics else None,
                "decision": self.decision.to_dict() if self.decision else None,
                "result": self.result.to_dict() if self.result else None}


def check_rollout(spec: Spec, ws: Workspace | str | Path, now: datetime | None = None,
                  finish: bool = True) -> RolloutCheck:
    """Compute the running rollout's live metrics and decide; with ``finish``, end it when the decision
    is promote or rollback (a breach, or the end of the window). Nothing runs: state only."""
    ws = _ws(ws)
    state = current_state(spec, ws)
    if state is None or not state.running:
        return RolloutCheck(state)
    now = as_utc(now or utcnow())
    metrics = live_metrics(ws, spec, state, now)
    decision = decide(state, metrics, spec.deploy.alerts, now)
    out = RolloutCheck(state, metrics, decision)
    if finish and decision.action != "continue":
        out.result = finish_rollout(spec, ws, state, decision, metrics, now)
        out.state = out.result.state
    return out


# ---- manual rollback -----------------------------------------------------------------------------
def rollback(registry: Registry, name: str, to_version: int, reason: str = "manual rollback",
             workspace: Workspace | str | Path | None = None, by: str = "unknown") -> PromotionResult:
    """Point the champion alias at ``to_version``, a person's (``by``) action. A running rollout ends
    as rolled back with this reason, in the same registry transaction, and its ``rollout.json`` is
    rewritten (found in ``workspace``, by default the workspace that holds the registry). The
    version the champion moves away from (and a rolled-back rollout's challenger) is remembered as
    rolled back, so that no later cycle sends it out again by itself."""
    target = registry.get(name, to_version)  # raises with the known versions when missing
    current = registry.alias(name)
    running = registry.running_rollout(name)
    if running is None:
        if current == target.version:
            return PromotionResult("unchanged", current, current, "champion", f"v{to_version} is already the champion")
        if current is None:
            raise RegistryError(f"model {name!r} has no champion to roll back")
        previous = registry.set_alias(name, target.version, reason=reason, person=by, withdraw_previous=True)
        return PromotionResult("promoted", target.version, previous, "champion",
                               f"rolled back: champion is v{target.version} (was v{previous})")
    state = RolloutState.from_dict(running["state"])
    final = RolloutState.from_dict({**state.to_dict(), "status": "rolled_back", "reason": reason,
                                    "updated_at": _iso(utcnow())})
    row, ended = registry.end_rollout(name, state.rollout_id, outcome="rolled_back", reason=reason,
                                      state=final.to_dict(), alias_to=target.version, alias_reason=reason, person=by)
    if workspace is not None:
        path = rollout_path(workspace, name)
    else:
        path = registry.root.parent / "state" / name / "rollout.json"
    if workspace is not None or path.parent.is_dir():
        _sync(registry, name, path)
    ended_txt = (f"; rollout {state.rollout_id} ({state.strategy}, v{state.champion} vs v{state.challenger}) ended: "
                 f"rolled back" if ended else "")
    now_champion = registry.alias(name)
    if current == now_champion:
        msg = f"v{now_champion} is already the champion{ended_txt}"
        return PromotionResult("unchanged", now_champion, current, "champion", msg, row if ended else None)
    return PromotionResult("promoted", now_champion, current, "champion",
                           f"rolled back: champion is v{now_champion} (was v{current}){ended_txt}", row if ended else None)
