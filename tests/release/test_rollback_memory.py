"""A rolled-back model never comes back by itself: the registry remembers, the gate rejects it,
no rollout or promotion sends it out again, and only a person's recorded action does."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
import yaml

from helpers.registry import toy_registry
from helpers.specs import toy_spec_dict
from helpers.toydata import write_toy_dataset
from conveyor.core.io import write_parquet_atomic
from conveyor.core.spec import spec_from_dict
from conveyor.monitoring.monitor import prediction_log_dir
from conveyor.core.workspace import Workspace
from conveyor.release.registry import Registry, RegistryError
from conveyor.release.rollout import RolloutError, check_rollout, rollback, start_rollout

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
LOG_SCHEMA = {"prediction_id": pl.String(), "timestamp": pl.Datetime("us", "UTC"), "camera": pl.String(),
              "predicted": pl.String(), "confidence": pl.Float64(), "model_version": pl.Int64(), "role": pl.String(),
              "latency_ms": pl.Float64(), "status": pl.String()}


def _answer(pid: str, at: datetime, role: str, version: int, confidence: float) -> dict:
    return {"prediction_id": pid, "timestamp": at, "camera": "cam-01", "predicted": "red", "confidence": confidence,
            "model_version": version, "role": role, "latency_ms": 10.0, "status": "ok"}


def _canary(tmp_path):
    return spec_from_dict(toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.2, "duration": "1h"}),
                          base_dir=tmp_path)


def test_a_rollout_that_rolls_back_withdraws_its_challenger(tmp_path):
    ws, reg = toy_registry(tmp_path, 3)
    spec = _canary(tmp_path)
    start_rollout(spec, ws, 2, now=T0)
    assert reg.withdrawal("toy", 2) is None
    check_rollout(spec, ws, now=T0 + timedelta(hours=3))  # no traffic at all: no evidence by the deadline
    w = reg.withdrawal("toy", model_hash="hash-2")
    assert w is not None and w["version"] == 2 and w["source"] == "rollout" and "not enough evidence" in w["reason"]
    # a new rollout or a promotion of v2 is refused, and says why
    with pytest.raises(RolloutError, match=r"v2 was rolled back at .* \(by its rollout's alerts\)"):
        start_rollout(spec, ws, 2, now=T0 + timedelta(hours=4))
    with pytest.raises(RegistryError, match="only a person sends it out again"):
        reg.set_alias("toy", 2, reason="promoted: passed gate")
    assert reg.alias("toy") == 1


def test_a_manual_rollback_withdraws_the_version_it_moves_away_from(tmp_path):
    ws, reg = toy_registry(tmp_path, 3)
    reg.set_alias("toy", 2, reason="promoted")
    res = rollback(reg, "toy", 1, reason="wrong labels on cam-3", workspace=ws, by="alice")
    assert res.champion_version == 1
    w = reg.withdrawal("toy", 2)
    assert w["source"] == "rollback" and w["by"] == "alice" and w["reason"] == "wrong labels on cam-3"
    assert reg.withdrawal("toy", 1) is None


def test_only_a_person_sends_a_rolled_back_version_out_again_and_it_is_recorded(tmp_path):
    ws, reg = toy_registry(tmp_path, 3)
    reg.set_alias("toy", 2, reason="promoted")
    rollback(reg, "toy", 1, reason="bad night images", workspace=ws, by="alice")
    spec = _canary(tmp_path)
    with pytest.raises(RolloutError, match="rolled back"):
        start_rollout(spec, ws, 2, now=T0)
    with pytest.raises(RolloutError, match="needs a reason"):
        start_rollout(spec, ws, 2, now=T0, force_by="bob", force_reason=" ")
    st = start_rollout(spec, ws, 2, now=T0, force_by="bob", force_reason="night images relabelled; retest")
    assert st.challenger == 2 and reg.withdrawal("toy", 2) is None
    events = [(e["event"], e["by"], e["reason"]) for e in reg.withdrawals("toy")]
    assert events == [("rolled_back", "alice", "bad night images"),
                      ("released", "bob", "night images relabelled; retest")]


@pytest.mark.slow
def test_an_unchanged_cycle_after_a_rolled_back_canary_is_rejected_and_starts_no_rollout(tmp_path):
    """The scenario: v2 passes the gate and goes out as a canary, its rollout is rolled back, and
    the next cycle with no new data reuses the cached training, produces the same v2, and must
    neither pass the gate nor start a rollout."""
    import numpy as np
    from PIL import Image

    from conveyor.orchestration.flows.cycle import continuous_training

    write_toy_dataset(tmp_path / "data")
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.2, "duration": "1h"})))
    ws = tmp_path / "ws"
    first = continuous_training(spec_path=str(p), workspace=str(ws))
    assert first["decision"] == "promoted" and first["champion_version"] == 1

    victim = sorted((tmp_path / "data" / "img").rglob("*.png"))[0]
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] = (arr[0, 0].astype(int) + 1) % 256
    Image.fromarray(arr).save(victim)
    second = continuous_training(spec_path=str(p), workspace=str(ws))
    assert second["model_version"] == 2 and second["rollout"]["status"] == "running"
    reg = Registry(ws / "registry")
    spec = spec_from_dict(toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.2, "duration": "1h"}),
                          base_dir=tmp_path)
    # the canary's live answers: the challenger's confidence collapses, and its alert rolls it back
    started = datetime.fromisoformat(second["rollout"]["started_at"])
    rows = [_answer(f"c{i}", started + timedelta(seconds=i + 1), "champion", 1, 0.9) for i in range(40)]
    rows += [_answer(f"n{i}", started + timedelta(seconds=i + 1), "challenger", 2, 0.38) for i in range(25)]
    write_parquet_atomic(pl.DataFrame(rows, schema=LOG_SCHEMA),
                         prediction_log_dir(Workspace(ws), "toy") / "day" / "part.parquet")
    check = check_rollout(spec, Workspace(ws), now=started + timedelta(minutes=5))
    assert check.decision.action == "rollback" and "max_confidence_drop" in check.decision.reason
    assert reg.alias("toy") == 1 and reg.withdrawal("toy", 2)["source"] == "rollout"

    third = continuous_training(spec_path=str(p), workspace=str(ws))
    assert third["model_version"] == 2  # the same weights: cached training, the same version
    assert third["decision"] == "rejected" and third["rollout"] is None
    assert third["champion_version"] == 1 and reg.alias("toy") == 1 and reg.running_rollout("toy") is None
    assert third["gate_summary"].startswith("v2 was rolled back at ")
    assert "confidence drop" in third["gate_summary"] and "max_confidence_drop 0.1" in third["gate_summary"]
    assert [r["kind"] for r in third["reasons"]] == ["history"]
    assert spec.name == "toy"


def test_the_cli_sends_a_rolled_back_version_out_only_with_force_and_a_reason(tmp_path, capsys):
    from conveyor.cli.main import main

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.2, "duration": "1h"},
                                                      workspace="ws")))
    ws, reg = toy_registry(tmp_path, 3)
    reg.set_alias("toy", 2, reason="promoted")
    assert main(["rollback", str(spec_path), "--to", "1", "--reason", "bad night images", "--by", "alice"]) == 0
    assert reg.withdrawal("toy", 2)["by"] == "alice"
    assert main(["rollout", "start", str(spec_path), "--version", "2"]) == 1
    assert "v2 was rolled back" in capsys.readouterr().err
    assert main(["rollout", "start", str(spec_path), "--version", "2", "--force"]) == 1
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["rollout", "start", str(spec_path), "--version", "2", "--force", "--reason", "relabelled",
                 "--by", "bob"]) == 0
    assert reg.running_rollout("toy")["challenger"] == 2
    assert reg.withdrawals("toy")[-1]["event"] == "released" and reg.withdrawals("toy")[-1]["by"] == "bob"
    capsys.readouterr()
    assert main(["registry", "list", str(spec_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["event"] for e in listed["withdrawals"]] == ["rolled_back", "released"]
    assert all(v["rolled_back"] is None for v in listed["versions"])  # v2 was released by bob
