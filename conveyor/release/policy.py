"""The promotion policy: what follows a gate decision.

A challenger that passed its gate against a serving champion goes through a rollout (shadow, canary,
blue_green); otherwise (``deploy.strategy: replace``, or the first model, or a failed or skipped gate)
the champion alias moves as the gate says (:func:`conveyor.release.rollout.promote`).

:func:`release` is the policy. The cycle calls it right after registering (through its Prefect tasks)
and ``conveyor approve`` after a reviewer signs off (:func:`conveyor.release.approval.approve`). The
three side-effecting steps are a :class:`ReleaseSteps` record, so the orchestration layer can run each
as a task run while the library runs the same functions directly (:data:`LIBRARY_STEPS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from conveyor.core.spec import Spec
from conveyor.core.workspace import Workspace
from conveyor.release import rollout
from conveyor.release.gate import GateDecision
from conveyor.release.registry import Registry
from conveyor.release.rollout import PromotionResult

WATCHED_BY_MONITOR = "the monitor ends it when due or breached (`conveyor rollout-status SPEC` shows it)"


@dataclass(frozen=True)
class ReleaseResult:
    """What the release step did.

    ``rollout``: the started rollout's state (``RolloutState.to_dict()`` plus ``message`` and
    ``watcher``), or ``status: not_started`` with the reason, or None when no rollout was tried;
    ``promotion``: the alias move when there was no rollout; ``champion_version`` after the step;
    ``message``: one line for people."""

    rollout: dict[str, Any] | None
    champion_version: int | None
    message: str
    promotion: PromotionResult | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def start_rollout(spec: Spec, workspace: str, version: int) -> dict[str, Any]:
    """Start a rollout of ``version`` for shadow / canary / blue_green. A refusal (another rollout running)
    is reported in the returned state (``status: not_started``), not raised: the version stays registered."""
    try:
        st = rollout.start_rollout(spec, Workspace(workspace), version)
    except rollout.RolloutError as err:
        return {"status": "not_started", "challenger": version, "reason": str(err),
                "message": f"v{version} passed the gate but no rollout started: {err}; start one later with "
                           f"`conveyor rollout SPEC --version {version}`"}
    share = f"{st.traffic:.0%} of traffic" if st.strategy == "canary" else {
        "shadow": "a copy of every request", "blue_green": "all traffic once the service has it ready"}[st.strategy]
    msg = (f"v{version} passed the gate; {st.strategy} rollout {st.rollout_id} started ({share} until {st.ends_at}); "
           f"champion stays v{st.champion} until the rollout is promoted")
    return {**st.to_dict(), "message": msg}


def watch_by_monitor(name: str, spec_path: str | None, workspace: str | None, rollout_id: str,
                     version: int) -> dict[str, Any]:
    """Outside a Prefect deployment nothing watches a rollout but the monitor (or `conveyor rollout --watch`)."""
    return {"mode": "monitor", "note": WATCHED_BY_MONITOR}


def promote_version(name: str, registry_root: str, version: int, decision: GateDecision, strategy: str,
                    run_id: str | None, note: str | None = None) -> PromotionResult:
    """Move the champion alias as ``decision`` says (see :func:`conveyor.release.rollout.promote`)."""
    return rollout.promote(Registry(registry_root), name, version, decision, strategy=strategy, run_id=run_id,
                           note=note)


@dataclass(frozen=True)
class ReleaseSteps:
    """The side-effecting steps of :func:`release`, with the signatures of the library functions above."""

    start_rollout: Callable[[Spec, str, int], dict[str, Any]]
    watch_rollout: Callable[[str, str | None, str | None, str, int], dict[str, Any]]
    promote: Callable[..., PromotionResult]


LIBRARY_STEPS = ReleaseSteps(start_rollout=start_rollout, watch_rollout=watch_by_monitor, promote=promote_version)


def release(spec: Spec, workspace: str, version: int, decision: GateDecision, champion_version: int | None,
            run_id: str | None, spec_path: str | None = None, workspace_arg: str | None = None,
            note: str | None = None, *, steps: ReleaseSteps = LIBRARY_STEPS) -> ReleaseResult:
    """Release registered ``version`` after its gate ``decision``: a rollout against the serving champion
    ``champion_version`` when the gate passed and ``deploy.strategy`` is not ``replace``; otherwise the
    champion alias moves (or stays) as the gate says. ``note`` (e.g. who approved it) joins the reason
    kept in the alias history; ``spec_path`` and ``workspace_arg`` are what a rollout watcher is started with."""
    if decision.passed and spec.deploy.strategy != "replace" and champion_version is not None:
        started = steps.start_rollout(spec, workspace, version)
        if started["status"] == "running":
            started["watcher"] = steps.watch_rollout(spec.name, spec_path, workspace_arg, started["rollout_id"],
                                                     version)
        return ReleaseResult(rollout=started, champion_version=champion_version, message=started["message"],
                             promotion=None)
    promotion = steps.promote(spec.name, str(Workspace(workspace).registry), version, decision,
                              spec.deploy.strategy, run_id, note)
    return ReleaseResult(rollout=None, champion_version=promotion.champion_version, message=promotion.message,
                         promotion=promotion)
