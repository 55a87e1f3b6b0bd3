"""Tasks of a rollout: start or resume it, start its watcher, check its live metrics and decide."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from conveyor.release import policy, rollout
from conveyor.core.timeutil import as_utc
from conveyor.release.registry import Registry
from conveyor.core.spec import Spec
from conveyor.core.workspace import Workspace
from conveyor.orchestration.tasks.common import RETRY, artifact_key, run_logger

ROLLOUT_FLOW = "conveyor-rollout"


@task(name="start-rollout", **RETRY)
def start_rollout_task(spec: Spec, workspace: str, version: int) -> dict:
    """The cycle's release step for shadow / canary / blue_green: start a rollout of ``version``.
    A refusal (another rollout running) is reported, not raised: the version stays registered."""
    started = policy.start_rollout(spec, workspace, version)
    if started["status"] == "not_started":
        run_logger().warning("no rollout started for v%d: %s", version, started["reason"])
    else:
        run_logger().info(started["message"])
    return started


@task(name="open-rollout", **RETRY)
def open_rollout_task(spec: Spec, workspace: str, version: int,
                      rollout_id: str | None = None) -> tuple[rollout.RolloutState, bool]:
    """The rollout to watch and whether this call started it: ``rollout_id``'s (never a new one), the
    running rollout of ``version`` (resumed after a restart), or a new rollout of ``version``."""
    ws = Workspace(workspace)
    if rollout_id is not None:
        rollout.current_state(spec, ws)  # rewrite rollout.json if it is behind the registry
        return rollout.RolloutState.from_dict(Registry(ws.registry).rollout(rollout_id)["state"]), False
    current = rollout.current_state(spec, ws)
    if current is not None and current.running and current.challenger == version:
        run_logger().info("resuming rollout %s of v%d", current.rollout_id, version)
        return current, False
    st = rollout.start_rollout(spec, ws, version)
    run_logger().info("started %s rollout %s: v%d against champion v%d until %s", st.strategy, st.rollout_id,
                      st.challenger, st.champion, st.ends_at)
    return st, True


@task(name="watch-rollout")
def watch_rollout_task(name: str, spec_path: str | None, workspace: str | None, rollout_id: str, version: int) -> dict:
    """Start the ``conveyor-rollout/<name>`` deployment for the rollout when this runs under a
    deployment; otherwise the monitor (or `conveyor rollout --watch`) finishes it."""
    from prefect.runtime import deployment

    fallback = policy.WATCHED_BY_MONITOR
    if not deployment.id or spec_path is None:
        return {"mode": "monitor", "note": fallback}
    from prefect.deployments import run_deployment

    params = {"spec_path": spec_path, "version": version, "rollout_id": rollout_id}
    if workspace is not None:
        params["workspace"] = workspace
    try:
        fr = run_deployment(f"{ROLLOUT_FLOW}/{name}", parameters=params, timeout=0)
    except Exception as err:  # noqa: BLE001 - the rollout is started; someone else can finish it
        run_logger().warning("could not start %s/%s: %s; %s", ROLLOUT_FLOW, name, err, fallback)
        return {"mode": "monitor", "note": f"{ROLLOUT_FLOW}/{name} could not be started ({err}); {fallback}"}
    return {"mode": "deployment", "deployment": f"{ROLLOUT_FLOW}/{name}", "flow_run_id": str(fr.id)}


@task(name="check-rollout")
def check_rollout_task(spec: Spec, workspace: str, now: str | None = None) -> rollout.RolloutCheck:
    """Live metrics and decision of the running rollout; ends it on a breach or at the end of the window."""
    at = as_utc(now) if now else None
    check = rollout.check_rollout(spec, Workspace(workspace), at)
    log = run_logger()
    if check.decision is None:
        if check.state is not None:
            log.info("rollout %s: %s (%s)", check.state.rollout_id, check.state.status, check.state.reason)
        return check
    d, m = check.decision, check.metrics
    log.info("rollout %s (%s, v%d vs v%d): challenger %d answers, champion %d; decision %s: %s",
             check.state.rollout_id, check.state.strategy, check.state.challenger, check.state.champion,
             m.challenger.requests, m.champion.requests, d.action, d.reason)
    for c in d.checks:
        (log.warning if c.status == "breach" else log.info)("  %s: %s", c.status, c.reason)
    if check.result is not None:
        (log.info if check.result.state.status == "promoted" else log.warning)(check.result.message)
        if check.result.ended:
            md = [f"# Rollout {check.state.rollout_id}: **{check.result.state.status}**", "", check.result.message, "",
                  "| alert | status | value | threshold | reason |", "|---|---|---|---|---|"]
            md += [f"| {c.alert} | {c.status} | {c.value} | {c.threshold} | {c.reason} |" for c in d.checks]
            create_markdown_artifact("\n".join(md), key=artifact_key(spec.name, "rollout"),
                                     description=f"Rollout {check.state.rollout_id}: {check.result.state.status}")
    return check
