"""The monitor flow and the cycle's admission under a temporary Prefect API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.specs import write_toy_spec
from helpers.toydata import write_toy_dataset
from conveyor.core import events


def _brighten(files: list[Path], offset: int = 90) -> None:
    for f in files:
        arr = np.asarray(Image.open(f)).astype(int) + offset
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(f)


def drift_triggers(cooldown: str) -> dict:
    return {"drift": {"features": ["brightness", "contrast"], "per_camera": False}, "cooldown": cooldown}


@pytest.mark.slow
def test_drift_suppressed_by_the_cool_down_then_starting_a_cycle(prefect_harness, tmp_path):
    from conveyor.orchestration.flows.cycle import continuous_training
    from conveyor.orchestration.flows.monitor import monitor_pipeline

    write_toy_dataset(tmp_path / "data")
    spec_path = write_toy_spec(tmp_path, triggers=drift_triggers("6h"))
    ws = tmp_path / "ws"
    log = ws / "monitoring" / "toy" / "events.jsonl"

    first = continuous_training(spec_path=str(spec_path), workspace=str(ws), reason="first model")
    assert first["decision"] == "promoted" and first["reason"] == "first model"
    v1 = ws / "registry" / "toy" / "v0001"
    index = json.loads((v1 / "baseline" / "index.json").read_text())
    assert set(index) == {"images", "predictions"} and index["images"]["rows"] == sum(first["split"]["counts"].values())
    assert [e["event"] for e in events.read_log(log)] == ["conveyor.cycle.completed", "conveyor.model.promoted"]

    # nothing new arrived: the drift window leaves out the champion's own training images, so there
    # is nothing to compare yet (never "no drift"), and nothing fires
    quiet = monitor_pipeline(spec_path=str(spec_path), workspace=str(ws), start="none")
    assert quiet["fired"] == [] and quiet["triggers"]["drift"]["status"] == "not_enough_data", quiet["triggers"]["drift"]

    # a brighter batch arrives from new cameras: drift fires, but the cool-down holds
    write_toy_dataset(tmp_path / "data", seed=5, start_index=1000, camera_offset=10)
    _brighten(sorted((tmp_path / "data" / "img").glob("cam-1*/*.png")))
    held = monitor_pipeline(spec_path=str(spec_path), workspace=str(ws), start="inline")
    assert held["fired"] == ["drift"] and not held["start_cycle"] and held["started"] is None
    assert held["suppressed_by"].startswith("cool-down")
    assert "overall brightness" in held["triggers"]["drift"]["reason"]
    assert events.read_log(log)[-1]["event"] == "conveyor.drift.suppressed"
    assert (ws / "monitoring" / "toy" / "reports" / "latest.json").is_file()

    # a cycle that a trigger starts inside the cool-down stops at once
    skipped = continuous_training(spec_path=str(spec_path), workspace=str(ws), trigger="drift")
    assert skipped["decision"] == "skipped" and skipped["skipped_because"].startswith("cool-down")
    assert events.read_log(log)[-1]["event"] == "conveyor.cycle.skipped"

    # with the cool-down over, the monitor starts the cycle and records why
    spec_path = write_toy_spec(tmp_path, triggers=drift_triggers("1s"))
    started = monitor_pipeline(spec_path=str(spec_path), workspace=str(ws), start="inline")
    assert started["start_cycle"] and started["started"]["mode"] == "inline"
    run = json.loads(next((ws / "runs").glob(f"*-{started['started']['run_id'][:8]}/summary.json")).read_text())
    assert run["trigger"] == "drift" and "brightness" in run["reason"]
    assert run["dataset"]["accepted"] == 216
    names = [e["event"] for e in events.read_log(log)]
    assert "conveyor.drift.detected" in names and names[-1] in ("conveyor.model.promoted", "conveyor.model.rejected",
                                                                 "conveyor.cycle.completed")
