"""Tasks of the monitoring loop: profile arrivals, build baselines, evaluate triggers, emit events."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact

from conveyor.monitoring import monitor
from conveyor.monitoring import profiles
from conveyor.core.cycles import CycleGuard, Suppression
from conveyor.core.spec import Spec, parse_duration_s
from conveyor.core.timeutil import as_utc
from conveyor.core.workspace import Workspace
from conveyor.orchestration import prefect_api
from conveyor.orchestration.tasks.common import RETRY, artifact_key, content_cache, run_logger


def _when(at: str | None) -> datetime | None:
    return as_utc(at) if at else None


@task(name="profile-arrivals", **RETRY)
def observe_ingest_task(spec: Spec, workspace: str, manifest_path: str, dataset_version: str,
                        at: str | None = None) -> dict | None:
    """Profile the images of this dataset version that were not seen before (one batch)."""
    b = monitor.observe_manifest(spec, Workspace(workspace), manifest_path, at=_when(at),
                                 source=f"ingest {dataset_version}")
    log = run_logger()
    if b is None:
        log.info("no new images to profile in dataset %s", dataset_version)
        return None
    log.info("profiled %d new images (%d cameras) as batch %s", b.rows, len(b.cameras), b.batch_id)
    return b.to_dict()


@task(name="baseline-profile", cache_policy=content_cache("spec", "split_path", "predictions_path"),
      persist_result=True, **RETRY)
def baseline_task(spec: Spec, split_path: str, split_version: str, predictions_path: str | None, model_hash: str,
                  workspace: str) -> dict[str, str]:
    """Profiles of the images of the champion's dataset version and of the model's predictions
    on the frozen test split: the drift baseline that travels with the registered version.

    All three splits are profiled, not only train: splits are grouped by camera, so the cameras
    held out for evaluation would otherwise have no baseline of their own and look new."""
    rows = pl.read_parquet(split_path)
    preds = pl.read_parquet(predictions_path) if predictions_path else None
    if preds is not None and "camera" not in preds.columns:
        preds = preds.join(rows.select("id", "camera"), on="id", how="left")
    out = Workspace(workspace).evals / f"baseline-{model_hash[:16]}-{split_version}"
    files = profiles.write_baseline(out, rows, preds)
    run_logger().info("baseline profiles: %d images (train, val, test)%s", rows.height,
                      f", {preds.height} test predictions" if preds is not None else "")
    return files


@task(name="cycle-admission")
def admission_task(spec: Spec, workspace: str, trigger: str) -> Suppression:
    """Whether a cycle started by ``trigger`` may run now (a running cycle; the cool-down)."""
    sup = CycleGuard(Workspace(workspace).state(spec.name)).suppression(trigger, parse_duration_s(spec.triggers.cooldown))
    (run_logger().warning if sup.blocked else run_logger().info)("cycle admission (%s): %s", trigger, sup.reason)
    return sup


@task(name="evaluate-triggers")
def evaluate_triggers_task(spec: Spec, workspace: str, now: str | None = None) -> monitor.MonitorReport:
    ws = Workspace(workspace)
    rep = monitor.evaluate_triggers(spec, ws, _when(now))
    path = monitor.write_report(ws, rep)
    log = run_logger()
    for name, t in rep.triggers.items():
        (log.warning if t["fired"] else log.info)("%s: %s - %s", name, t["status"], t["reason"])
    if rep.fired:
        log.warning("fired: %s; %s", ", ".join(rep.fired),
                    "a cycle should start" if rep.start_cycle else f"no cycle starts: {rep.suppressed_by}")
    md = [f"# Monitor: {spec.name}", "", f"at {rep.at}; champion v{rep.champion_version}", "",
          "| trigger | status | why |", "|---|---|---|"]
    md += [f"| {n} | {'**FIRED** ' if t['fired'] else ''}{t['status']} | {t['reason']} |" for n, t in rep.triggers.items()]
    if rep.fired:
        md += ["", f"Cycle: {'starts' if rep.start_cycle else 'suppressed - ' + str(rep.suppressed_by)}"]
    md += ["", f"report: `{path}`"]
    create_markdown_artifact("\n".join(md), key=artifact_key(spec.name, "monitor"), description="Trigger evaluation")
    return rep


@task(name="emit-events")
def emit_events_task(event_list: list[dict], log_path: str) -> list[str | None]:
    ids = [prefect_api.emit(e, Path(log_path)) for e in event_list]
    for e in event_list:
        run_logger().info("event %s: %s", e["event"], e["payload"].get("reason") or e["payload"].get("decision", ""))
    return ids
