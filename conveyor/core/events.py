"""Events: every trigger and gate decision, as a Prefect event and in a local log.

Events are plain dicts built by the stages (``make_event``) and sent by the tasks
(:func:`conveyor.orchestration.prefect_api.emit`), so
the library stays testable without a Prefect API. Each event names the pipeline as its resource
(``conveyor.pipeline.<name>``), so Prefect automations and deployment triggers can match it, e.g.
``prefect.yaml`` starts the cycle on ``conveyor.drift.detected``. A copy of every event is
appended to ``<workspace>/monitoring/<name>/events.jsonl`` so decisions stay auditable without a
server.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


# What each event means (README lists them).
EVENTS = {
    "conveyor.drift.detected": "drift fired and a cycle should start (deployment trigger)",
    "conveyor.drift.suppressed": "drift fired, but a cycle is running or the cool-down holds",
    "conveyor.drift.checked": "drift evaluated: quiet, not enough data, or no baseline",
    "conveyor.performance.degraded": "the feedback metric fell below the target and a cycle should start",
    "conveyor.performance.suppressed": "the performance trigger fired, but a cycle is running or the cool-down holds",
    "conveyor.performance.checked": "performance evaluated: ok, not enough feedback, or no feedback",
    "conveyor.cycle.skipped": "a cycle started by a trigger stopped at once: a cycle is running or the cool-down holds",
    "conveyor.cycle.completed": "a cycle finished; payload.decision is promoted, rejected, skipped or pending_approval",
    "conveyor.model.promoted": "a challenger became the champion",
    "conveyor.model.rejected": "a challenger failed the gate",
    "conveyor.rollout.started": "a challenger that passed the gate started a shadow, canary or blue_green rollout",
    "conveyor.rollout.promoted": "a rollout ended with every alert holding: the challenger became the champion",
    "conveyor.rollout.rolled_back": "a rollout ended without promotion (an alert breached, too little traffic, "
                                    "the service never got ready, or a manual rollback); the champion stays",
    "conveyor.approval.requested": "a challenger passed the gate and waits for a reviewer (gates.require_approval)",
    "conveyor.approval.approved": "a reviewer approved a pending challenger: it is promoted or its rollout starts",
    "conveyor.approval.rejected": "a reviewer rejected a pending challenger; the champion stays",
    "conveyor.webhook.received": "a signed webhook call was accepted (event mode of `conveyor webhook`)",
}


def resource(pipeline: str) -> dict[str, str]:
    return {"prefect.resource.id": f"conveyor.pipeline.{pipeline}", "prefect.resource.name": pipeline}


def make_event(name: str, pipeline: str, payload: dict[str, Any]) -> dict[str, Any]:
    if name not in EVENTS:
        raise ValueError(f"unknown event {name!r}")
    return {"event": name, "resource": resource(pipeline), "payload": payload,
            "occurred": datetime.now(timezone.utc).isoformat()}


def append_log(path: str | Path, event: dict[str, Any]) -> None:
    """Append one event to a JSON-lines log (one write call per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(event, default=str, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
