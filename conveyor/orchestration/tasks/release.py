"""Tasks that decide and record: gate, register, promote, and the run's report artifacts."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from conveyor.release.gate import GateDecision, evaluate_gate, gate_evidence, skip_decision, withdrawn_decision
from conveyor.release.registry import ModelVersion, Registry
from conveyor.release import policy
from conveyor.release.rollout import PromotionResult
from conveyor.core.spec import Spec
from conveyor.core.summary import RunSummary
from conveyor.orchestration.tasks.common import RETRY, artifact_key, run_logger, table


@task(name="champion", **RETRY)
def champion_task(name: str, registry_root: str) -> ModelVersion | None:
    return Registry(registry_root).champion(name)


@task(name="rollback-memory", **RETRY)
def withdrawal_task(name: str, registry_root: str, model_hash: str) -> dict | None:
    """The standing rollback of these weights, if they were rolled back before."""
    return Registry(registry_root).withdrawal(name, model_hash=model_hash)


@task(name="gate")
def gate_task(spec: Spec, challenger: dict, champion: dict | None, champion_version: int | None,
              same_as_champion: bool = False, withdrawal: dict | None = None, split_path: str | None = None,
              predictions_path: str | None = None, champion_predictions_path: str | None = None,
              classes: list[str] | None = None, common: dict | None = None) -> GateDecision:
    """The gate; with the evaluations' per-image predictions it also judges ``gates.slices`` and gives
    the champion comparison its paired bootstrap intervals. ``common``: the challenger's metrics on
    the classes the champion knows, when the data has classes it does not."""
    log = run_logger()
    if withdrawal is not None:
        decision = withdrawn_decision(withdrawal, Registry.withdrawn_message(withdrawal), champion_version)
    elif same_as_champion:
        decision = skip_decision(champion_version, f"the challenger is champion v{champion_version} (data, spec and code unchanged)")
    else:
        evidence = gate_evidence(spec, split_path, predictions_path, champion_predictions_path, classes,
                                 champion_subset=bool(common))
        decision = evaluate_gate(spec, challenger, champion, champion_version, evidence, common=common)
    for o in decision.outcomes:
        (log.info if o.passed else log.warning)("gate %s: %s", o.result.upper(), o.reason)
    log.info("gate decision: %s (%s)", decision.decision, decision.summary)
    return decision


@task(name="register", **RETRY)
def register_task(name: str, registry_root: str, files: dict[str, str], model_hash: str, metrics: dict,
                  lineage: dict, gate: dict, run_id: str | None) -> ModelVersion:
    mv = Registry(registry_root).register(name, files=files, model_hash=model_hash, metrics=metrics,
                                          lineage=lineage, gate=gate, run_id=run_id)
    run_logger().info("registered %s v%d in %s", name, mv.version, mv.artifact_dir)
    return mv


@task(name="promote", **RETRY)
def promote_task(name: str, registry_root: str, version: int, decision: GateDecision, strategy: str,
                 run_id: str | None, note: str | None = None) -> PromotionResult:
    res = policy.promote_version(name, registry_root, version, decision, strategy, run_id, note)
    run_logger().info(res.message)
    return res


def task_steps() -> policy.ReleaseSteps:
    """The release policy's steps as task runs inside a flow run; outside one the same tasks' functions."""
    from prefect.context import FlowRunContext

    from conveyor.orchestration.tasks.rollout import start_rollout_task, watch_rollout_task

    def step(t):
        return t if FlowRunContext.get() is not None else t.fn

    return policy.ReleaseSteps(start_rollout=step(start_rollout_task), watch_rollout=step(watch_rollout_task),
                               promote=step(promote_task))


def release(spec: Spec, workspace: str, version: int, decision: GateDecision, champion_version: int | None,
            run_id: str | None, spec_path: str | None = None, workspace_arg: str | None = None,
            note: str | None = None) -> policy.ReleaseResult:
    """The promotion policy (:func:`conveyor.release.policy.release`) with each step a Prefect task run."""
    return policy.release(spec, workspace, version, decision, champion_version, run_id, spec_path, workspace_arg,
                          note, steps=task_steps())


@task(name="publish-report")
def publish_task(spec_name: str, summary: RunSummary) -> None:
    """Prefect artifacts for the run: dataset counts, split, metrics and the gate decision."""
    ds = summary.dataset
    rows = [{"item": "received", "count": ds.received}, {"item": "accepted", "count": ds.accepted},
            {"item": "quarantined", "count": ds.quarantined}]
    rows += [{"item": f"quarantined: {r}", "count": n} for r, n in sorted(ds.quarantine_reasons.items())]
    rows += [{"item": "kept after curation", "count": ds.curated}]
    rows += [{"item": f"removed: {r}", "count": n} for r, n in sorted(ds.removed_reasons.items())]
    create_table_artifact(table(rows), key=artifact_key(spec_name, "dataset"),
                          description=f"Dataset {summary.dataset_version}: counts and quarantine reasons")

    rv = ds.review
    if rv:  # the label and review loop: where labels came from, the pool, the queue
        label_rows = [{"item": f"labels: {k}", "count": n} for k, n in (ds.label_sources or {}).items()]
        for kind, info in rv.pool.items():
            if isinstance(info, dict):
                label_rows += [{"item": f"pool {kind}: received", "count": info.get("received", 0)},
                               {"item": f"pool {kind}: quarantined", "count": info.get("quarantined", 0)}]
        label_rows += [{"item": "auto-labelled (train only)", "count": rv.auto_labeled},
                       {"item": "queued for review", "count": rv.queued}]
        queue = rv.queue or {}
        create_table_artifact(table(label_rows), key=artifact_key(spec_name, "labels"),
                              description=f"Label version {ds.label_version}"
                                          + (f"; review queue: {queue['tasks']}" if queue else ""))

    sp = summary.split
    split_rows = [{"split": s, "images": sp.counts[s], "groups": sp.groups[s],
                   "smallest class": min(sp.per_class[s].values(), default=0)} for s in ("train", "val", "test")]
    create_table_artifact(table(split_rows), key=artifact_key(spec_name, "split"),
                          description=f"Split {sp.split_version} grouped by {sp.group_by}")

    metrics = summary.metrics or {}
    champ = summary.champion_metrics or {}
    metric_rows = [{"metric": k, "challenger": v, "champion": champ.get(k)}
                   for k, v in sorted(metrics.items()) if "[" not in k]
    create_table_artifact(table(metric_rows), key=artifact_key(spec_name, "metrics"),
                          description="Test-set metrics of the challenger (and the champion, on the same frozen set)")

    gate_rows = [{"rule": r.rule, "value": r.value, "threshold": r.threshold, "champion": r.champion_value,
                  "interval": r.interval, "result": "FAIL" if r.result == "fail" else r.result}
                 for r in summary.reasons]
    md = [f"# Gate decision: **{summary.decision}**", "", summary.gate_summary or "", "",
          f"- model version: v{summary.model_version}", f"- champion now: v{summary.champion_version}",
          f"- dataset version: `{summary.dataset_version}`", f"- run folder: `{summary.run_dir}`", "",
          "| rule | value | threshold | champion | 95% CI (challenger - champion) | result |",
          "|---|---|---|---|---|---|"]
    for r in table(gate_rows):
        md.append(f"| {r['rule']} | {r['value']} | {r['threshold']} | {r['champion']} | {r['interval'] or ''} "
                  f"| {r['result']} |")
    create_markdown_artifact("\n".join(md), key=artifact_key(spec_name, "gate"),
                             description=f"Gate decision: {summary.decision}")
