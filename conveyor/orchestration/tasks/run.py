"""Tasks that open and close a run folder: the resolved spec in, the summary out."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from conveyor.core.spec import Spec
from conveyor.core.summary import RunSummary
from conveyor.core.io import atomic_write_json, atomic_write_text
from conveyor.core.timeutil import utcnow
from conveyor.core.workspace import Workspace


@task(name="open-run")
def open_run_task(spec: Spec, workspace: str, run_id: str, trigger: str, reason: str | None = None) -> str:
    """Make the run folder and write the resolved spec into it (as timm writes args.yaml)."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    run_dir = Workspace(workspace).runs / f"{stamp}-{run_id[:8]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "spec.yaml", spec.resolved_yaml())
    atomic_write_json(run_dir / "run.json", {"run_id": run_id, "spec": spec.name, "spec_hash": spec.spec_hash,
                                             "trigger": trigger, "reason": reason,
                                             "started_at": stamp})
    return str(run_dir)


@task(name="close-run")
def close_run_task(run_dir: str, summary: RunSummary, contracts_path: str | None = None) -> str:
    if contracts_path:
        atomic_write_text(Path(run_dir) / "contracts.json", Path(contracts_path).read_text())
    return str(summary.write(Path(run_dir) / "summary.json"))
