"""Rollouts: live metrics from the service's prediction log, alerts, promotion and automatic rollback.

No service runs here: the prediction log rows the service would write are made up (champion and
challenger answers with chosen error rates, latencies, confidences and classes)."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
import yaml

from conveyor.core import events
from conveyor.monitoring.monitor import events_log, prediction_log_dir
from conveyor.release.registry import Registry
from conveyor.release.rollout import (RolloutError, check_rollout, current_state, rollback, rollout_path, start_rollout)
from conveyor.core.spec import SpecError, spec_from_dict
from conveyor.core.io import atomic_write_json, write_parquet_atomic
from conveyor.core.workspace import Workspace
from helpers.registry import toy_registry
from helpers.specs import rollout_spec as make_spec, toy_spec_dict

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
CLASSES = ["red", "green", "blue"]


def answers(n: int, role: str, version: int, *, start: datetime = T0, errors: int = 0, latency: float = 10.0,
            confidence: float = 0.9, predicted: str | list[str] = "red", ids: list[str] | None = None,
            prefix: str | None = None) -> list[dict]:
    rows = []
    for i in range(n):
        err = i < errors
        pred = predicted[i % len(predicted)] if isinstance(predicted, list) else predicted
        rows.append({
            "prediction_id": ids[i] if ids else f"{prefix or role}-{version}-{i}",
            "timestamp": start + timedelta(seconds=i), "camera": "cam-01",
            "predicted": None if err else pred, "confidence": None if err else confidence,
            "predicted_objects": None, "predicted_object_size": None, "predicted_foreground": None,
            "model_version": version, "role": role, "latency_ms": latency + (i % 5),
            "status": "error" if err else "ok", "error": "boom" if err else None, "request_key": f"k{i}"})
    return rows


def write_log(ws: Workspace, rows: list[dict], name: str = "part") -> None:
    df = pl.DataFrame(rows, schema={
        "prediction_id": pl.String(), "timestamp": pl.Datetime("us", "UTC"), "camera": pl.String(),
        "predicted": pl.String(), "confidence": pl.Float64(), "predicted_objects": pl.Float64(),
        "predicted_object_size": pl.Float64(), "predicted_foreground": pl.Float64(), "model_version": pl.Int64(),
        "role": pl.String(), "latency_ms": pl.Float64(), "status": pl.String(), "error": pl.String(),
        "request_key": pl.String()})
    write_parquet_atomic(df, prediction_log_dir(ws, "toy") / "2026-11-02" / f"{name}.parquet")


def finished_events(check) -> list[str]:
    return [e["event"] for e in check.events]


# ---- canary: automatic rollback of a worse challenger, promotion of a good one ----------------------
@pytest.mark.parametrize("worse, alert", [
    ({"errors": 6}, "max_error_rate"),
    ({"latency": 40.0}, "max_latency_ratio"),
    ({"confidence": 0.6}, "max_confidence_drop"),
])
def test_a_worse_canary_is_rolled_back_with_the_reason_recorded(tmp_path, worse, alert):
    spec = make_spec(tmp_path)
    ws, reg = toy_registry(tmp_path)
    st = start_rollout(spec, ws, 2, now=T0)
    assert json.loads(rollout_path(ws, "toy").read_text())["status"] == "running"
    write_log(ws, answers(200, "champion", 1) + answers(50, "challenger", 2, **worse))

    check = check_rollout(spec, ws, now=T0 + timedelta(minutes=5))  # mid-window: a breach ends it at once
    assert check.decision.action == "rollback" and not check.decision.due
    (breach,) = check.decision.breaches
    assert breach.alert == alert and alert in check.decision.reason
    assert finished_events(check) == ["conveyor.rollout.rolled_back"]
    payload = check.events[0]["payload"]
    assert payload["rollout_id"] == st.rollout_id and payload["challenger_version"] == 2
    assert any(alert in r for r in payload["reasons"]) and payload["metrics"]["challenger"]["requests"] == 50

    assert reg.alias("toy") == 1
    (row,) = reg.rollouts("toy")
    assert row["outcome"] == "rolled_back" and alert in row["reason"] and row["ended_at"]
    assert row["metrics"]["decision"]["action"] == "rollback"
    state = json.loads(rollout_path(ws, "toy").read_text())
    assert state["status"] == "rolled_back" and alert in state["reason"]

    # ended: later checks change nothing
    again = check_rollout(spec, ws, now=T0 + timedelta(hours=2))
    assert again.decision is None and again.state.status == "rolled_back" and again.events == []


def test_a_good_canary_is_promoted_at_the_end_of_the_window(tmp_path):
    spec = make_spec(tmp_path)
    ws, reg = toy_registry(tmp_path)
    st = start_rollout(spec, ws, 2, now=T0)
    assert (st.strategy, st.champion, st.challenger, st.traffic, st.sticky_header) == ("canary", 1, 2, 0.2,
                                                                                       "X-Request-Key")
    write_log(ws, answers(200, "champion", 1, latency=10.0) + answers(50, "challenger", 2, latency=11.0))
    # an old row of v2 before the rollout started is not counted
    write_log(ws, answers(5, "challenger", 2, start=T0 - timedelta(hours=1), errors=5), name="before")

    mid = check_rollout(spec, ws, now=T0 + timedelta(minutes=30))
    assert mid.decision.action == "continue" and mid.events == [] and reg.alias("toy") == 1
    assert mid.metrics.challenger.requests == 50 and mid.metrics.challenger.errors == 0
    assert mid.metrics.champion.latency_p95_ms == pytest.approx(14.0)
    assert {c.alert: c.status for c in mid.decision.checks}["max_disagreement"] == "off"

    end = check_rollout(spec, ws, now=T0 + timedelta(hours=1, seconds=1))
    assert end.decision.action == "promote" and end.decision.due
    assert finished_events(end) == ["conveyor.rollout.promoted", "conveyor.model.promoted"]
    assert reg.alias("toy") == 2
    assert reg.alias_history("toy")[-1]["reason"].startswith(f"promoted: canary rollout {st.rollout_id}")
    (row,) = reg.rollouts("toy")
    assert (row["outcome"], row["champion"], row["challenger"], row["strategy"]) == ("promoted", 1, 2, "canary")
    assert json.loads(rollout_path(ws, "toy").read_text())["status"] == "promoted"


def test_shadow_disagreement_above_the_limit_rolls_back(tmp_path):
    spec = make_spec(tmp_path, strategy="shadow")
    ws, reg = toy_registry(tmp_path)
    start_rollout(spec, ws, 2, now=T0)
    ids = [f"req-{i}" for i in range(40)]
    # the shadow answers the same requests; it differs on 12 of 40 (30% > 20%)
    write_log(ws, answers(40, "champion", 1, ids=ids, predicted="red")
              + answers(40, "shadow", 2, ids=ids, predicted=["green"] * 3 + ["red"] * 7))
    check = check_rollout(spec, ws, now=T0 + timedelta(minutes=5))
    assert check.metrics.compared == 40 and check.metrics.disagreement == pytest.approx(0.3)
    assert check.decision.action == "rollback" and "max_disagreement" in check.decision.reason
    assert "0.3 > max_disagreement 0.2" in check.decision.reason
    assert reg.alias("toy") == 1 and reg.rollouts("toy")[0]["outcome"] == "rolled_back"


def test_not_enough_traffic_extends_the_rollout_then_rolls_back_for_lack_of_evidence(tmp_path):
    spec = make_spec(tmp_path)  # duration 1h; max_duration defaults to three times that
    ws, reg = toy_registry(tmp_path)
    st = start_rollout(spec, ws, 2, now=T0)
    assert datetime.fromisoformat(st.deadline) == T0 + timedelta(hours=3)
    write_log(ws, answers(100, "champion", 1) + answers(5, "challenger", 2, errors=2))  # 40% errors, but 5 answers
    mid = check_rollout(spec, ws, now=T0 + timedelta(minutes=10))
    assert mid.decision.action == "continue" and "5 of 20" in mid.decision.reason
    assert {c.alert: c.status for c in mid.decision.checks}["max_error_rate"] == "pending"
    # the window is over but the challenger was never judged: extended, not promoted
    end = check_rollout(spec, ws, now=T0 + timedelta(hours=1))
    assert end.decision.action == "continue" and end.decision.reason.startswith("extended until")
    assert "challenger answered 5 requests < min_requests 20" in end.decision.reason and reg.alias("toy") == 1
    late = check_rollout(spec, ws, now=T0 + timedelta(hours=3))
    assert late.decision.action == "rollback" and late.decision.reason.startswith("not enough evidence")
    assert reg.alias("toy") == 1 and "not enough evidence" in reg.rollouts("toy")[0]["reason"]


def test_an_alert_that_cannot_be_judged_blocks_promotion(tmp_path):
    """Enough answers, but the feedback precision alert has too little labelled feedback: the
    rollout does not promote on missing evidence."""
    spec = make_spec(tmp_path, alerts={"min_feedback_precision": 0.8}, max_duration="2h")
    ws, reg = toy_registry(tmp_path)
    start_rollout(spec, ws, 2, now=T0)
    write_log(ws, answers(200, "champion", 1) + answers(50, "challenger", 2))
    end = check_rollout(spec, ws, now=T0 + timedelta(hours=1, seconds=1))
    checks = {c.alert: c.status for c in end.decision.checks}
    assert checks["min_feedback_precision"] == "not_judged" and checks["max_error_rate"] == "ok"
    assert end.decision.action == "continue" and reg.alias("toy") == 1
    final = check_rollout(spec, ws, now=T0 + timedelta(hours=2))
    assert final.decision.action == "rollback" and "min_feedback_precision: not judged" in final.decision.reason
    assert reg.alias("toy") == 1


def test_max_duration_shorter_than_the_window_is_refused(tmp_path):
    with pytest.raises(SpecError, match="max_duration"):
        make_spec(tmp_path, duration="2h", max_duration="1h")


# ---- blue_green ------------------------------------------------------------------------------------
def test_blue_green_bakes_under_the_alerts_before_it_promotes(tmp_path):
    spec = make_spec(tmp_path, strategy="blue_green", bake="10m")
    ws, reg = toy_registry(tmp_path)
    st = start_rollout(spec, ws, 2, now=T0)
    assert st.traffic == 1.0 and st.bake == "10m"
    service = ws.state("toy") / "service.json"
    atomic_write_json(service, {"pid": 1, "host": "127.0.0.1", "port": 8000, "updated_at": T0.isoformat(),
                                "champion": 1, "challenger": 2, "ready": [1], "strategy": "blue_green",
                                "rollout_id": st.rollout_id})
    waiting = check_rollout(spec, ws, now=T0 + timedelta(seconds=30))
    assert waiting.decision.action == "continue" and "waiting for the service" in waiting.decision.reason
    atomic_write_json(service, {**json.loads(service.read_text()), "ready": [1, 2]})
    # ready, but nothing has been served yet: no promotion on readiness alone
    ready = check_rollout(spec, ws, now=T0 + timedelta(seconds=40))
    assert ready.decision.action == "continue" and reg.alias("toy") == 1
    assert {c.alert: c.status for c in ready.decision.checks}["bake"] == "pending"
    # all traffic on v2 from T0+1m: still baking at T0+5m, promoted after 10 minutes with every alert held
    write_log(ws, answers(60, "challenger", 2, start=T0 + timedelta(minutes=1)))
    baking = check_rollout(spec, ws, now=T0 + timedelta(minutes=5))
    assert baking.decision.action == "continue" and reg.alias("toy") == 1
    done = check_rollout(spec, ws, now=T0 + timedelta(minutes=11, seconds=1))
    assert done.decision.action == "promote" and reg.alias("toy") == 2
    assert {c.alert: c.status for c in done.decision.checks}["max_latency_ratio"] == "off"
    assert finished_events(done)[0] == "conveyor.rollout.promoted"
    assert json.loads(rollout_path(ws, "toy").read_text())["status"] == "promoted"


def test_blue_green_rolls_back_on_an_alert_during_its_bake(tmp_path):
    spec = make_spec(tmp_path, strategy="blue_green", bake="10m")
    ws, reg = toy_registry(tmp_path)
    st = start_rollout(spec, ws, 2, now=T0)
    atomic_write_json(ws.state("toy") / "service.json", {"updated_at": T0.isoformat(), "ready": [1, 2],
                                                         "rollout_id": st.rollout_id})
    write_log(ws, answers(40, "challenger", 2, start=T0 + timedelta(minutes=1), errors=10))
    check = check_rollout(spec, ws, now=T0 + timedelta(minutes=3))
    assert check.decision.action == "rollback" and "max_error_rate" in check.decision.reason
    assert reg.alias("toy") == 1


def test_blue_green_rolls_back_when_the_service_never_gets_ready(tmp_path):
    spec = make_spec(tmp_path, strategy="blue_green", duration="10m")
    ws, reg = toy_registry(tmp_path)
    start_rollout(spec, ws, 2, now=T0)
    assert check_rollout(spec, ws, now=T0 + timedelta(minutes=9)).decision.action == "continue"
    end = check_rollout(spec, ws, now=T0 + timedelta(minutes=10))
    assert end.decision.action == "rollback" and "did not report v2 ready" in end.decision.reason
    assert "no service.json" in end.decision.reason
    assert reg.alias("toy") == 1 and reg.rollouts("toy")[0]["outcome"] == "rolled_back"


# ---- manual rollback, agreement of registry and rollout state ----------------------------------------
def test_manual_rollback_during_a_rollout_ends_it(tmp_path):
    spec = make_spec(tmp_path)
    ws, reg = toy_registry(tmp_path, versions=3)
    st = start_rollout(spec, ws, 2, now=T0)
    # `conveyor rollback --to <champion>` aborts the rollout; the alias does not move
    res = rollback(reg, "toy", 1, reason="support tickets about v2")
    assert res.action == "unchanged" and res.champion_version == 1 and res.rollout["rollout_id"] == st.rollout_id
    assert "ended: rolled back" in res.message
    (row,) = reg.rollouts("toy")
    assert row["outcome"] == "rolled_back" and row["reason"] == "support tickets about v2"
    state = json.loads(rollout_path(ws, "toy").read_text())
    assert state["status"] == "rolled_back" and state["reason"] == "support tickets about v2"
    assert check_rollout(spec, ws, now=T0 + timedelta(minutes=1)).decision is None

    # the rolled-back v2 is remembered: it does not go out again by itself
    with pytest.raises(RolloutError, match="v2 was rolled back"):
        start_rollout(spec, ws, 2, now=T0 + timedelta(minutes=2))

    # to another version: the alias moves and the rollout ends in the same transaction
    st2 = start_rollout(spec, ws, 3, now=T0 + timedelta(minutes=2))
    res = rollback(reg, "toy", 2, reason="hotfix: v2 after all", by="alice")  # a person may bring v2 back
    assert res.action == "promoted" and reg.alias("toy") == 2 and res.rollout["rollout_id"] == st2.rollout_id
    assert reg.alias_history("toy")[-1]["reason"] == "hotfix: v2 after all"
    assert json.loads(rollout_path(ws, "toy").read_text())["status"] == "rolled_back"
    # no rollout running: a plain rollback, as before
    assert rollback(reg, "toy", 1).message == "rolled back: champion is v1 (was v2)"


def test_registry_and_rollout_state_agree_after_promote_rollback_and_restart(tmp_path):
    spec = make_spec(tmp_path)
    ws, reg = toy_registry(tmp_path, versions=3)
    with pytest.raises(RolloutError, match="already the champion"):
        start_rollout(spec, ws, 1, now=T0)
    with pytest.raises(RolloutError, match="promotion replaces the champion at once"):
        start_rollout(make_spec(tmp_path, strategy="replace"), ws, 2, now=T0)

    first = start_rollout(spec, ws, 2, now=T0)
    with pytest.raises(RolloutError, match=f"already running: {first.rollout_id}"):
        start_rollout(spec, ws, 3, now=T0)
    write_log(ws, answers(100, "champion", 1) + answers(30, "challenger", 2))
    assert check_rollout(spec, ws, now=T0 + timedelta(hours=1)).state.status == "promoted"
    assert reg.alias("toy") == 2

    # a second rollout: v3 against the new champion v2, rolled back on errors
    t1 = T0 + timedelta(hours=2)
    second = start_rollout(spec, ws, 3, now=t1)
    assert second.champion == 2
    write_log(ws, answers(100, "champion", 2, start=t1) + answers(30, "challenger", 3, start=t1, errors=10), name="p2")
    assert check_rollout(spec, ws, now=t1 + timedelta(minutes=1)).state.status == "rolled_back"
    assert reg.alias("toy") == 2
    assert [(r["challenger"], r["outcome"]) for r in reg.rollouts("toy")] == [(2, "promoted"), (3, "rolled_back")]
    assert json.loads(rollout_path(ws, "toy").read_text())["rollout_id"] == second.rollout_id

    # a crash between the registry's commit and the state file's rename: rollout.json is behind
    stale = {**second.to_dict()}
    atomic_write_json(rollout_path(ws, "toy"), stale)  # still says running
    assert current_state(spec, ws).status == "rolled_back"
    assert json.loads(rollout_path(ws, "toy").read_text())["status"] == "rolled_back"
    rollout_path(ws, "toy").unlink()  # lost altogether
    # the rolled-back v3 goes out again only by a person's recorded decision
    with pytest.raises(RolloutError, match="v3 was rolled back"):
        start_rollout(spec, ws, 3, now=t1 + timedelta(hours=1))
    third = start_rollout(spec, ws, 3, now=t1 + timedelta(hours=1), force_by="bob", force_reason="errors fixed upstream")
    assert json.loads(rollout_path(ws, "toy").read_text())["rollout_id"] == third.rollout_id

    # a restart: a new Registry over the same files sees the same running rollout
    again = Registry(ws.registry)
    assert again.running_rollout("toy")["rollout_id"] == third.rollout_id
    assert current_state(spec, ws).rollout_id == third.rollout_id and again.alias("toy") == 2


def test_no_champion_means_no_rollout(tmp_path):
    spec = make_spec(tmp_path)
    ws = Workspace(tmp_path / "ws")
    reg = Registry(ws.registry)
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"w")
    reg.register("toy", files={"checkpoint.pt": str(ck)}, model_hash="h", metrics={}, lineage={}, gate={})
    with pytest.raises(RolloutError, match="no champion yet"):
        start_rollout(spec, ws, 1)


def test_old_registries_get_the_rollouts_table(tmp_path):
    root = tmp_path / "reg"
    root.mkdir()
    con = sqlite3.connect(root / "registry.sqlite")
    con.executescript("CREATE TABLE versions (name TEXT NOT NULL, version INTEGER NOT NULL, model_hash TEXT NOT NULL, "
                      "created_at TEXT NOT NULL, run_id TEXT, artifact_dir TEXT NOT NULL, metrics TEXT NOT NULL, "
                      "lineage TEXT NOT NULL, gate TEXT NOT NULL, PRIMARY KEY (name, version));")
    con.close()
    assert Registry(root).rollouts("toy") == [] and Registry(root).running_rollout("toy") is None


# ---- feedback precision ---------------------------------------------------------------------------
def test_feedback_precision_below_the_minimum_rolls_back(tmp_path):
    d = toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.5, "duration": "1h",
                              "alerts": {"min_feedback_precision": 0.8, "min_feedback": 10}},
                      triggers={"performance": {"below": 0.5, "feedback": "feedback.csv"}})
    spec = spec_from_dict(d, base_dir=tmp_path)
    ws, reg = toy_registry(tmp_path)
    start_rollout(spec, ws, 2, now=T0)
    # the challenger says green for every other request; the truth is red throughout
    write_log(ws, answers(40, "champion", 1) + answers(40, "challenger", 2, predicted=["red", "green"]))
    fb = pl.DataFrame({"timestamp": [(T0 + timedelta(seconds=i)).isoformat() for i in range(30)],
                       "label": ["red"] * 30,
                       "prediction_id": [f"challenger-2-{i}" for i in range(20)] + [f"champion-1-{i}" for i in range(10)]})
    fb.write_csv(tmp_path / "feedback.csv")
    check = check_rollout(spec, ws, now=T0 + timedelta(minutes=5))
    assert check.metrics.feedback_labelled == 20  # the champion's 10 labelled answers are not the challenger's
    # macro precision over the classes present (red: 10 of 10 right, green: 0 of 10)
    assert check.metrics.feedback_precision == pytest.approx(0.5)
    assert check.decision.action == "rollback" and "min_feedback_precision 0.8" in check.decision.reason
    assert "min_feedback_precision" in reg.rollouts("toy")[0]["reason"]


def test_too_little_feedback_is_not_judged(tmp_path):
    d = toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.5, "duration": "1h",
                              "alerts": {"min_feedback_precision": 0.8}},  # min_feedback 20
                      triggers={"performance": {"below": 0.5, "feedback": "feedback.csv"}})
    spec = spec_from_dict(d, base_dir=tmp_path)
    ws, _ = toy_registry(tmp_path)
    start_rollout(spec, ws, 2, now=T0)
    write_log(ws, answers(40, "champion", 1) + answers(40, "challenger", 2, predicted="green"))
    pl.DataFrame({"timestamp": [T0.isoformat()] * 5, "label": ["red"] * 5,
                  "prediction_id": [f"challenger-2-{i}" for i in range(5)]}).write_csv(tmp_path / "feedback.csv")
    check = check_rollout(spec, ws, now=T0 + timedelta(minutes=5))
    status = {c.alert: c.status for c in check.decision.checks}
    assert status["min_feedback_precision"] == "not_judged" and check.decision.action == "continue"


# ---- the spec --------------------------------------------------------------------------------------
@pytest.mark.parametrize("deploy, needle", [
    ({"alerts": {"max_error_rate": 2}}, "deploy.alerts.max_error_rate"),
    ({"alerts": {"max_latency_ratio": 0}}, "deploy.alerts.max_latency_ratio"),
    ({"alerts": {"min_requests": 0}}, "deploy.alerts.min_requests"),
    ({"alerts": {"max_errors": 0.1}}, "deploy.alerts.max_errors: is not a known field"),
    ({"check_every": "soon"}, "deploy.check_every"),
    ({"check_every": "0s"}, "deploy.check_every"),
    ({"duration": "1 hour"}, "deploy.duration"),
    ({"sticky_header": "not a header"}, "deploy.sticky_header"),
    ({"strategy": "rainbow"}, "deploy.strategy: must be one of"),
])
def test_spec_errors_name_the_field(tmp_path, deploy, needle):
    with pytest.raises(SpecError, match=needle.replace(".", r"\.")):
        spec_from_dict(toy_spec_dict(deploy=deploy), base_dir=tmp_path)


def test_spec_defaults():
    spec = spec_from_dict(toy_spec_dict(deploy={"strategy": "shadow", "duration": "3s", "check_every": "1s"}))
    a = spec.deploy.alerts
    assert (a.max_error_rate, a.max_latency_p95_ms, a.max_latency_ratio, a.max_confidence_drop, a.max_disagreement,
            a.min_feedback_precision, a.min_requests) == (0.02, None, 1.5, 0.1, 0.2, None, 20)
    assert spec.deploy.sticky_header == "X-Request-Key" and spec.deploy.check_every == "1s"
    assert spec_from_dict(toy_spec_dict()).deploy.check_every == "10s"


# ---- the command line ------------------------------------------------------------------------------
def test_cli_rollout_status_and_manual_rollback(tmp_path, capsys):
    from conveyor.cli.main import main

    ws, reg = toy_registry(tmp_path)
    d = toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.2, "duration": "1h"}, workspace=str(tmp_path / "ws"))
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(d))
    assert main(["rollout-status", str(p)]) == 0
    assert "no rollout yet" in capsys.readouterr().out
    assert main(["rollout", str(p), "--version", "2", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["status"] == "running" and st["challenger"] == 2
    assert main(["rollout", str(p), "--version", "2"]) == 1
    assert "already running" in capsys.readouterr().err
    assert main(["rollout-status", str(p)]) == 0
    out = capsys.readouterr().out
    assert "RUNNING (canary" in out and "decision now: CONTINUE" in out and "min_requests" in out
    assert main(["rollout-status", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decision"]["action"] == "continue"
    assert main(["rollback", str(p), "--to", "1", "--reason", "abort"]) == 0
    assert "ended: rolled back" in capsys.readouterr().out
    logged = [e["event"] for e in events.read_log(events_log(ws, "toy"))]
    assert logged == ["conveyor.rollout.started", "conveyor.rollout.rolled_back"]
    assert reg.rollouts("toy")[0]["outcome"] == "rolled_back"
    assert main(["registry", "list", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rollouts"][0]["reason"] == "abort"


# ---- the Prefect flow ------------------------------------------------------------------------------
@pytest.mark.slow
def test_rollout_flow_watches_and_promotes_at_the_end(prefect_harness, tmp_path):
    from conveyor.orchestration.flows.rollout import rollout_flow

    ws, reg = toy_registry(tmp_path)
    d = toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.5, "duration": "3s", "check_every": "1s"},
                      workspace=str(tmp_path / "ws"))
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(d))
    spec = spec_from_dict(d, base_dir=tmp_path)
    st = start_rollout(spec, ws, 2)  # as the cycle does; the flow watches this one
    now = datetime.fromisoformat(st.started_at)
    write_log(ws, answers(40, "champion", 1, start=now) + answers(30, "challenger", 2, start=now, latency=11.0))
    for f in prediction_log_dir(ws, "toy").rglob("*.parquet"):  # every answer inside the window already
        df = pl.read_parquet(f).with_columns(pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("timestamp"))
        write_parquet_atomic(df, f)
    began = time.monotonic()
    res = rollout_flow(spec_path=str(p), version=2, rollout_id=st.rollout_id)
    took = time.monotonic() - began
    assert res["status"] == "promoted" and res["checks"] >= 2 and not res["started_here"], res
    assert 1.0 < took < 30, took
    assert reg.alias("toy") == 2
    logged = [e["event"] for e in events.read_log(events_log(ws, "toy"))]
    assert logged == ["conveyor.rollout.promoted", "conveyor.model.promoted"]
    # the same flow for a rollout that ended already returns at once, changing nothing
    assert rollout_flow(spec_path=str(p), version=2, rollout_id=st.rollout_id)["checks"] == 0


# ---- the cycle and the monitor ---------------------------------------------------------------------
@pytest.mark.slow
def test_cycle_starts_a_rollout_and_the_monitor_ends_it(prefect_harness, tmp_path):
    """The first model is promoted directly; a later challenger that passes the gate starts a rollout
    (the champion stays), and the monitor rolls it back at the end of a window with no traffic."""
    import numpy as np
    from PIL import Image

    from helpers.toydata import write_toy_dataset
    from conveyor.orchestration.flows.cycle import continuous_training
    from conveyor.orchestration.flows.monitor import monitor_pipeline

    write_toy_dataset(tmp_path / "data")
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.2, "duration": "1h"})))
    ws = tmp_path / "ws"
    log = ws / "monitoring" / "toy" / "events.jsonl"

    first = continuous_training(spec_path=str(p), workspace=str(ws))
    assert first["decision"] == "promoted" and first["champion_version"] == 1 and first["rollout"] is None
    assert [e["event"] for e in events.read_log(log)] == ["conveyor.cycle.completed", "conveyor.model.promoted"]

    victim = sorted((tmp_path / "data" / "img").rglob("*.png"))[0]
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] = (arr[0, 0].astype(int) + 1) % 256
    Image.fromarray(arr).save(victim)
    second = continuous_training(spec_path=str(p), workspace=str(ws))
    assert second["decision"] == "promoted", second["gate_summary"]  # passed the gate ...
    assert second["model_version"] == 2 and second["champion_version"] == 1  # ... and is rolled out, not champion
    ro = second["rollout"]
    assert (ro["status"], ro["strategy"], ro["champion"], ro["challenger"]) == ("running", "canary", 1, 2)
    assert ro["watcher"]["mode"] == "monitor"  # not under a deployment: no rollout flow run is started
    assert f"canary rollout {ro['rollout_id']} started" in second["promotion"]
    assert [e["event"] for e in events.read_log(log)][2:] == ["conveyor.cycle.completed", "conveyor.rollout.started"]
    reg = Registry(ws / "registry")
    assert reg.alias("toy") == 1 and reg.running_rollout("toy")["rollout_id"] == ro["rollout_id"]

    ends = datetime.fromisoformat(ro["ends_at"])
    mid = monitor_pipeline(spec_path=str(p), workspace=str(ws), start="none",
                           now=(ends - timedelta(minutes=30)).isoformat())
    assert mid["rollout"]["decision"]["action"] == "continue" and reg.running_rollout("toy") is not None
    # no traffic at all: past the window it is extended, at its deadline rolled back for lack of evidence
    extended = monitor_pipeline(spec_path=str(p), workspace=str(ws), start="none",
                                now=(ends + timedelta(seconds=1)).isoformat())
    assert extended["rollout"]["decision"]["action"] == "continue" and reg.running_rollout("toy") is not None
    done = monitor_pipeline(spec_path=str(p), workspace=str(ws), start="none",
                            now=(datetime.fromisoformat(ro["deadline"]) + timedelta(seconds=1)).isoformat())
    assert done["rollout"]["state"]["status"] == "rolled_back"
    assert "not enough evidence" in done["rollout"]["state"]["reason"]
    assert reg.alias("toy") == 1 and reg.rollouts("toy")[0]["outcome"] == "rolled_back"
    assert events.read_log(log)[-1]["event"] == "conveyor.rollout.rolled_back"


def test_rollout_deployment_only_for_rollout_strategies(tmp_path):
    import inspect

    from conveyor.orchestration.deployments import render_prefect_yaml
    from conveyor.orchestration.flows.rollout import rollout_flow

    specs = []
    for name, strategy in (("plain", "replace"), ("canaried", "canary")):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(toy_spec_dict(name=name, deploy={"strategy": strategy, "traffic": 0.1})))
        specs.append(p)
    conf = yaml.safe_load(render_prefect_yaml(specs, tmp_path))
    rollouts = [d for d in conf["deployments"] if d["entrypoint"] == "flows/rollout.py:rollout_flow"]
    assert [d["name"] for d in rollouts] == ["canaried"]
    assert rollouts[0]["parameters"] == {"spec_path": "canaried.yaml"} and rollouts[0]["schedules"] == []
    params = inspect.signature(rollout_flow.fn).parameters
    assert set(rollouts[0]["parameters"]) <= set(params) and rollout_flow.name == "conveyor-rollout"
