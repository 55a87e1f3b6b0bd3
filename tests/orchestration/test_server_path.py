"""The real server path: a Prefect server, `prefect deploy` of the generated prefect.yaml, a signed
webhook starting the cycle deployment, a drift event starting it through its deployment trigger,
and a process worker running the webhook's flow run to completion."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from helpers.specs import toy_spec_dict
from helpers.toydata import write_toy_dataset

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECRET = "test-secret-0123456789abcdef"
POOL = "conveyor-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Prefect settings (a test harness may have set some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false", WANDB_MODE="offline",
               DO_NOT_TRACK="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PREFECT_DEPLOYMENTS_CLEAR_SCHEDULES_ON_EMPTY="true")
    env.update(extra)
    return env


def stop(proc: subprocess.Popen | None) -> None:
    """Stop a process started with start_new_session=True, with everything it started."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on a free port, with its home and sqlite database in tmp_path."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = clean_env(PREFECT_HOME=str(home), PREFECT_API_URL=api,
                    PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'server.db'}",
                    PREFECT_LOCAL_STORAGE_PATH=str(tmp_path / "results"), PREFECT_LOGGING_LEVEL="WARNING")
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-ui"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{tail(log)}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server did not answer /api/health in 90 s:\n{tail(log)}")
            time.sleep(0.5)
        yield {"api": api, "env": env, "log": log}
    finally:
        stop(proc)


