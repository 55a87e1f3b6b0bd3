"""The rollout flow: start (or resume) a rollout, then every ``deploy.check_every`` compute the live
metrics and decide; a breached alert rolls back at once, and at ``ends_at`` the challenger is
promoted when every alert holds. Whoever ends the rollout first (this flow, the monitor or a manual
rollback) wins; the others find it ended and stop."""

from __future__ import annotations

import time

from prefect import flow

from conveyor.monitoring import monitor
from conveyor.core.timeutil import as_utc, utcnow
from conveyor.release.registry import Registry
from conveyor.release.rollout import RolloutState, rollout_event
from conveyor.core.spec import load_spec, parse_duration_s
from conveyor.core.workspace import Workspace
from conveyor.orchestration.tasks.monitor import emit_events_task
from conveyor.orchestration.tasks.rollout import check_rollout_task, open_rollout_task


@flow(name="conveyor-rollout", log_prints=True)
def rollout_flow(spec_path: str, version: int, workspace: str | None = None, rollout_id: str | None = None) -> dict:
    """Roll out ``version`` of the pipeline ``spec_path`` describes, as its ``deploy`` section says,
    and watch it until it ends. With ``rollout_id`` (the cycle passes it) only that rollout is
    watched and no new one starts; without, a running rollout of ``version`` is resumed."""
    spec = load_spec(spec_path)
    ws = Workspace(spec.workspace_path(workspace))
    wsp = str(ws.root)
    log_path = str(monitor.events_log(ws, spec.name))
    state, started = open_rollout_task(spec, wsp, version, rollout_id)
    if started:
        emit_events_task([rollout_event("started", spec.name, state)], log_path)
    every = parse_duration_s(spec.deploy.check_every)
    checks = 0
    while state.running:
        check = check_rollout_task(spec, wsp)
        checks += 1
        if check.events:
            emit_events_task(check.events, log_path)
        if check.state is None or check.state.rollout_id != state.rollout_id or not check.state.running:
            break
        left = (as_utc(state.ends_at) - utcnow()).total_seconds()
        # wake at ends_at to promote on time; past it (extended for evidence) check every check_every
        time.sleep(every if left <= 0 else max(0.05, min(every, left + 0.05)))
    final = RolloutState.from_dict(Registry(ws.registry).rollout(state.rollout_id)["state"])
    return {"rollout_id": final.rollout_id, "strategy": final.strategy, "champion": final.champion,
            "challenger": final.challenger, "status": final.status, "reason": final.reason,
            "started_at": final.started_at, "ends_at": final.ends_at, "ended_at": final.updated_at,
            "checks": checks, "started_here": started}
