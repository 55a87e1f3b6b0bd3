"""Tasks of the model plane: train and evaluate."""

from __future__ import annotations

from prefect import task

from conveyor.model.evaluate import EvalResult, evaluate
from conveyor.core.spec import Spec
from conveyor.model.train import TrainResult, train
from conveyor.core.io import environment_hash, stable_hash
from conveyor.core.workspace import Workspace
from conveyor.orchestration.tasks.common import RETRY, content_cache, library_source_hash, run_logger


@task(name="train", cache_policy=content_cache("spec", "split_path", "lineage"), persist_result=True, **RETRY)
def train_task(spec: Spec, split_path: str, split_version: str, dataset_version: str, spec_key: str,
               classes: list[str], lineage: dict, workspace: str) -> TrainResult:
    key = stable_hash([split_version, spec_key, classes, library_source_hash(), environment_hash()])
    out_dir = Workspace(workspace).models / key
    res = train(spec, split_path, classes, out_dir, dataset_version=dataset_version, lineage=lineage, progress=True,
                workspace=workspace)
    run_logger().info("trained %s for %d epochs in %.1f s (best epoch %d): %s", res.model_name, res.epochs,
                          res.train_seconds, res.best_epoch, res.checkpoint_path)
    if res.tracking:
        t = res.tracking
        run_logger().info("tracked as wandb run %s (%s)%s", t["run_id"], t["mode"],
                          f": {t['run_dir']} (upload with `wandb sync {t['run_dir']}`)" if t.get("run_dir") else
                          (f": {t['url']}" if t.get("url") else ""))
    return res


@task(name="evaluate", cache_policy=content_cache("checkpoint_path", "split_path"), persist_result=True, **RETRY)
def evaluate_task(checkpoint_path: str, checkpoint_hash: str, split_path: str, split_version: str,
                  num_threads: int, workspace: str, role: str = "challenger",
                  compare_classes: list[str] | None = None) -> EvalResult:
    out_dir = Workspace(workspace).evals / f"{checkpoint_hash[:16]}-{split_version}"
    res = evaluate(checkpoint_path, split_path, out_dir, split="test", num_threads=num_threads, progress=True,
                   compare_classes=compare_classes)
    if res.excluded:
        run_logger().warning("%s does not know class(es) %s: %d test rows left out of its evaluation", role,
                             res.excluded["classes"], res.excluded["rows"])
    m = res.metrics
    run_logger().info("%s on %d test images: f1=%.4f ece=%.4f p95=%.2f ms (%s)", role, res.n_images,
                          m.get("f1", float("nan")), m.get("ece", float("nan")), m.get("latency_p95_ms", float("nan")),
                          res.latency.get("backend", "?"))
    return res
