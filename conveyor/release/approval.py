"""Reviewer sign-off: a challenger that passes its gate waits for a person before it serves.

With ``gates.require_approval`` a cycle whose challenger passes the gate registers it and stops: the
version gets a *pending* approval in the registry (``approvals`` table), the cycle's decision is
``pending_approval`` and the event ``conveyor.approval.requested`` says what to run. A reviewer then
runs ``conveyor approve SPEC RUN --by NAME`` (the release the cycle would have done: the champion
alias moves, or the shadow / canary / blue_green rollout starts against the serving champion) or
``conveyor reject SPEC RUN --by NAME --reason TEXT`` (the champion stays). Either decision is kept
with who made it, when and why, in the approval row and in the version's lineage
(``lineage["approval"]``), one registry transaction; ``version.json`` in the version folder is written
once at registration and does not change. A decision is final: deciding twice, or approving a version
whose gate failed, is an error.

A version is gated against the champion of its cycle, on that cycle's frozen test split. When either
has changed by the time a reviewer approves (a newer champion was promoted, or a later cycle froze
more test images), ``approve`` gates the version again against the current champion on the current
frozen split (:func:`regate`) and refuses when that decision is to reject; the version stays pending.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from conveyor.core import events
from conveyor.release import policy
from conveyor.release.gate import DECISION_WORDS, GateDecision, evaluate_gate, gate_evidence
from conveyor.release.policy import ReleaseResult
from conveyor.release.registry import ModelVersion, Registry, RegistryError
from conveyor.core.spec import Spec
from conveyor.core.summary import RunSummary
from conveyor.core.workspace import Workspace

MIN_PREFIX = 8


class ApprovalError(RuntimeError):
    """An approval or rejection that cannot be made; the message says why."""


def _q(text: str) -> str:
    return shlex.quote(str(text))


def commands(spec_path: str, run_id: str | None, version: int, workspace: str | None = None) -> dict[str, str]:
    """The commands a reviewer runs to decide on ``version`` (by the run's id prefix when there is one)."""
    ref = f"{run_id[:MIN_PREFIX]}" if run_id else f"{version} --version"
    ws = f" --workspace {_q(workspace)}" if workspace else ""
    return {"approve": f"conveyor approve {_q(spec_path)} {ref}{ws} --by NAME --reason TEXT",
            "reject": f"conveyor reject {_q(spec_path)} {ref}{ws} --by NAME --reason TEXT"}


def request(registry: Registry, spec: Spec, version: int, run_id: str | None, *, spec_path: str | None = None,
            workspace: str | None = None) -> dict[str, Any]:
    """Record that ``version`` waits for a reviewer (a version that already has a request keeps it, pending
    or decided). Returns the approval with ``decision`` (the cycle's word), ``message`` and the commands."""
    row, created = registry.request_approval(spec.name, version, run_id)
    champion = registry.alias(spec.name)
    stays = f"champion stays v{champion}" if champion is not None else "there is no champion yet"
    cmds = commands(spec_path or spec.name, row["run_id"], version, workspace)
    status = row["status"]
    if status == "pending":
        decision = DECISION_WORDS["pending"]
        message = (f"v{version} passed the gate and waits for a reviewer ({stays}); "
                   f"decide with `{cmds['approve']}` or `{cmds['reject']}`")
    elif status == "rejected":
        decision = DECISION_WORDS["reject"]
        message = (f"v{version} passed the gate, but a reviewer rejected this very model: {row['by']} at "
                   f"{row['decided_at']} ({row['reason']}); {stays}")
    else:  # approved earlier: the release goes ahead as it did then
        decision = DECISION_WORDS["promote"]
        message = f"v{version} was approved by {row['by']} at {row['decided_at']}"
    return {**row, "created": created, "decision": decision, "message": message, **cmds}


def requested_event(name: str, approval: dict[str, Any], summary: RunSummary) -> dict[str, Any]:
    """The event of a cycle whose challenger waits for a reviewer."""
    return events.make_event("conveyor.approval.requested", name, {
        "run_id": summary.run_id, "model_version": approval["version"],
        "champion_version": summary.champion_version, "requested_at": approval["requested_at"],
        "reason": summary.gate_summary, "metrics": summary.metrics,
        "approve": approval["approve"], "reject": approval["reject"]})


def markdown(name: str, approval: dict[str, Any], gate_summary: str, champion_version: int | None,
             metrics: dict[str, Any] | None = None) -> str:
    """The Prefect artifact of a pending approval: what waits, and what to run to decide."""
    v = approval["version"]
    keys = [k for k in ("f1", "accuracy", "ece", "map50", "miou", "latency_p95_ms") if k in (metrics or {})]
    lines = [f"# {name} v{v} waits for approval", "",
             f"v{v} passed the gate ({gate_summary}). `gates.require_approval` is set, so it is not promoted "
             f"and no rollout starts until a reviewer decides.", "",
             f"- champion now: {'v' + str(champion_version) if champion_version is not None else 'none yet'}",
             f"- run: `{approval['run_id']}`", f"- requested at: {approval['requested_at']}"]
    if keys:
        lines.append("- metrics: " + ", ".join(f"{k} {float(metrics[k]):.4g}" for k in keys))
    lines += ["", "To approve (promotes it, or starts its rollout as `deploy.strategy` says):", "",
              "```bash", approval["approve"], "```", "", "To reject (the champion stays):", "",
              "```bash", approval["reject"], "```"]
    return "\n".join(lines)


# ---- deciding --------------------------------------------------------------------------------------
@dataclass
class ApprovalResult:
    status: str  # approved | rejected
    version: int
    run_id: str | None
    by: str
    reason: str | None
    decided_at: str
    message: str
    champion_version: int | None  # after the decision
    previous_champion: int | None
    replaces: int | None = None  # a newer champion this approval replaces (or rolls out against)
    release: ReleaseResult | None = None  # what the release step did (approve)
    events: list[dict[str, Any]] = field(default_factory=list)
    regate: Regate | None = None  # the gate decision made again at approval (champion or test split changed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["events"] = [e["event"] for e in self.events]
        d["regate"] = self.regate.to_dict() if self.regate is not None else None
        return d


def resolve(registry: Registry, name: str, ref: str | int, by_version: bool = False
            ) -> tuple[dict[str, Any] | None, ModelVersion]:
    """The approval row and version that ``ref`` names: a run id, its first 8 (or more) characters, or
    with ``by_version`` a version number. The row is None when that version never waited for approval."""
    if by_version:
        try:
            version = int(str(ref).lstrip("v"))
        except ValueError:
            raise ApprovalError(f"--version needs a version number, got {ref!r}") from None
        try:
            mv = registry.get(name, version)
        except RegistryError as err:
            raise ApprovalError(str(err)) from None
        return registry.approval(name, version), mv
    text = str(ref).strip().lower()
    if len(text) < MIN_PREFIX:
        raise ApprovalError(f"run {ref!r}: give the run id or at least its first {MIN_PREFIX} characters "
                            f"(or a version number with --version)")
    rows = [r for r in registry.approvals(name) if r["run_id"] and str(r["run_id"]).lower().startswith(text)]
    if len(rows) > 1:
        raise ApprovalError(f"run {ref!r} matches several approvals of {name!r}: "
                            + ", ".join(f"v{r['version']} (run {r['run_id']})" for r in rows)
                            + "; give more of the run id or use --version")
    if rows:
        return rows[0], registry.get(name, rows[0]["version"])
    versions = [v for v in registry.list(name) if v.run_id and v.run_id.lower().startswith(text)]
    if versions:
        return None, versions[-1]
    pending = registry.approvals(name, "pending")
    waiting = ", ".join(f"v{r['version']} (run {str(r['run_id'])[:MIN_PREFIX]})" for r in pending) or "none"
    raise ApprovalError(f"no run {ref!r} of {name!r} in the registry; waiting for approval: {waiting}")


def _pending(row: dict[str, Any] | None, mv: ModelVersion, name: str) -> dict[str, Any]:
    """The row, checked: it exists and is pending, and the version passed its gate."""
    gate = mv.gate or {}
    if not gate.get("passed") or gate.get("decision") == "reject":
        raise ApprovalError(f"v{mv.version} of {name!r} failed its gate ({gate.get('summary') or 'no gate record'}): "
                            f"there is nothing to approve")
    if row is None:
        if gate.get("decision") == "skip":
            raise ApprovalError(f"v{mv.version} of {name!r} never waited for approval: its cycle found it was already "
                                f"the champion")
        raise ApprovalError(f"v{mv.version} of {name!r} never waited for approval (gates.require_approval was off "
                            f"when run {mv.run_id} registered it; its gate decision was applied at once)")
    if row["status"] != "pending":
        why = f" ({row['reason']})" if row["reason"] else ""
        raise ApprovalError(f"v{mv.version} of {name!r} was already {row['status']} by {row['by']} at "
                            f"{row['decided_at']}{why}: a decision is final")
    return row


# ---- gating again at approval time ----------------------------------------------------------------
SPLIT_FILE = "split.parquet"


@dataclass(frozen=True)
class Scores:
    """One model scored on a frozen test split: its metrics and per-image predictions (for the slices
    and the paired intervals of the gate; None when the evaluation wrote none)."""

    metrics: dict[str, float]
    predictions_path: str | None = None
    classes: list[str] | None = None


#: Scores a registered version on a split table: ``(version, split_path, out_dir) -> Scores``.
Evaluator = Callable[[ModelVersion, str, Path], Scores]


def evaluate_version(mv: ModelVersion, split_path: str, out_dir: Path) -> Scores:
    """The version's checkpoint on the split's test rows (quality metrics only: its latency and size
    were measured at registration and do not depend on the test images)."""
    from conveyor.model.evaluate import evaluate

    res = evaluate(mv.file("checkpoint.pt"), split_path, out_dir, split="test", latency_runs=0, export_onnx=False)
    return Scores(res.metrics, res.predictions_path, list(res.classes or []))


@dataclass(frozen=True)
class FrozenSet:
    """The newest frozen test split in the registry: the split the latest registered version was gated on."""

    split_path: str
    eval_set_hash: str | None
    version: int  # the version that registered it


@dataclass(frozen=True)
class Regate:
    """A pending version gated again when its champion or its frozen test split changed since it was gated."""

    why: str
    decision: GateDecision
    champion_version: int | None  # the champion it was gated against now
    gated_against: int | None  # the champion at registration
    eval_set_hash: str | None  # the frozen split it was gated on now

    def to_dict(self) -> dict[str, Any]:
        return {"why": self.why, "decision": self.decision.to_dict(), "champion_version": self.champion_version,
                "gated_against": self.gated_against, "eval_set_hash": self.eval_set_hash}


def current_frozen_set(registry: Registry, name: str) -> FrozenSet | None:
    """The split table of the newest registered version that kept one (None: no version did)."""
    for mv in reversed(registry.list(name)):
        if mv.file(SPLIT_FILE).exists():
            return FrozenSet(str(mv.file(SPLIT_FILE)), (mv.lineage or {}).get("eval_set_hash"), mv.version)
    return None


def regate(spec: Spec, ws: Workspace, registry: Registry, mv: ModelVersion,
           evaluator: Evaluator = evaluate_version) -> Regate | None:
    """Gate ``mv`` again when the champion or the frozen test split changed since its gate (None: neither
    did, its stored decision stands). Both models are scored on the current frozen split; the version's
    runtime metrics (latency, size) are the ones measured at registration unless the evaluator measured
    them again."""
    gate = mv.gate or {}
    gated_against = gate.get("champion_version")
    champion = registry.alias(spec.name)
    frozen = current_frozen_set(registry, spec.name)
    own_hash = (mv.lineage or {}).get("eval_set_hash")
    why = []
    if champion != gated_against:
        was = f"v{gated_against}" if gated_against is not None else "no champion"
        why.append(f"the champion is now v{champion} ({was} when v{mv.version} was gated)" if champion is not None
                   else f"there is no champion now (v{gated_against} when v{mv.version} was gated)")
    if frozen is not None and frozen.eval_set_hash is not None and frozen.eval_set_hash != own_hash:
        why.append(f"the frozen test split changed (v{frozen.version}'s split {frozen.eval_set_hash[:12]}, "
                   f"v{mv.version} was gated on {str(own_hash)[:12]})")
    if not why:
        return None
    if frozen is None:
        raise ApprovalError(f"v{mv.version} of {spec.name!r} must be gated again ({'; '.join(why)}), but no registered "
                            f"version kept its {SPLIT_FILE}: there is no frozen test split to gate it on")
    tag = str(frozen.eval_set_hash or f"v{frozen.version}")[:16]
    mine = evaluator(mv, frozen.split_path, ws.evals / f"{mv.model_hash[:16]}-{tag}-approval")
    metrics = {**mv.metrics, **mine.metrics}
    champ_scores = champ_metrics = None
    if champion is not None:
        cv = registry.get(spec.name, champion)
        champ_scores = evaluator(cv, frozen.split_path, ws.evals / f"{cv.model_hash[:16]}-{tag}-approval")
        champ_metrics = {**cv.metrics, **champ_scores.metrics}
    evidence = gate_evidence(spec, frozen.split_path, mine.predictions_path,
                             champ_scores.predictions_path if champ_scores is not None else None, mine.classes)
    decision = evaluate_gate(spec, metrics, champ_metrics, champion, evidence)
    return Regate("; ".join(why), decision, champion, gated_against, frozen.eval_set_hash)


def _who(by: str) -> str:
    by = (by or "").strip()
    if not by:
        raise ApprovalError("--by must name the reviewer")
    return by


def approve(spec: Spec, ws: Workspace | str, ref: str | int, *, by: str, reason: str | None = None,
            by_version: bool = False, spec_path: str | None = None,
            release: Callable[..., ReleaseResult] = policy.release, evaluator: Evaluator = evaluate_version,
            on_regate: Callable[[Regate], None] | None = None) -> ApprovalResult:
    """Approve a pending version and do what its cycle would have done after a passing gate: promote it,
    or start its rollout against the serving champion (:func:`conveyor.release.policy.release`, the
    policy the cycle applies; ``release`` may run its steps another way, e.g. as Prefect tasks).

    When the champion or the frozen test split changed since the version was gated, it is gated again
    (:func:`regate`, scoring with ``evaluator``) against the current champion on the current split;
    ``on_regate`` gets that decision before anything happens, and a decision to reject refuses the
    approval (``ApprovalError``; the version stays pending). A newer champion the version still beats
    does not stop it: the result's ``replaces`` names it and the message says so."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    by = _who(by)
    reason = (reason or "").strip() or None
    registry = Registry(ws.registry)
    row, mv = resolve(registry, spec.name, ref, by_version)
    row = _pending(row, mv, spec.name)
    decision = GateDecision.from_dict(mv.gate)
    before = registry.alias(spec.name)
    again = regate(spec, ws, registry, mv, evaluator) if before != mv.version else None
    if again is not None:
        if on_regate is not None:
            on_regate(again)
        if not again.decision.passed:
            raise ApprovalError(f"v{mv.version} of {spec.name!r} was gated again because {again.why}, and now fails: "
                                f"{again.decision.summary}; it stays pending (reject it with "
                                f"`{commands(spec_path or spec.name, row['run_id'], mv.version)['reject']}`)")
        decision = again.decision
    try:
        decided = registry.decide_approval(spec.name, mv.version, status="approved", by=by, reason=reason)
    except RegistryError as err:  # decided by someone else between the check and now
        raise ApprovalError(str(err)) from None
    note = f"approved by {by}" + (f": {reason}" if reason else "")
    replaces = before if before is not None and before > mv.version else None
    newer = ""
    if replaces is not None:
        champ = registry.get(spec.name, replaces)
        verb = ("replaces it" if spec.deploy.strategy == "replace" else
                f"goes through a {spec.deploy.strategy} rollout against it")
        newer = (f"; note: v{replaces} (newer, registered {champ.created_at}) became the champion after v{mv.version} "
                 f"was gated; approving v{mv.version} {verb}")
    rel = None
    if before == mv.version:
        message, after = f"v{mv.version} is already the champion", before
    else:
        try:
            rel = release(spec, str(ws.root), mv.version, decision, before, row["run_id"], spec_path, None, note=note)
        except Exception as err:
            registry.set_approval_outcome(spec.name, mv.version, f"approved by {by}, but the release failed: "
                                                                  f"{type(err).__name__}: {err}")
            raise
        message, after = rel.message, rel.champion_version
    if again is not None:
        newer += f"; gated again because {again.why}: {again.decision.summary}"
    message = f"v{mv.version} approved by {by}" + (f" ({reason})" if reason else "") + f": {message}{newer}"
    registry.set_approval_outcome(spec.name, mv.version, message)
    result = ApprovalResult("approved", mv.version, row["run_id"], by, reason, decided["decided_at"], message,
                            after, before, replaces, rel, regate=again)
    rollout = rel.rollout if rel is not None else None
    promotion = rel.promotion if rel is not None else None
    payload = {"model_version": mv.version, "run_id": row["run_id"], "by": by, "reason": reason,
               "requested_at": row["requested_at"], "decided_at": decided["decided_at"], "champion_version": after,
               "previous_champion": before, "replaces": replaces, "message": message,
               "rollout_id": rollout.get("rollout_id") if rollout else None}
    result.events.append(events.make_event("conveyor.approval.approved", spec.name, payload))
    if rollout is not None and rollout.get("status") == "running":
        from conveyor.release.rollout import RolloutState, rollout_event

        result.events.append(rollout_event("started", spec.name, RolloutState.from_dict(rollout), run_id=row["run_id"],
                                           watcher=rollout.get("watcher"), approved_by=by))
    elif promotion is not None and promotion.action == "promoted":
        result.events.append(events.make_event("conveyor.model.promoted", spec.name, {
            "run_id": row["run_id"], "trigger": "approval", "decision": "promoted", "reason": note,
            "model_version": mv.version, "champion_version": after, "previous_version": before,
            "metrics": mv.metrics}))
    return result


def reject(spec: Spec, ws: Workspace | str, ref: str | int, *, by: str, reason: str,
           by_version: bool = False) -> ApprovalResult:
    """Reject a pending version: the champion stays, and who rejected it and why is recorded."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    by = _who(by)
    reason = (reason or "").strip()
    if not reason:
        raise ApprovalError("--reason must say why the version is rejected")
    registry = Registry(ws.registry)
    row, mv = resolve(registry, spec.name, ref, by_version)
    row = _pending(row, mv, spec.name)
    try:
        decided = registry.decide_approval(spec.name, mv.version, status="rejected", by=by, reason=reason)
    except RegistryError as err:
        raise ApprovalError(str(err)) from None
    champion = registry.alias(spec.name)
    stays = f"champion stays v{champion}" if champion is not None else "there is still no champion"
    message = f"v{mv.version} rejected by {by} ({reason}); {stays}"
    registry.set_approval_outcome(spec.name, mv.version, message)
    result = ApprovalResult("rejected", mv.version, row["run_id"], by, reason, decided["decided_at"], message,
                            champion, champion)
    result.events.append(events.make_event("conveyor.approval.rejected", spec.name, {
        "model_version": mv.version, "run_id": row["run_id"], "by": by, "reason": reason,
        "requested_at": row["requested_at"], "decided_at": decided["decided_at"], "champion_version": champion,
        "message": message}))
    return result
