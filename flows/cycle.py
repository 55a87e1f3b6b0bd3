"""One continuous-training cycle: ingest → curate → split → contracts → train → evaluate → gate →
register → promote. The flow composes tasks and holds no stage logic of its own."""

from __future__ import annotations

import uuid

from prefect import flow
from prefect.runtime import flow_run

from conveyor.gate import DECISION_WORDS
from conveyor.spec import load_spec
from conveyor.utils import code_commit, package_versions, sha256_file, stable_hash
from conveyor.workspace import Workspace
from tasks.data import contracts_task, curate_task, fingerprint_task, frozen_eval_task, ingest_task, split_task
from tasks.model import evaluate_task, train_task
from tasks.release import champion_task, gate_task, promote_task, publish_task, register_task
from tasks.run import close_run_task, open_run_task


@flow(name="conveyor-cycle", log_prints=True)
def continuous_training(spec_path: str, workspace: str | None = None, trigger: str = "manual") -> dict:
    """Run one cycle of the pipeline that ``spec_path`` describes; returns the run summary."""
    spec = load_spec(spec_path)
    ws = Workspace(spec.workspace_path(workspace))
    wsp = str(ws.root)
    run_id = str(flow_run.get_id() or uuid.uuid4())
    run_dir = open_run_task(spec, wsp, run_id, trigger)

    source_key = fingerprint_task(spec)
    ing = ingest_task(spec, source_key, spec.section_hash("data", "curation"), wsp)
    classes = ing.classes
    prefer = frozen_eval_task(spec, wsp, ing.dataset_version)
    cur = curate_task(spec, ing.manifest_path, ing.dataset_version, spec.section_hash("curation"), prefer,
                      stable_hash(sorted(prefer)), wsp)
    spl = split_task(spec, cur.curated_path, cur.curated_version, ing.dataset_version,
                     spec.section_hash("split", "curation"), classes, wsp)
    contracts_path = contracts_task(spec, ing.manifest_path, spl.split_path, ing.dataset_version, spl.split_version,
                                    spec.section_hash("data", "curation", "split"), classes, wsp, run_dir)

    lineage = {
        "dataset_version": ing.dataset_version,
        "manifest_hash": sha256_file(ing.manifest_path),
        "curated_version": cur.curated_version,
        "split_version": spl.split_version,
        "eval_set_hash": spl.eval_hash,
        "spec_hash": spec.spec_hash,
        "seed": spec.train.seed,
        "code_commit": code_commit(),
        "packages": package_versions(),
        "trigger": trigger,
        "run_id": run_id,
    }
    trained = train_task(spec, spl.split_path, spl.split_version, ing.dataset_version,
                         spec.section_hash("task", "train"), classes, lineage, wsp)
    threads = spec.train.num_threads
    challenger = evaluate_task(trained.checkpoint_path, trained.checkpoint_hash, spl.split_path, spl.split_version,
                               threads, wsp, role="challenger")

    registry_root = str(ws.registry)
    champ = champion_task(spec.name, registry_root)
    champ_metrics = None
    same = champ is not None and champ.model_hash == trained.checkpoint_hash
    if champ is not None and not same:
        champ_eval = evaluate_task(str(champ.file("checkpoint.pt")), champ.model_hash, spl.split_path,
                                   spl.split_version, threads, wsp, role="champion")
        champ_metrics = champ_eval.metrics
    decision = gate_task(spec, challenger.metrics, champ_metrics, champ.version if champ else None, same)

    files = {"checkpoint.pt": trained.checkpoint_path, "metrics.json": challenger.metrics_path}
    if challenger.onnx_path:
        files["model.onnx"] = challenger.onnx_path
    version = register_task(spec.name, registry_root, files, trained.checkpoint_hash, challenger.metrics,
                            lineage, decision.to_dict(), run_id)
    promotion = promote_task(spec.name, registry_root, version.version, decision, spec.deploy.strategy, run_id)

    summary = {
        "run_id": run_id,
        "spec": spec.name,
        "task": spec.task,
        "trigger": trigger,
        "workspace": wsp,
        "run_dir": run_dir,
        "dataset_version": ing.dataset_version,
        "decision": DECISION_WORDS[decision.decision],
        "gate_summary": decision.summary,
        "reasons": [o.to_dict() for o in decision.outcomes],
        "metrics": challenger.metrics,
        "champion_metrics": champ_metrics,
        "model_version": version.version,
        "model_dir": version.artifact_dir,
        "champion_version": promotion.champion_version,
        "promotion": promotion.message,
        "dataset": {
            "received": ing.received, "accepted": ing.accepted, "quarantined": ing.quarantined,
            "quarantine_reasons": ing.quarantine_reasons, "quarantine_path": ing.quarantine_path,
            "curated": cur.kept, "removed_reasons": cur.removed_reasons, "removed_path": cur.removed_path,
            "annotations": ing.annotations,  # detection: box counts and box quarantine reasons
        },
        "split": {"split_version": spl.split_version, "group_by": spec.split.group_by, "counts": spl.counts,
                  "groups": spl.groups, "per_class": spl.per_class},
        "train": {"checkpoint": trained.checkpoint_path, "seconds": trained.train_seconds, "epochs": trained.epochs,
                  "best_epoch": trained.best_epoch},
        "onnx_max_abs_diff": challenger.onnx_max_abs_diff,
        "latency": challenger.latency,
    }
    publish_task(spec.name, summary)
    close_run_task(run_dir, summary, contracts_path)
    return summary

