"""The Prefect API as conveyor's library sees it: sending events, and the webhook receiver's
starters (a deployment run, or an event an automation acts on).

The library (``conveyor.monitoring.webhook``, the monitor, the flows) builds events and start
requests as plain records; only this module talks to Prefect, so the library imports and tests
without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from conveyor.core.events import append_log
from conveyor.monitoring.webhook import EVENT_NAME, Starter, StartError, StartRequest, WebhookConfig

log = logging.getLogger(__name__)


def emit(event: dict[str, Any], log_path: str | Path | None = None) -> str | None:
    """Send an event to the Prefect API (when one is reachable) and append it to the local log.

    Returns the Prefect event id, or None when it could not be sent (logged, never raised: a
    monitoring decision must not fail because the event bus is down)."""
    if log_path is not None:
        append_log(log_path, event)
    try:
        from prefect.events import emit_event

        sent = emit_event(event=event["event"], resource=event["resource"], payload=event["payload"])
        return str(sent.id) if sent is not None else None
    except Exception as err:  # noqa: BLE001 - report and go on
        log.warning("could not emit %s to Prefect: %s", event["event"], err)
        return None


def api_error(err: BaseException) -> StartError:
    import httpx

    if isinstance(err, (httpx.TransportError, ConnectionError, TimeoutError)):
        return StartError(f"Prefect API unreachable ({type(err).__name__}); check PREFECT_API_URL and that the "
                          f"server is running", status=503)
    try:
        from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
    except ImportError:  # pragma: no cover
        ObjectNotFound = PrefectHTTPStatusError = ()  # type: ignore[assignment]
    if isinstance(err, ObjectNotFound):
        return StartError("not found on the Prefect API; deploy it first (`prefect deploy --all`, see prefect.yaml)",
                          status=502)
    if isinstance(err, PrefectHTTPStatusError):
        return StartError(f"the Prefect API answered HTTP {err.response.status_code}", status=502)
    return StartError(type(err).__name__, status=502)


def deployment_starter(timeout: float = 0, tags: Sequence[str] = ("webhook",)) -> Starter:
    """Start a run of ``conveyor-cycle/<pipeline>`` with ``prefect.deployments.run_deployment``.

    The run is created and the call returns at once (``timeout=0``); a worker picks it up. The
    request's signature is the run's idempotency key, so the same request never makes two runs.
    """

    def start(req: StartRequest) -> str:
        from prefect.deployments import run_deployment

        try:
            run = run_deployment(name=req.deployment, parameters=req.parameters, timeout=timeout,
                                 tags=list(tags), idempotency_key=f"conveyor-webhook-{req.request_id}",
                                 as_subflow=False)
        except Exception as err:
            raise api_error(err) from err
        return str(run.id)

    start.mode = "deployment"  # type: ignore[attr-defined]
    return start


def event_starter(event: str = EVENT_NAME) -> Starter:
    """Emit a Prefect event for the pipeline; wire an automation to it to act on webhooks."""

    def start(req: StartRequest) -> str:
        from prefect.events import emit_event

        try:
            ev = emit_event(
                event=event,
                resource={"prefect.resource.id": f"conveyor.pipeline.{req.pipeline}",
                          "prefect.resource.name": req.pipeline},
                payload={"trigger": req.trigger, "reason": req.reason, "deployment": req.deployment,
                         "request_id": req.request_id},
            )
        except Exception as err:
            raise api_error(err) from err
        if ev is None:
            raise StartError("Prefect events are not being sent (no events client; is PREFECT_API_URL set?)",
                             status=503)
        return str(ev.id)

    start.mode = "event"  # type: ignore[attr-defined]
    return start


def starter_for(config: WebhookConfig) -> Starter:
    """The starter of the receiver's mode: a deployment run, or an event."""
    if config.mode == "deployment":
        if not os.environ.get("PREFECT_API_URL"):
            log.warning("PREFECT_API_URL is not set: runs would be created on a temporary local Prefect API "
                        "that has no deployments and no workers. Start a server, `prefect deploy --all`, and "
                        "export PREFECT_API_URL=http://127.0.0.1:4200/api")
        return deployment_starter()
    return event_starter()
