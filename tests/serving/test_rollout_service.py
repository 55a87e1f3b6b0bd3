"""A rollout against the real service on loopback: clients keep sending images while the
controller watches the live metrics and promotes or rolls back; no request may fail."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from conveyor.release import rollout as rollout_mod
from conveyor.serving import routing
from conveyor.release.registry import Registry
from conveyor.serving.http import BackgroundServer, create_app
from conveyor.serving.service import InferenceService, ServiceConfig
from conveyor.core.workspace import Workspace
from helpers.serving import png, register, set_champion
from helpers.specs import rollout_spec

# Every test here serves real HTTP on loopback under load for seconds (a canary window runs to its end).
pytestmark = pytest.mark.slow

CONFIG = dict(poll_s=0.05, warmup_runs=1, flush_rows=5, flush_s=0.2)
COLOURS = [(200, 30, 30), (30, 180, 40), (30, 40, 200)]


def canary(duration: str) -> dict:
    """Half the traffic, checked every second; confidence alerts only."""
    return {"traffic": 0.5, "duration": duration, "check_every": "1s",
            "alerts": {"min_requests": 10, "max_confidence_drop": 0.1, "max_latency_ratio": None}}


class Clients:
    """Four client threads posting images until stopped (bounded in count and time)."""

    def __init__(self, url: str, limit: int = 50_000, seconds: float = 60.0):
        self.url, self.limit, self.deadline = url, limit, time.monotonic() + seconds
        self.answers: list[dict] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(4)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        rng = random.Random(i)
        bodies = [png(c) for c in COLOURS]
        with httpx.Client(timeout=10.0) as client:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                with self.lock:
                    if len(self.answers) + len(self.failures) >= self.limit:
                        return
                try:
                    r = client.post(f"{self.url}/predict", content=rng.choice(bodies),
                                    headers={"Content-Type": "image/png", "X-Request-Key": f"k{rng.randrange(50)}"})
                    with self.lock:
                        (self.answers.append(r.json()) if r.status_code == 200
                         else self.failures.append(f"{r.status_code} {r.text[:200]}"))
                except httpx.HTTPError as err:
                    with self.lock:
                        self.failures.append(repr(err))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def _watch(spec, ws, timeout_s: float = 45.0) -> rollout_mod.RolloutCheck:
    """What the rollout flow does: check every half second until the rollout ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check = rollout_mod.check_rollout(spec, ws)
        if check.result is not None and check.result.ended:
            return check
        time.sleep(0.5)
    raise AssertionError("the rollout did not end in time")


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# The bad challenger is rolled back as soon as it has answered min_requests, well before its window
# ends; the good one must last its whole window (long enough for a loaded machine to warm it up).
@pytest.mark.parametrize("challenger, outcome, duration", [("uniform", "rolled_back", "60s"),
                                                          ("colour", "promoted", "10s")])
def test_canary_is_rolled_back_when_worse_and_promoted_when_good(tmp_path, models, challenger, outcome,  # noqa: F811
                                                                 duration):
    spec = rollout_spec(tmp_path, **canary(duration))
    ws = Workspace(tmp_path / "ws")
    champion = register(ws, spec.name, models["colour"], "champion")
    # "uniform" answers 1/3 for every class: a confidence drop of about 0.5; "colour" is as good
    new = register(ws, spec.name, models[challenger], f"challenger-{challenger}")
    set_champion(ws, spec.name, champion)

    service = InferenceService(spec, ws, ServiceConfig(**CONFIG))
    with BackgroundServer(create_app(service)) as server:
        clients = Clients(server.url)
        try:
            _wait_for(lambda: len(clients.answers) >= 10)
            state = rollout_mod.start_rollout(spec, ws, new)
            _wait_for(lambda: any(a["model_version"] == new for a in clients.answers))
            check = _watch(spec, ws)
            _wait_for(lambda: service.routing.challenger is None)  # the service followed the decision
            time.sleep(0.5)  # requests in flight at the switch finish on the model they started with
            after = len(clients.answers)
            _wait_for(lambda: len(clients.answers) >= after + 20)
        finally:
            clients.finish()

    assert clients.failures == [], clients.failures[:5]
    assert check.result.state.status == outcome and check.result.state.rollout_id == state.rollout_id
    reg = Registry(ws.registry)
    (record,) = reg.rollouts(spec.name)
    assert record["outcome"] == outcome
    expected_champion = new if outcome == "promoted" else champion
    assert reg.alias(spec.name) == expected_champion
    assert rollout_mod.current_state(spec, ws).status == outcome
    # every answer after the decision comes from the champion the registry names
    assert {a["model_version"] for a in clients.answers[after:]} == {expected_champion}
    assert {a["role"] for a in clients.answers[after:]} == {"champion"}
    if outcome == "rolled_back":
        assert "confidence" in record["reason"] and check.result.state.reason == record["reason"]
    # the events the flow's task sends (the library returns them)
    assert f"conveyor.rollout.{outcome}" in [e["event"] for e in check.result.events]

    # a restarted service serves the same champion
    again = InferenceService(spec, ws, ServiceConfig(**CONFIG))
    again.start()
    try:
        _wait_for(lambda: again.ready)
        assert again.routing.champion.version == expected_champion and again.routing.challenger is None
        assert again.status()["champion"] == expected_champion
    finally:
        again.stop()


def test_manual_rollback_during_a_canary_returns_all_traffic_to_the_champion(tmp_path, models):  # noqa: F811
    spec = rollout_spec(tmp_path, **canary("1h"))
    ws = Workspace(tmp_path / "ws")
    v1 = register(ws, spec.name, models["red"], "v1")
    v2 = register(ws, spec.name, models["green"], "v2")
    set_champion(ws, spec.name, v1)
    service = InferenceService(spec, ws, ServiceConfig(**CONFIG))
    with BackgroundServer(create_app(service)) as server:
        clients = Clients(server.url)
        try:
            rollout_mod.start_rollout(spec, ws, v2)
            _wait_for(lambda: any(a["model_version"] == v2 for a in clients.answers))
            res = rollout_mod.rollback(Registry(ws.registry), spec.name, v1, reason="operator: green is wrong",
                                       workspace=ws)
            assert res.rollout is not None and res.rollout["outcome"] == "rolled_back"
            _wait_for(lambda: service.routing.challenger is None)
            time.sleep(0.5)
            after = len(clients.answers)
            _wait_for(lambda: len(clients.answers) >= after + 20)
        finally:
            clients.finish()
    assert clients.failures == []
    assert {a["model_version"] for a in clients.answers[after:]} == {v1}
    assert routing.read_rollout(rollout_mod.rollout_path(ws, spec.name)).status == "rolled_back"
    assert Registry(ws.registry).rollouts(spec.name)[0]["reason"] == "operator: green is wrong"
