"""The monitor flow: profile new arrivals, evaluate every trigger, emit the decisions as events,
and (depending on ``start``) start a cycle for the triggers that fired.

``start``:

* ``event`` (the monitor deployment): only emit events; the cycle deployment's event triggers
  in ``prefect.yaml`` start the run on ``conveyor.drift.detected`` / ``conveyor.performance.degraded``;
* ``deployment``: also call ``run_deployment("conveyor-cycle/<name>")`` (no automation needed);
* ``inline``: run the cycle here, as a subflow (``conveyor monitor --trigger``);
* ``none``: evaluate and report only (``conveyor monitor``).

Every run also checks the pipeline's running rollout, if any (``conveyor.release.rollout``): it is rolled
back on a breached alert and promoted or rolled back at the end of its window.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow

from conveyor.monitoring import monitor
from conveyor.core.spec import load_spec
from conveyor.core.workspace import Workspace
from conveyor.orchestration.tasks.data import fingerprint_task, ingest_task
from conveyor.orchestration.tasks.monitor import emit_events_task, evaluate_triggers_task, observe_ingest_task
from conveyor.orchestration.tasks.rollout import check_rollout_task

CYCLE_FLOW = "conveyor-cycle"


@flow(name="conveyor-monitor", log_prints=True)
def monitor_pipeline(spec_path: str, workspace: str | None = None,
                     start: Literal["event", "deployment", "inline", "none"] = "event",
                     now: str | None = None) -> dict:
    """Evaluate the triggers of the pipeline ``spec_path`` describes; returns the monitor report."""
    spec = load_spec(spec_path)
    ws = Workspace(spec.workspace_path(workspace))
    wsp = str(ws.root)
    if spec.triggers.drift is not None:
        # New images in the source are the incoming batch: profile them before testing drift.
        source_key = fingerprint_task(spec)
        ing = ingest_task(spec, source_key, spec.section_hash("data", "curation"), wsp)
        observe_ingest_task(spec, wsp, ing.manifest_path, ing.dataset_version, now)
    # A running rollout is checked first (it may end, and a promotion changes the champion the
    # triggers compare with): ended on a breach or at the end of its window.
    rollout = check_rollout_task(spec, wsp, now)
    if rollout.events:
        emit_events_task(rollout.events, str(monitor.events_log(ws, spec.name)))
    rep = evaluate_triggers_task(spec, wsp, now)
    emit_events_task(monitor.report_events(rep), str(monitor.events_log(ws, spec.name)))
    out = rep.to_dict()
    out["rollout"] = rollout.to_dict() if rollout.state is not None else None
    out["started"] = None
    if rep.start_cycle and start == "inline":
        from conveyor.orchestration.flows.cycle import continuous_training

        summary = continuous_training(spec_path=spec_path, workspace=wsp, trigger=rep.trigger, reason=rep.reason)
        out["started"] = {"mode": "inline", "run_id": summary["run_id"], "decision": summary["decision"]}
    elif rep.start_cycle and start == "deployment":
        from prefect.deployments import run_deployment

        fr = run_deployment(f"{CYCLE_FLOW}/{spec.name}", timeout=0,
                            parameters={"spec_path": spec_path, "trigger": rep.trigger, "reason": rep.reason})
        out["started"] = {"mode": "deployment", "flow_run_id": str(fr.id)}
    elif rep.start_cycle and start == "event":
        out["started"] = {"mode": "event", "note": "the cycle deployment's event trigger starts the run"}
    return out
