"""One continuous-training cycle: ingest → label/review → curate → split → contracts → train →
evaluate → gate → register → promote. The flow composes tasks and holds no stage logic of its own."""

from __future__ import annotations

import uuid

from prefect import flow
from prefect.runtime import flow_run

from conveyor.core import events
from conveyor.monitoring import monitor
from conveyor.core.cycles import CycleGuard, CycleRunning, is_manual
from conveyor.release.gate import DECISION_WORDS
from conveyor.core.spec import load_spec
from conveyor.core.summary import (DatasetCounts, EvaluationFiles, ReviewCounts, RunSummary, SplitSizes,
                                   TrainingRun)
from conveyor.core.io import sha256_file, stable_hash
from conveyor.core.workspace import Workspace
from conveyor.orchestration.tasks.data import (contracts_task, curate_task, fingerprint_task, frozen_eval_task, ingest_task,
                        label_task, label_version_task, split_task)
from conveyor.orchestration.tasks.model import evaluate_task, train_task
from conveyor.orchestration.tasks.monitor import admission_task, baseline_task, emit_events_task, observe_ingest_task
from conveyor.orchestration.tasks.approval import request_approval_task
from conveyor.orchestration.tasks.release import withdrawal_task, champion_task, gate_task, publish_task, register_task, release
from conveyor.orchestration.tasks.report import report_task
from conveyor.orchestration.tasks.run import close_run_task, open_run_task
from conveyor.orchestration.tasks.tracking import track_artifact_task


@flow(name="conveyor-cycle", log_prints=True)
def continuous_training(spec_path: str, workspace: str | None = None, trigger: str = "manual",
                        reason: str | None = None) -> dict:
    """Run one cycle of the pipeline that ``spec_path`` describes; returns the run summary.

    ``trigger`` says what started the run (manual, schedule, drift, performance, webhook, ...) and
    ``reason`` why, in words; both are recorded in the run folder, the lineage and the summary.

    The summary is a :class:`conveyor.core.summary.RunSummary` (written as ``summary.json``); the flow
    returns its JSON form without ``schema_version``, as ``conveyor run --json`` has always printed it."""
    spec = load_spec(spec_path)
    ws = Workspace(spec.workspace_path(workspace))
    wsp = str(ws.root)
    run_id = str(flow_run.get_id() or uuid.uuid4())
    run_dir = open_run_task(spec, wsp, run_id, trigger, reason)
    log_path = str(monitor.events_log(ws, spec.name))

    admission = admission_task(spec, wsp, trigger)
    if admission.blocked and not is_manual(trigger):
        return _skipped(spec, run_id, trigger, reason, wsp, run_dir, admission.reason, log_path)
    try:
        with CycleGuard(ws.state(spec.name)).hold(run_id, trigger, reason):
            summary = _cycle(spec, ws, run_id, run_dir, trigger, reason, spec_path, workspace)
    except CycleRunning as err:
        if is_manual(trigger):
            raise  # a person asked for this run: say why it cannot start
        return _skipped(spec, run_id, trigger, reason, wsp, run_dir, str(err), log_path)
    emit_events_task(_cycle_events(spec.name, summary), log_path)
    return _returned(summary)


def _returned(summary: RunSummary) -> dict:
    """What the flow returns: the summary's JSON form as ``conveyor run --json`` prints it."""
    out = summary.to_json()
    out.pop("schema_version")
    return out


def _skipped(spec, run_id: str, trigger: str, reason: str | None, wsp: str, run_dir: str, why: str,
             log_path: str) -> dict:
    """A cycle a trigger started while another runs or within the cool-down: record and stop."""
    summary = RunSummary(run_id=run_id, spec=spec.name, task=spec.task, trigger=trigger, reason=reason, workspace=wsp,
                         run_dir=run_dir, decision="skipped", skipped_because=why)
    emit_events_task([events.make_event("conveyor.cycle.skipped", spec.name,
                                        {"run_id": run_id, "trigger": trigger, "reason": why})], log_path)
    close_run_task(run_dir, summary)
    return _returned(summary)


