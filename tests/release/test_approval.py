"""Reviewer sign-off (gates.require_approval) and experiment tracking with wandb.

The flow test runs two real cycles of the toy pipeline under the temporary Prefect API: the first
challenger waits for a reviewer and becomes the champion when approved; the second is rejected and
the champion stays. The other approval tests work on a registry with made-up versions. The tracking
tests train a tiny model with wandb offline, disabled, and broken."""

from __future__ import annotations

import json
import logging
import struct
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from conveyor.core import events
from conveyor.model import tracking
from conveyor.release.approval import ApprovalError, Scores, approve, reject, request
from conveyor.release.gate import GateDecision
from conveyor.release.registry import Registry
from conveyor.core.spec import spec_from_dict
from conveyor.core.workspace import Workspace
from helpers.prefectapi import artifact_keys
from helpers.specs import toy_spec_dict
from helpers.toydata import make_color_dataset, write_toy_dataset


# ---- reading an offline wandb run (its .wandb file is a LevelDB-style log of protobuf records) ------
def wandb_records(run_dir: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a wandb transaction log"
    out, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (2, 3):  # first / middle piece of a record split over blocks
            pending = chunk if kind == 2 else pending + chunk
            continue
        rec = pb.Record()
        rec.ParseFromString(pending + chunk if kind == 4 else chunk)
        pending = b""
        out.append(rec)
    return out


def offline_run(run_dir: str | Path) -> dict:
    """config, history rows, summary and artifacts of an offline run, from its records."""
    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    # wandb's service process writes the log on its own: wait for the run's exit record (under load the
    # file can lag behind run.finish() returning)
    deadline = time.monotonic() + 60
    records = wandb_records(run_dir)
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = wandb_records(run_dir)
    run = {"config": {}, "history": [], "summary": {}, "artifacts": [], "run_id": None}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run["run_id"] = rec.run.run_id
            run["project"] = rec.run.project
            run["name"] = rec.run.display_name
            run["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            run["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            run["summary"].update({key(i): json.loads(i.value_json) for i in rec.summary.update if key(i)})
        elif kind == "artifact":
            run["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type,
                                     "metadata": json.loads(rec.artifact.metadata or "{}"),
                                     "files": [e.path for e in rec.artifact.manifest.contents]})
    return run


# ---- the flow: pending -> approve -> champion; a second challenger -> reject -> champion unchanged -----
def _touch_one_image(data_root: Path) -> None:
    victim = sorted((data_root / "img").rglob("*.png"))[0]
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] = (arr[0, 0].astype(int) + 1) % 256
    Image.fromarray(arr).save(victim)


