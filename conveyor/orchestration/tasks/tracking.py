"""Attach a file to the training's experiment-tracking run (wandb) after the fact."""

from __future__ import annotations

from prefect import task

from conveyor.model import tracking
from conveyor.orchestration.tasks.common import run_logger


@task(name="track-artifact")
def track_artifact_task(workspace: str, run_ref: dict | None, path: str | None, name: str,
                        artifact_type: str) -> dict | None:
    """Log ``path`` as an artifact of the wandb run ``run_ref`` (a TrainResult's ``tracking``), resumed by
    id. Never fails the flow: any failure is logged and the answer is None."""
    if not run_ref or not path:
        return None
    try:
        res = tracking.log_artifact(workspace, run_ref, path, name, artifact_type)
    except Exception as err:  # noqa: BLE001 - tracking must never fail a cycle
        run_logger().warning("could not attach %s to wandb run %s: %s: %s", path, run_ref.get("run_id"),
                             type(err).__name__, err)
        return None
    if res is not None:
        run_logger().info("attached %s to wandb run %s as %s (%s)", path, res["run_id"], res["artifact"],
                          res["run_dir"] or res["mode"])
    return res
