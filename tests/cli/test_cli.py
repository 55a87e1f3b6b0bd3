"""The `conveyor` command as a user meets it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from conveyor.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_validate_the_example(capsys):
    assert main(["validate", str(ROOT / "examples" / "classification.yaml")]) == 0
    out = capsys.readouterr().out
    assert "spec OK: digits-classifier (classification)" in out and "f1 >= 0.92" in out


def test_invalid_spec_exits_2_and_names_the_field(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "task": "classification", "data": {"source": "d"},
                                 "split": {"group_by": "lens"}}))
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "split.group_by: must be one of" in err and "'lens'" in err


def test_registry_list_and_rollback_without_versions(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "task": "classification", "data": {"source": "d"}}))
    assert main(["registry", "list", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "x", "champion": None, "versions": [], "champion_history": [],
                                                   "rollouts": [], "approvals": [], "withdrawals": []}
    assert main(["rollback", str(p), "--to", "1"]) == 1
    assert "has no version 1" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_source_is_a_clear_error(prefect_harness, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "prefect-storage"))
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "task": "classification", "data": {"source": "nowhere"}}))
    assert main(["run", str(p), "--workspace", str(tmp_path / "ws")]) == 1
    assert "nowhere" in capsys.readouterr().err


def conveyor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false", WANDB_MODE="offline")
    return subprocess.run([sys.executable, "-m", "conveyor.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1800)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """`conveyor demo`: two cycles on the digits, bad inputs accounted for, gate, registry, rollback."""
    res = conveyor("demo", "--dir", str(tmp_path / "demo"), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-5000:]
    first, second = json.loads(res.stdout)

    assert first["decision"] == "promoted" and first["model_version"] == 1, first["gate_summary"]
    assert first["metrics"]["f1"] >= 0.92 and first["metrics"]["ece"] <= 0.03
    assert first["dataset"]["quarantined"] == 0

    d = second["dataset"]
    assert d["received"] == d["accepted"] + d["quarantined"]
    assert d["quarantine_reasons"] == {"corrupt": 1, "zero_byte": 1, "not_an_image": 1, "unknown_label": 1,
                                       "path_escapes_root": 1}
    assert d["removed_reasons"].get("exact_duplicate") == 1
    assert second["dataset_version"] != first["dataset_version"]
    assert second["champion_metrics"] is not None
    assert second["decision"] in ("promoted", "rejected")
    assert {r["kind"] for r in second["reasons"]} == {"absolute", "champion"}
    # the frozen evaluation set did not move: the new cameras went to train
    assert second["split"]["counts"]["test"] == first["split"]["counts"]["test"]
    assert second["split"]["counts"]["val"] == first["split"]["counts"]["val"]

    # the label loop: the champion auto-labelled the unlabelled images it was sure of (correctly,
    # against the truth the demo keeps apart), queued the rest, and the reviewer's import made a new
    # label version
    rv = d["review"]
    pool = rv["pool"]["unlabeled"]
    assert pool["received"] == pool["accepted"] == 300
    assert rv["auto_labeled"] > 0 and rv["queued"] > 0
    queue = pl.read_csv(rv["queue"]["csv"], infer_schema=False)
    from_pool = queue.filter(pl.col("id").str.starts_with("unlabeled/")).height
    assert rv["auto_labeled"] + from_pool + rv["pool"].get("near_duplicate_of_labeled", 0) == 300
    # the rest of the queue: labelled images the champion contradicts (suspected label errors)
    assert set(queue.filter(~pl.col("id").str.starts_with("unlabeled/"))["reason"].to_list()) <= {"label_error"}
    assert d["label_sources"]["machine"] == rv["auto_labeled"]
    truth = dict(pl.read_csv(tmp_path / "demo" / "data" / "digits" / "unlabeled-truth.csv", infer_schema=False).iter_rows())
    labelled = pl.read_parquet(second["split"]["path"]).filter(pl.col("label_source") == "machine")
    right = sum(truth[i.removeprefix("unlabeled/")] == lab for i, lab in labelled.select("id", "label").iter_rows())
    assert right >= 0.98 * labelled.height
    imp = second["review_import"]
    assert imp["accepted"] == rv["queued"] and imp["quarantined"] == 0
    # queued pool images are new labels; a suspected label error is either relabelled or confirmed
    assert imp["added"] == from_pool and imp["changed"] + imp["confirmed"] == rv["queued"] - from_pool
    assert imp["label_version"] != d["label_version"] and imp["parent_version"] == d["label_version"]

    # between the batches the monitor saw the new cameras drift, and the cool-down held the cycle back
    from conveyor.core.events import read_log

    logged = read_log(tmp_path / "demo" / "workspace" / "monitoring" / "digits-classifier" / "events.jsonl")
    suppressed = [e for e in logged if e["event"] == "conveyor.drift.suppressed"]
    assert len(suppressed) == 1 and "new camera" in suppressed[0]["payload"]["reason"]
    assert suppressed[0]["payload"]["suppressed_by"].startswith("cool-down")

    spec = tmp_path / "demo" / "classification.yaml"
    listed = json.loads(conveyor("registry", "list", str(spec), "--json", cwd=tmp_path).stdout)
    assert [v["version"] for v in listed["versions"]] == [1, 2]
    v1 = listed["versions"][0]
    for key in ("dataset_version", "manifest_hash", "spec_hash", "seed", "code_commit", "packages"):
        assert key in v1["lineage"]
    assert Path(v1["artifact_dir"], "model.onnx").exists()

    if listed["champion"] == 2:
        rb = conveyor("rollback", str(spec), "--to", "1", cwd=tmp_path)
        assert rb.returncode == 0 and "champion is v1" in rb.stdout
        listed = json.loads(conveyor("registry", "list", str(spec), "--json", cwd=tmp_path).stdout)
        assert listed["champion"] == 1 and listed["champion_history"][-1]["reason"] == "manual rollback"

    # v1 rebuilt from its lineage alone: the same weights, bit for bit, and the same test metrics
    rep = conveyor("reproduce", str(spec), "--version", "1", "--json", "--out", str(tmp_path / "rebuilt"), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    out = json.loads(rep.stdout)
    assert out["identical"] and out["registered_weights_hash"] == out["reproduced_weights_hash"]
    assert all(m["equal"] for m in out["metrics"].values()), out["metrics"]


def test_prefect_yaml_deploys_the_cycle_with_the_spec_schedule():
    import importlib
    import inspect

    from conveyor.core.spec import load_spec

    conf = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    cycles = [d for d in conf["deployments"] if d["entrypoint"] == "flows/cycle.py:continuous_training"]
    assert {d["name"] for d in cycles} == {"digits-classifier", "shelf-detector", "surface-defects"}
    for dep in cycles:
        module, func = dep["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        assert set(dep["parameters"]) <= set(inspect.signature(flow.fn).parameters)
        spec = load_spec(ROOT / dep["parameters"]["spec_path"])
        assert dep["name"] == spec.name
        if spec.triggers.schedule is None:
            assert dep["schedules"] == []
        else:
            assert dep["schedules"][0]["cron"] == spec.triggers.schedule.cron


def test_observe_accounts_for_every_prediction_row(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "task": "classification", "data": {"source": "d", "classes": ["a", "b"]}}))
    preds = tmp_path / "preds.csv"
    preds.write_text("timestamp,predicted,confidence,camera\n2026-11-27T08:00:00Z,a,0.9,c1\n"
                     "2026-11-27T08:01:00Z,b,0.6,c2\n2026-11-27T08:02:00Z,z,0.6,c2\nnot a time,a,0.5,c1\n")
    assert main(["observe", str(p), "--predictions", str(preds), "--json", "--workspace", str(tmp_path / "ws")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["received"], res["accepted"], res["quarantined"]) == (4, 2, 2)
    assert res["quarantine_reasons"] == {"bad_timestamp": 1, "unknown_class": 1}
    assert main(["observe", str(p), "--predictions", str(preds), "--workspace", str(tmp_path / "ws")]) == 0
    out = capsys.readouterr().out
    assert "received 4, accepted 2, quarantined 2 (bad_timestamp 1, unknown_class 1)" in out
    assert main(["observe", str(p), "--predictions", str(tmp_path / "missing.csv")]) == 1


@pytest.mark.slow  # `conveyor monitor` runs the monitor flow on a temporary Prefect server of its own
def test_monitor_says_why_each_trigger_did_or_did_not_fire(tmp_path):
    from helpers.specs import toy_spec_dict
    from helpers.toydata import write_toy_dataset

    write_toy_dataset(tmp_path / "data", per_class_per_camera=2, cameras=3)
    rows = ["timestamp,label,predicted"] + [f"2099-01-01T00:00:00Z,red,{'blue' if i % 2 else 'red'}" for i in range(60)]
    (tmp_path / "feedback.csv").write_text("\n".join(rows) + "\n")
    d = toy_spec_dict()
    d["triggers"] = {"drift": {"features": ["brightness"]},
                     "performance": {"below": 0.9, "window": "1d", "min_samples": 50},
                     "schedule": {"cron": "0 3 * * 1", "timezone": "Europe/Berlin"}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(d))
    res = conveyor("monitor", str(spec), "--json", "--now", "2099-01-01T12:00:00+00:00", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(res.stdout)
    assert rep["triggers"]["drift"]["status"] == "no_baseline"  # no champion yet
    assert rep["triggers"]["performance"]["status"] == "fired" and rep["fired"] == ["performance"]
    assert rep["performance"]["samples"] == 60 and rep["performance"]["value"] < 0.9
    assert rep["start_cycle"] and rep["started"] is None  # evaluate only, without --trigger
    assert rep["triggers"]["schedule"]["next_run"].startswith("2099-01-05T03:00:00+01:00")
    res = conveyor("monitor", str(spec), "--now", "2099-01-01T12:00:00+00:00", cwd=tmp_path)
    assert "performance  FIRED" in res.stdout and "not started (no --trigger)" in res.stdout
