"""Tasks of the data plane: ingest, curate, split and the data contracts."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy

from conveyor.data.contracts import ContractError, ContractReport, run_contracts
from conveyor.data.curate import CurateResult, curate
from conveyor.labels import versions as labels
from conveyor.labels import stage as review
from conveyor.data.fingerprint import source_fingerprint
from conveyor.data.ingest import IngestResult, ingest
from conveyor.core.spec import Spec
from conveyor.data.split import SplitResult, frozen_eval_hashes, frozen_state_key, read_eval_change, split
from conveyor.core.workspace import Workspace
from conveyor.orchestration.tasks.common import RETRY, content_cache, run_logger


@task(name="fingerprint-source", **RETRY)
def fingerprint_task(spec: Spec) -> str:
    """Content key of the source (every file's bytes), so the ingest cache follows content, not paths."""
    key = source_fingerprint(spec)
    run_logger().info("source %s has content key %s", spec.source_path, key)
    return key


@task(name="ingest", cache_policy=content_cache("spec"), persist_result=True, **RETRY)
def ingest_task(spec: Spec, source_key: str, spec_key: str, workspace: str) -> IngestResult:
    log = run_logger()
    res = ingest(spec, Workspace(workspace).datasets, progress=True)
    log.info("ingested %d of %d items (%d quarantined: %s); dataset version %s",
             res.accepted, res.received, res.quarantined, res.quarantine_reasons or "none", res.dataset_version)
    if res.quarantined:
        log.warning("quarantined items are listed with their reasons in %s", res.quarantine_path)
    return res


@task(name="frozen-eval-set", **RETRY)
def frozen_eval_task(spec: Spec, workspace: str, dataset_version: str) -> frozenset[str]:
    """Hashes of the frozen val/test images, which curation keeps over later copies."""
    return frozen_eval_hashes(Workspace(workspace).state(spec.name), exclude_dataset=dataset_version)


@task(name="curate", cache_policy=content_cache("spec", "manifest_path", "prefer"), persist_result=True, **RETRY)
def curate_task(spec: Spec, manifest_path: str, dataset_version: str, spec_key: str, prefer: frozenset[str],
                prefer_key: str, workspace: str) -> CurateResult:
    res = curate(manifest_path, spec, Workspace(workspace).curated, prefer=prefer)
    run_logger().info("curation kept %d of %d images; removed %s", res.kept, res.received, res.removed_reasons or "none")
    return res


def _frozen_state_key(ctx, params) -> str:
    return frozen_state_key(Workspace(params["workspace"]).state(params["spec"].name), params["dataset_version"])


# The split also depends on the frozen assignments earlier datasets left in the workspace.
@task(name="split", cache_policy=content_cache("spec", "curated_path") + CacheKeyFnPolicy(cache_key_fn=_frozen_state_key),
      persist_result=True, **RETRY)
def split_task(spec: Spec, curated_path: str, curated_version: str, dataset_version: str, spec_key: str,
               classes: list[str], workspace: str) -> SplitResult:
    ws = Workspace(workspace)
    res = split(curated_path, spec, ws.splits, ws.state(spec.name), dataset_version=dataset_version, classes=classes)
    run_logger().info("split %s by %s: %s images, %s groups (%d newly assigned, %d frozen before)",
                          res.split_version, spec.split.group_by, res.counts, res.groups, res.new_assignments,
                          res.frozen_images)
    return res


@task(name="data-contracts", cache_policy=content_cache("spec", "manifest_path", "split_path", "run_dir"),
      persist_result=True, **RETRY)
def contracts_task(spec: Spec, manifest_path: str, split_path: str, dataset_version: str, split_version: str,
                   spec_key: str, classes: list[str], workspace: str, run_dir: str) -> str:
    """Validate the manifest and the split; a failure stops the cycle. Returns the results file."""
    out = Workspace(workspace).contracts / f"{split_version}.json"
    manifest = pl.read_parquet(manifest_path)
    split_df = pl.read_parquet(split_path)
    try:
        report: ContractReport = run_contracts(manifest, split_df, spec, classes, out_path=out, raise_on_failure=True,
                                               eval_change=read_eval_change(split_path))
    except ContractError:
        shutil.copyfile(out, Path(run_dir) / "contracts.json")
        raise
    run_logger().info("data contracts passed: %d suites%s", len(report.suites),
                      f"; {report.eval_set_line()}" if report.eval_set else "")
    return str(out)


@task(name="label-version", **RETRY)
def label_version_task(spec: Spec, workspace: str, manifest_path: str, dataset_version: str) -> labels.LabelVersion:
    """The dataset's label version (a new immutable one when any label changed)."""
    lv = labels.publish(Workspace(workspace), spec.name, pl.read_parquet(manifest_path))
    run_logger().info("label version %s (%d images)%s", lv.version, lv.rows,
                      f", new after {lv.parent}" if lv.created and lv.parent else (", new" if lv.created else ""))
    return lv


@task(name="label-review", **RETRY)
def label_task(spec: Spec, workspace: str, manifest_path: str, dataset_version: str,
               classes: list[str]) -> review.LabelStageResult:
    """Reviewed labels, production feedback and machine labels joined to the source; the review queue."""
    ws = Workspace(workspace)
    champion, challenger = review.model_refs(ws.registry, spec.name)
    res = review.label_stage(spec, ws, manifest_path, dataset_version, classes, champion, challenger, progress=True)
    log = run_logger()
    log.info("labels: %s (labelled version %s); %d auto-labelled, %d queued for review",
             res.by_source, res.labeled_version, res.auto_labeled, res.queued)
    if res.queue:
        log.info("review queue: %s (Label Studio tasks), %s (CSV)", res.queue["tasks"], res.queue["csv"])
    return res