def prefect(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, f"prefect {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


async def emit(api: str, event: str, resource: dict[str, str], payload: dict) -> None:
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    async with PrefectEventsClient(api_url=api) as events:
        await events.emit(Event(event=event, resource=resource, payload=payload))


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deploy_webhook_event_trigger_and_worker_on_a_real_server(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from starlette.testclient import TestClient

    from conveyor.monitoring import webhook
    from conveyor.orchestration import prefect_api
    from conveyor.orchestration.deployments import render_prefect_yaml
    from conveyor.core.spec import load_spec

    api, env = prefect_server["api"], prefect_server["env"]

    # a toy pipeline: a cron schedule (far from now), a drift trigger, webhooks on
    pipeline = tmp_path / "pipeline"
    write_toy_dataset(pipeline / "data")
    spec_path = pipeline / "toy.yaml"
    spec_path.write_text(yaml.safe_dump(toy_spec_dict(
        name="toy-server", train={"num_threads": 1},
        triggers={"schedule": {"cron": "0 3 1 1 *", "timezone": "Europe/Berlin"},
                  "drift": {"features": ["brightness"]}, "monitor_every": "45m", "webhook": True})))
    spec = load_spec(spec_path)

    # the generated prefect.yaml, deployed as a user would (from the project root)
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(render_prefect_yaml([spec_path], ROOT, work_pool=POOL))
    prefect("work-pool", "create", POOL, "--type", "process", env=env)
    prefect("deploy", "--all", "--prefect-file", str(prefect_file), env=env, timeout=180)

    worker = None
    worker_log = tmp_path / "worker.log"
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        # deployed with the spec's schedule, parameters, concurrency limit and event trigger
        cycle = client.read_deployment_by_name(f"conveyor-cycle/{spec.name}")
        assert cycle.parameters == {"spec_path": str(spec_path), "trigger": "manual"}
        assert cycle.work_pool_name == POOL
        assert cycle.global_concurrency_limit is not None and cycle.global_concurrency_limit.limit == 1
        (sched,) = cycle.schedules
        assert (sched.schedule.cron, sched.schedule.timezone, sched.active) == ("0 3 1 1 *", "Europe/Berlin", True)
        assert sched.parameters == {"trigger": "schedule"}
        automations = client.read_resource_related_automations(f"prefect.deployment.{cycle.id}")
        assert sorted(next(iter(a.trigger.expect)) for a in automations) == [
            "conveyor.drift.detected", "conveyor.webhook.received"]
        # the monitor, every monitor_every
        monitor = client.read_deployment_by_name(f"conveyor-monitor/{spec.name}")
        assert monitor.parameters == {"spec_path": str(spec_path), "start": "event"}
        assert monitor.global_concurrency_limit is not None and monitor.global_concurrency_limit.limit == 1
        (msched,) = monitor.schedules
        assert msched.schedule.interval.total_seconds() == 45 * 60 and msched.active
        # the worker below must pick the webhook's run, not a monitor run
        client.pause_deployment(monitor.id)
        for r in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[monitor.id]))):
            client.delete_flow_run(r.id)

        def runs_with(reason: str):
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[cycle.id])))
            return [r for r in runs if r.parameters.get("reason") == reason]

        def call_webhook(mode: str, reason: str, starter):
            def start(req):  # the receiver calls its starter in a worker thread: give it this API
                with temporary_settings(updates={PREFECT_API_URL: api}):
                    return starter(req)

            app = webhook.create_app([spec], webhook.WebhookConfig(secret=SECRET, mode=mode), starter=start)
            body = json.dumps({"pipeline": spec.name, "reason": reason}).encode()
            with TestClient(app) as http:
                res = http.post(f"/hooks/{spec.name}", content=body,
                                headers={"Content-Type": "application/json", **webhook.sign(body, SECRET)})
            assert res.status_code == 202, res.text
            return res.json()

        # 1. a drift event about the pipeline (as the monitor emits it) starts a cycle through the
        #    deployment trigger, with the event's reason
        asyncio.run(emit(api, "conveyor.drift.detected",
                         {"prefect.resource.id": f"conveyor.pipeline.{spec.name}", "prefect.resource.name": spec.name},
                         {"reason": "brightness drifted on cam-03"}))
        (drift,) = wait_for("the drift event's flow run", lambda: runs_with("brightness drifted on cam-03"), 60)
        assert drift.parameters == {"spec_path": str(spec_path), "trigger": "drift",
                                    "reason": "brightness drifted on cam-03"}
        client.delete_flow_run(drift.id)  # only the webhook's run is executed below

        # 2. a signed webhook call in event mode: its event starts a cycle through the deployment trigger
        # (events go through a process-wide events worker: drain any that earlier tests started for
        #  another API, so this one sends to this server, and drain it again for the tests after)
        EventsWorker.drain_all(timeout=30)
        try:
            call_webhook("event", "labels fixed", prefect_api.event_starter())
        finally:
            EventsWorker.drain_all(timeout=30)
        (via_event,) = wait_for("the webhook event's flow run", lambda: runs_with("labels fixed"), 60)
        assert via_event.parameters == {"spec_path": str(spec_path), "trigger": "webhook", "reason": "labels fixed"}
        client.delete_flow_run(via_event.id)

        # 3. a signed webhook call (default mode) starts a cycle through the real deployment starter
        run_id = call_webhook("deployment", "new cameras installed", prefect_api.deployment_starter())["flow_run_id"]
        run = client.read_flow_run(run_id)
        assert run.deployment_id == cycle.id
        assert run.parameters == {"spec_path": str(spec_path), "trigger": "webhook", "reason": "new cameras installed"}
        assert run.state.is_scheduled()

        # 4. a process worker runs it from the project checkout
        try:
            with worker_log.open("w") as out:
                worker = subprocess.Popen(
                    [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--run-once", "--limit", "1"],
                    env={**env, "CONVEYOR_HOME": str(ROOT)}, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)

            def finished():
                state = client.read_flow_run(run_id).state
                return state if state.is_final() else None

            state = wait_for("the webhook's flow run to finish", finished, timeout=240, every=2)
            assert state.is_completed(), f"{state.type}: {state.message}\n{tail(worker_log)}"
        finally:
            stop(worker)

        # 5. the spec drops its schedule and drift trigger: regenerated and redeployed, both go
        spec_path.write_text(yaml.safe_dump(toy_spec_dict(name="toy-server", train={"num_threads": 1},
                                                          triggers={"webhook": True})))
        prefect_file.write_text(render_prefect_yaml([spec_path], ROOT, work_pool=POOL))
        prefect("deploy", "--all", "--prefect-file", str(prefect_file), env=env, timeout=180)
        cycle = client.read_deployment_by_name(f"conveyor-cycle/{spec.name}")
        assert cycle.schedules == []
        (left,) = client.read_resource_related_automations(f"prefect.deployment.{cycle.id}")
        assert left.trigger.expect == {"conveyor.webhook.received"}

    # the cycle ran in the toy workspace and recorded what started it
    from conveyor.release.registry import Registry

    (summary_file,) = (pipeline / "workspace" / "runs").glob(f"*-{run_id[:8]}/summary.json")
    summary = json.loads(summary_file.read_text())
    assert (summary["run_id"], summary["trigger"], summary["reason"]) == (run_id, "webhook", "new cameras installed")
    (version,) = Registry(pipeline / "workspace" / "registry").list(spec.name)
    assert version.version == summary["model_version"] == 1
    assert (version.lineage["trigger"], version.lineage["run_id"]) == ("webhook", run_id)
