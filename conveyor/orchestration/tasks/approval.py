"""The cycle's sign-off step (gates.require_approval): record the request and say how to decide."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from conveyor.release import approval
from conveyor.release.registry import Registry
from conveyor.core.spec import Spec
from conveyor.core.workspace import Workspace
from conveyor.orchestration.tasks.common import RETRY, artifact_key, run_logger


@task(name="request-approval", **RETRY)
def request_approval_task(spec: Spec, workspace: str, version: int, run_id: str, gate_summary: str,
                          metrics: dict | None = None, spec_path: str | None = None,
                          workspace_arg: str | None = None) -> dict:
    """A challenger that passed the gate waits for a reviewer: a pending approval in the registry and a
    markdown artifact with the commands that decide. A version that already has a decision keeps it."""
    registry = Registry(Workspace(workspace).registry)
    res = approval.request(registry, spec, version, run_id, spec_path=spec_path, workspace=workspace_arg)
    log = run_logger()
    if res["status"] == "pending":
        log.warning(res["message"])
        create_markdown_artifact(
            approval.markdown(spec.name, res, gate_summary, registry.alias(spec.name), metrics),
            key=artifact_key(spec.name, "approval"), description=f"v{version} waits for approval")
    else:
        log.info(res["message"])
    return res