@pytest.mark.slow
def test_cycle_waits_for_a_reviewer_then_approve_and_reject(prefect_harness, tmp_path, monkeypatch, capsys):
    from conveyor.cli.main import main
    from conveyor.orchestration.flows.cycle import continuous_training

    monkeypatch.setenv("WANDB_MODE", "offline")  # this cycle is tracked: the lineage names its wandb run
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))  # the CLI's defaults stay inside the test
    monkeypatch.setenv("CONVEYOR_REPORT", "1")  # the first cycle renders its gate report (attached to the wandb run)
    write_toy_dataset(tmp_path / "data")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(toy_spec_dict(gates={"require_approval": True})))
    ws = tmp_path / "ws"
    log = ws / "monitoring" / "toy" / "events.jsonl"
    reg = Registry(ws / "registry")

    first = continuous_training(spec_path=str(spec_path), workspace=str(ws))
    assert first["decision"] == "pending_approval", first["gate_summary"]
    assert first["model_version"] == 1 and first["champion_version"] is None and first["rollout"] is None
    ap = first["approval"]
    assert ap["status"] == "pending" and ap["run_id"] == first["run_id"] and ap["version"] == 1
    assert f"conveyor approve {spec_path} {first['run_id'][:8]} --workspace {ws}" in ap["approve"]
    assert "waits for a reviewer" in first["promotion"] and "there is no champion yet" in first["promotion"]
    assert reg.alias("toy") is None, "nothing is promoted before a reviewer approves"
    assert reg.get("toy", 1).lineage["approval"]["status"] == "pending"
    assert [e["event"] for e in events.read_log(log)] == ["conveyor.cycle.completed", "conveyor.approval.requested"]
    assert events.read_log(log)[0]["payload"]["decision"] == "pending_approval"
    assert "toy-approval" in artifact_keys(first["run_id"])
    assert json.loads((Path(first["run_dir"]) / "summary.json").read_text())["decision"] == "pending_approval"

    # the training was tracked offline under the workspace, and the registered lineage says where
    tr = reg.get("toy", 1).lineage["tracking"]
    assert tr == first["train"]["tracking"] and tr["mode"] == "offline" and tr["name"] == first["run_id"][:8]
    assert Path(tr["run_dir"]).is_dir() and Path(tr["run_dir"]).is_relative_to(ws / "wandb")
    assert any(a["type"] == "model" for a in offline_run(tr["run_dir"])["artifacts"])
    # ... and the gate report was attached to that run afterwards (the run resumed by id: one more folder)
    assert first["report"] and Path(first["report"]).is_file()
    resumed = [d for d in (ws / "wandb").glob(f"offline-run-*-{tr['run_id']}") if d != Path(tr["run_dir"])]
    assert len(resumed) == 1
    assert [(a["name"], a["type"]) for a in offline_run(resumed[0])["artifacts"]] == [("toy-gate-report", "report")]

    capsys.readouterr()
    assert main(["registry", "list", str(spec_path), "--workspace", str(ws)]) == 0
    listed = capsys.readouterr().out
    assert "pending_approval" in listed and "v1 waits for approval" in listed

    # approve by the run id's prefix: v1 becomes the champion, and who and why is recorded
    assert main(["approve", str(spec_path), first["run_id"][:8], "--by", "alice", "--reason", "checked the samples",
                 "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "v1 approved by alice (checked the samples): v1 is the champion" in out
    assert reg.alias("toy") == 1
    approval = reg.get("toy", 1).lineage["approval"]
    assert (approval["status"], approval["by"], approval["reason"]) == ("approved", "alice", "checked the samples")
    assert approval["at"] and "v1 is the champion" in approval["outcome"]
    assert "approved by alice" in reg.alias_history("toy")[-1]["reason"]
    assert [e["event"] for e in events.read_log(log)][2:] == ["conveyor.approval.approved", "conveyor.model.promoted"]
    assert events.read_log(log)[2]["payload"]["by"] == "alice"

    # deciding twice is an error that says who decided
    assert main(["approve", str(spec_path), first["run_id"][:8], "--by", "bob", "--workspace", str(ws)]) == 1
    assert "already approved by alice" in capsys.readouterr().err
    assert main(["reject", str(spec_path), "1", "--version", "--by", "bob", "--reason", "no",
                 "--workspace", str(ws)]) == 1
    assert "already approved by alice" in capsys.readouterr().err

    # a second challenger (one image changed) passes the gate against v1 and waits; a reviewer rejects it
    _touch_one_image(tmp_path / "data")
    monkeypatch.setenv("CONVEYOR_REPORT", "0")
    second = continuous_training(spec_path=str(spec_path), workspace=str(ws))
    assert second["decision"] == "pending_approval", second["gate_summary"]
    assert second["model_version"] == 2 and second["champion_version"] == 1
    assert "champion stays v1" in second["promotion"]
    assert main(["reject", str(spec_path), second["run_id"], "--by", "bob", "--reason", "cam-03 labels look off",
                 "--workspace", str(ws), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["status"], res["version"], res["champion_version"]) == ("rejected", 2, 1)
    assert res["events"] == ["conveyor.approval.rejected"]
    assert reg.alias("toy") == 1, "a rejection leaves the champion"
    lineage = reg.get("toy", 2).lineage["approval"]
    assert (lineage["status"], lineage["by"], lineage["reason"]) == ("rejected", "bob", "cam-03 labels look off")
    assert [(a["version"], a["status"], a["by"]) for a in reg.approvals("toy")] == [(1, "approved", "alice"),
                                                                                   (2, "rejected", "bob")]
    assert main(["approve", str(spec_path), "2", "--version", "--by", "alice", "--workspace", str(ws)]) == 1
    assert "already rejected by bob" in capsys.readouterr().err
    assert main(["registry", "list", str(spec_path), "--workspace", str(ws), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["status"] for a in listed["approvals"]] == ["approved", "rejected"]
    assert listed["versions"][1]["lineage"]["approval"]["by"] == "bob"
    # version.json in the version folder is written once, at registration
    assert "approval" not in json.loads((Path(reg.get("toy", 2).artifact_dir) / "version.json").read_text())["lineage"]


# ---- approvals on a registry of made-up versions ---------------------------------------------------------
def _gate(passed: bool) -> dict:
    return GateDecision(passed, "promote" if passed else "reject", [], None,
                        "all gate rules pass" if passed else "1 of 1 gate rules fail: f1 = 0.1 fails >= 0.5").to_dict()


def _as_registered(mv, split_path, out_dir) -> Scores:
    """Scores every version as registered (the champion changed since these versions were gated, so
    approving them gates them again)."""
    return Scores({"f1": 0.9, "latency_p95_ms": 5.0})


def _setup(tmp_path: Path, gates: list[bool], champion: int | None = None, **deploy):
    spec = spec_from_dict(toy_spec_dict(gates={"require_approval": True},
                                        deploy={"strategy": "replace", **deploy}), base_dir=tmp_path)
    ws = Workspace(tmp_path / "ws")
    reg = Registry(ws.registry)
    split = tmp_path / "split.parquet"  # the frozen test split every version was gated on
    pl.DataFrame({"id": ["i1"], "label": ["red"], "split": ["test"]}).write_parquet(split)
    for v, passed in enumerate(gates, start=1):
        ck = tmp_path / f"ck{v}.pt"
        ck.write_bytes(f"weights {v}".encode())
        reg.register("toy", files={"checkpoint.pt": str(ck), "split.parquet": str(split)}, model_hash=f"hash-{v}",
                     metrics={"f1": 0.9}, lineage={"dataset_version": f"ds-{v}", "eval_set_hash": "eval-1"},
                     gate=_gate(passed), run_id=f"run{v:05d}-aaaa-bbbb")
    if champion is not None:
        reg.set_alias("toy", champion, reason="first model")
    return spec, ws, reg


def test_double_decisions_failed_gates_and_bad_references_are_errors(tmp_path):
    spec, ws, reg = _setup(tmp_path, [True, False, True])
    req = request(reg, spec, 1, "run00001-aaaa-bbbb", spec_path="spec.yaml")
    assert req["status"] == "pending" and req["created"] and req["decision"] == "pending_approval"
    assert request(reg, spec, 1, "another-run", spec_path="spec.yaml")["created"] is False  # one request per version

    with pytest.raises(ApprovalError, match="failed its gate .*nothing to approve"):
        approve(spec, ws, "run00002", by="alice")
    with pytest.raises(ApprovalError, match="failed its gate"):
        reject(spec, ws, 2, by="alice", reason="bad", by_version=True)
    with pytest.raises(ApprovalError, match="never waited for approval"):
        approve(spec, ws, 3, by="alice", by_version=True)
    with pytest.raises(ApprovalError, match="no run 'deadbeef' .*waiting for approval: v1 \\(run run00001\\)"):
        approve(spec, ws, "deadbeef", by="alice")
    with pytest.raises(ApprovalError, match="at least its first 8 characters"):
        approve(spec, ws, "run0", by="alice")
    with pytest.raises(ApprovalError, match="no version 9"):
        approve(spec, ws, 9, by="alice", by_version=True)
    with pytest.raises(ApprovalError, match="--by must name"):
        approve(spec, ws, "run00001", by=" ")
    with pytest.raises(ApprovalError, match="--reason must say why"):
        reject(spec, ws, "run00001", by="bob", reason="")
    assert reg.approval("toy", 1)["status"] == "pending", "a refused decision changes nothing"

    res = approve(spec, ws, "run00001", by="alice")
    assert res.status == "approved" and res.champion_version == 1 and res.previous_champion is None
    assert [e["event"] for e in res.events] == ["conveyor.approval.approved", "conveyor.model.promoted"]
    with pytest.raises(ApprovalError, match="already approved by alice .*a decision is final"):
        approve(spec, ws, "run00001-aaaa-bbbb", by="alice")
    with pytest.raises(ApprovalError, match="already approved by alice"):
        reject(spec, ws, 1, by="bob", reason="too late", by_version=True)


def test_approving_an_older_pending_version_replaces_a_newer_champion(tmp_path):
    spec, ws, reg = _setup(tmp_path, [True, True, True], champion=1)
    for v in (2, 3):
        request(reg, spec, v, f"run{v:05d}-aaaa-bbbb")
    newer = approve(spec, ws, 3, by="alice", by_version=True, evaluator=_as_registered)
    assert newer.champion_version == 3 and newer.replaces is None
    older = approve(spec, ws, "run00002", by="bob", reason="v3 regressed on night cameras", evaluator=_as_registered)
    assert reg.alias("toy") == 2 and older.previous_champion == 3 and older.replaces == 3
    assert "v2 is the champion (was v3)" in older.message and "v3 (newer" in older.message
    assert "replaces it" in older.message
    assert older.events[0]["payload"]["replaces"] == 3
    assert reg.get("toy", 2).lineage["approval"]["outcome"] == older.message


def test_approving_with_a_rollout_strategy_starts_the_rollout(tmp_path):
    from conveyor.release.rollout import rollout_path

    spec, ws, reg = _setup(tmp_path, [True, True], champion=1, strategy="canary", traffic=0.2)
    request(reg, spec, 2, "run00002-aaaa-bbbb")
    res = approve(spec, ws, "run00002", by="alice", evaluator=_as_registered)
    ro = res.release.rollout
    assert (ro["status"], ro["strategy"], ro["champion"], ro["challenger"]) == ("running", "canary", 1, 2)
    assert ro["watcher"]["mode"] == "monitor"
    assert reg.alias("toy") == 1 and reg.running_rollout("toy")["challenger"] == 2
    assert json.loads(rollout_path(ws, "toy").read_text())["status"] == "running"
    assert [e["event"] for e in res.events] == ["conveyor.approval.approved", "conveyor.rollout.started"]
    assert res.events[1]["payload"]["approved_by"] == "alice"


# ---- tracking ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colour_split(tmp_path_factory) -> Path:
    return make_color_dataset(tmp_path_factory.mktemp("colours"))


def _train(tmp_path: Path, split: Path, run_id: str = "0123abcd-run"):
    from conveyor.model.train import train

    spec = spec_from_dict({"name": "tiny", "task": "classification", "data": {"source": str(split.parent)},
                           "train": {"model": "resnet10t", "image_size": 16, "epochs": 2, "batch_size": 16,
                                     "num_threads": 1}}, base_dir=split.parent)
    return train(spec, split, ["red", "green", "blue"], tmp_path / "model", dataset_version="dv-1",
                 lineage={"run_id": run_id, "split_version": "sv-1"}, workspace=tmp_path / "ws")


@pytest.mark.slow
def test_training_is_tracked_offline_and_artifacts_attach_later(tmp_path, monkeypatch, colour_split):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    res = _train(tmp_path, colour_split)
    t = res.tracking
    assert t["mode"] == "offline" and t["project"] == "tiny" and t["name"] == "0123abcd"
    run_dir = Path(t["run_dir"])
    assert run_dir.is_dir() and run_dir.parent == tmp_path / "ws" / "wandb" and t["run_id"] in run_dir.name

    run = offline_run(run_dir)
    assert run["run_id"] == t["run_id"] and run["project"] == "tiny" and run["name"] == "0123abcd"
    cfg = run["config"]
    assert cfg["dataset_version"] == "dv-1" and cfg["split_version"] == "sv-1" and cfg["seed"] == 0
    assert cfg["train"]["model"] == "resnet10t" and cfg["train"]["epochs"] == 2 and cfg["task"] == "classification"
    rows = [r for r in run["history"] if "loss" in r]
    assert [r["_step"] for r in rows] == [1, 2]
    assert [r["loss"] for r in rows] == pytest.approx([h["loss"] for h in res.history])
    assert all("val_f1" in r for r in rows)
    assert run["summary"]["best_epoch"] == res.best_epoch and "best_val_f1" in run["summary"]
    (model,) = run["artifacts"]
    assert model["name"] == "tiny-model" and model["type"] == "model" and model["files"] == ["checkpoint.pt"]
    assert model["metadata"]["checkpoint_hash"] == res.checkpoint_hash

    # tracking leaves the checkpoint alone: the same training untracked gives the same bytes
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert _train(tmp_path / "untracked", colour_split).checkpoint_hash == res.checkpoint_hash
    monkeypatch.setenv("WANDB_MODE", "offline")

    report = tmp_path / "gate-report.html"
    report.write_text("<html>gate report</html>")
    attached = tracking.log_artifact(tmp_path / "ws", t, report, "gate report", "report")
    assert attached["run_id"] == t["run_id"] and attached["artifact"] == "gate-report"
    assert Path(attached["run_dir"]) != run_dir and t["run_id"] in Path(attached["run_dir"]).name
    resumed = offline_run(attached["run_dir"])
    assert resumed["run_id"] == t["run_id"]
    assert [(a["name"], a["type"], a["files"]) for a in resumed["artifacts"]] == [
        ("gate-report", "report", ["gate-report.html"])]


@pytest.mark.slow
def test_disabled_tracking_writes_nothing(tmp_path, monkeypatch, colour_split):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert _train(tmp_path, colour_split).tracking is None
    assert not (tmp_path / "ws" / "wandb").exists()
    assert tracking.log_artifact(tmp_path / "ws", {"run_id": "x", "project": "tiny"}, __file__, "a", "b") is None
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert tracking.mode() == "disabled"


@pytest.mark.slow
def test_a_broken_wandb_never_breaks_training(tmp_path, monkeypatch, colour_split, caplog):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(tracking, "_warned", set())

    def boom(*a, **k):
        raise RuntimeError("wandb-core did not start")

    monkeypatch.setattr(wandb, "init", boom)
    with caplog.at_level(logging.WARNING, logger="conveyor.model.tracking"):
        first = _train(tmp_path / "a", colour_split)
        second = _train(tmp_path / "b", colour_split)
    assert first.tracking is None and second.tracking is None
    assert first.checkpoint_hash == second.checkpoint_hash and Path(first.checkpoint_path).is_file()
    warned = [r.getMessage() for r in caplog.records if r.name == "conveyor.model.tracking"]
    assert len(warned) == 1 and "wandb-core did not start" in warned[0], warned

    # wandb that cannot be imported
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert not tracking.start_run(tmp_path, "tiny").active
    assert tracking.log_artifact(tmp_path, {"run_id": "x", "project": "tiny"}, __file__, "a", "b") is None

    # wandb failing part-way: the run is dropped, marked incomplete, and the caller goes on
    class Flaky:
        id = "flaky"
        summary: dict = {}

        def log(self, *a, **k):
            raise OSError("disk full")

        def finish(self, *a, **k):
            pass

    run = tracking.TrackedRun(Flaky(), {"run_id": "flaky"})
    run.log({"loss": 1.0}, step=1)
    run.summary({"x": 1})  # no-op now
    assert not run.active and run.finish() == {"run_id": "flaky", "incomplete": True}