def _cycle_events(name: str, s: RunSummary) -> list[dict]:
    payload = {"run_id": s.run_id, "trigger": s.trigger, "decision": s.decision, "reason": s.gate_summary,
               "model_version": s.model_version, "champion_version": s.champion_version, "metrics": s.metrics}
    out = [events.make_event("conveyor.cycle.completed", name, payload)]
    if s.approval is not None and s.approval["status"] == "pending":  # nothing moves until a reviewer decides
        from conveyor.release.approval import requested_event

        out.append(requested_event(name, s.approval, s))
    if s.rollout is not None:  # passed the gate; the champion moves only when the rollout is promoted
        if s.rollout.get("status") == "running":
            from conveyor.release.rollout import RolloutState, rollout_event

            out.append(rollout_event("started", name, RolloutState.from_dict(s.rollout), run_id=s.run_id,
                                     watcher=s.rollout.get("watcher")))
    elif s.decision in ("promoted", "rejected"):
        out.append(events.make_event(f"conveyor.model.{s.decision}", name, payload))
    return out


def _cycle(spec, ws: Workspace, run_id: str, run_dir: str, trigger: str, reason: str | None,
           spec_path: str | None = None, workspace: str | None = None) -> RunSummary:
    wsp = str(ws.root)
    source_key = fingerprint_task(spec)
    ing = ingest_task(spec, source_key, spec.section_hash("data", "curation"), wsp)
    classes = ing.classes
    observe_ingest_task(spec, wsp, ing.manifest_path, ing.dataset_version)
    # reviewed labels, production feedback and machine labels join the source; the review queue
    lab = label_task(spec, wsp, ing.manifest_path, ing.dataset_version, classes)
    prefer = frozen_eval_task(spec, wsp, ing.dataset_version)
    cur = curate_task(spec, lab.manifest_path, lab.labeled_version, spec.section_hash("curation"), prefer,
                      stable_hash(sorted(prefer)), wsp)
    spl = split_task(spec, cur.curated_path, cur.curated_version, ing.dataset_version,
                     spec.section_hash("split", "curation"), classes, wsp)
    contracts_path = contracts_task(spec, lab.manifest_path, spl.split_path, lab.labeled_version, spl.split_version,
                                    spec.section_hash("data", "curation", "split"), classes, wsp, run_dir)

    label_version = label_version_task(spec, wsp, lab.manifest_path, lab.labeled_version)
    lineage = {
        "dataset_version": ing.dataset_version,
        "labeled_version": lab.labeled_version,
        "label_version": label_version.version,
        "manifest_hash": sha256_file(ing.manifest_path),
        "curated_version": cur.curated_version,
        "split_version": spl.split_version,
        "eval_set_hash": spl.eval_hash,
        "spec_hash": spec.spec_hash,
        "seed": spec.train.seed,
        "trigger": trigger,
        "reason": reason,
        "run_id": run_id,
    }
    trained = train_task(spec, spl.split_path, spl.split_version, ing.dataset_version,
                         spec.section_hash("task", "train"), classes, lineage, wsp)
    # Where the weights were made, as recorded when they were trained (a cached training keeps the
    # commit and packages of its own run, not today's).
    lineage = {**lineage, "code_commit": trained.code_commit, "packages": trained.environment.get("packages", {}),
               "environment": trained.environment}
    threads = spec.train.num_threads
    registry_root = str(ws.registry)
    champ = champion_task(spec.name, registry_root)
    champ_metrics = champ_metrics_path = champ_predictions = None
    new_classes: list[str] | None = None  # the champion's classes when the data has classes it does not know
    same = champ is not None and champ.model_hash == trained.checkpoint_hash
    if champ is not None and not same:
        # a class new since the champion was trained: its rows are left out of the champion's evaluation
        champ_eval = evaluate_task(str(champ.file("checkpoint.pt")), champ.model_hash, spl.split_path,
                                   spl.split_version, threads, wsp, role="champion")
        champ_metrics, champ_metrics_path = champ_eval.metrics, champ_eval.metrics_path
        champ_predictions = champ_eval.predictions_path
        new_classes = list(champ_eval.classes) if champ_eval.excluded else None
    challenger = evaluate_task(trained.checkpoint_path, trained.checkpoint_hash, spl.split_path, spl.split_version,
                               threads, wsp, role="challenger", compare_classes=new_classes)
    # a rolled-back model (the same weights) never goes out again by itself
    withdrawal = withdrawal_task(spec.name, registry_root, trained.checkpoint_hash)
    decision = gate_task(spec, challenger.metrics, champ_metrics, champ.version if champ else None, same, withdrawal,
                         spl.split_path, challenger.predictions_path, champ_predictions, classes,
                         challenger.common or None)

    # The version folder keeps what reproduces it: the run record, the split it was trained and
    # evaluated on, and its label version.
    files = {"checkpoint.pt": trained.checkpoint_path, "metrics.json": challenger.metrics_path,
             "split.parquet": spl.split_path, "labels.parquet": label_version.path}
    if trained.run_metadata_path:
        files["run.json"] = trained.run_metadata_path
    files.update(baseline_task(spec, spl.split_path, spl.split_version, challenger.predictions_path,
                               trained.checkpoint_hash, wsp))
    if challenger.onnx_path:
        files["model.onnx"] = challenger.onnx_path
    if trained.tracking:  # the wandb run of the training, for steps that attach more to it
        lineage = {**lineage, "tracking": trained.tracking}
    version = register_task(spec.name, registry_root, files, trained.checkpoint_hash, challenger.metrics,
                            lineage, decision.to_dict(), run_id)
    approval = None
    if decision.decision == "promote" and spec.gates.require_approval:
        approval = request_approval_task(spec, wsp, version.version, run_id, decision.summary, challenger.metrics,
                                         spec_path, workspace)
    if approval is not None and approval["status"] != "approved":
        # waits for a reviewer (or a reviewer rejected this very model before): the champion stays
        rollout, champion_version, promotion_message = None, champ.version if champ else None, approval["message"]
    else:
        rel = release(spec, wsp, version.version, decision, champ.version if champ else None, run_id, spec_path,
                      workspace)
        rollout, champion_version, promotion_message = rel.rollout, rel.champion_version, rel.message

    summary = RunSummary(
        run_id=run_id,
        spec=spec.name,
        task=spec.task,
        trigger=trigger,
        reason=reason,
        workspace=wsp,
        run_dir=run_dir,
        dataset_version=ing.dataset_version,
        decision=approval["decision"] if approval else DECISION_WORDS[decision.decision],
        gate_summary=decision.summary,
        reasons=[o.to_dict() for o in decision.outcomes],
        metrics=challenger.metrics,
        champion_metrics=champ_metrics,
        model_version=version.version,
        model_dir=version.artifact_dir,
        champion_version=champion_version,
        promotion=promotion_message,
        rollout=rollout,
        approval=approval,
        dataset=DatasetCounts(
            label_version=label_version.version,
            labeled_version=lab.labeled_version,
            label_sources=lab.by_source,
            review=ReviewCounts(auto_labeled=lab.auto_labeled, queued=lab.queued, queue=lab.queue, pool=lab.pool,
                                feedback=lab.feedback, reviewed=lab.reviewed, selection=lab.selection),
            received=ing.received, accepted=ing.accepted, quarantined=ing.quarantined,
            quarantine_reasons=ing.quarantine_reasons, quarantine_path=ing.quarantine_path,
            curated=cur.kept, removed_reasons=cur.removed_reasons, removed_path=cur.removed_path,
            annotations=ing.annotations,  # detection: box counts and box quarantine reasons
        ),
        split=SplitSizes(split_version=spl.split_version, group_by=spec.split.group_by, counts=spl.counts,
                         held_out_machine=spl.held_out_machine, groups=spl.groups, per_class=spl.per_class,
                         path=spl.split_path),
        evaluation=EvaluationFiles(metrics_path=challenger.metrics_path, predictions_path=challenger.predictions_path,
                                   champion_metrics_path=champ_metrics_path),
        train=TrainingRun(checkpoint=trained.checkpoint_path, seconds=trained.train_seconds, epochs=trained.epochs,
                          best_epoch=trained.best_epoch, tracking=trained.tracking),
        onnx_max_abs_diff=challenger.onnx_max_abs_diff,
        latency=challenger.latency,
    )
    publish_task(spec.name, summary)
    close_run_task(run_dir, summary, contracts_path)
    # last, from the finished run folder: the HTML gate report (also written into summary.json)
    summary = summary.model_copy(update={"report": report_task(spec.name, run_dir, registry_root, version.version,
                                                               run_id)})
    if summary.report and trained.tracking:  # the report joins the training's wandb run; never fails the cycle
        track_artifact_task(wsp, trained.tracking, summary.report, f"{spec.name}-gate-report", "report")
    return summary

