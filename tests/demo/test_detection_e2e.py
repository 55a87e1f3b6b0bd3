"""Detection end to end: the bundled example, its demo data and one real cycle through the CLI.

The cycle uses the example spec exactly as shipped (no epochs override), so the gate assertion is
the example's own: ``map50 >= 0.55`` and ``latency_p95_ms <= 25``. The second demo batch (new
cameras plus bad annotations) is checked through ingest only, to keep the test to one training run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.demo.bundled import bundled_example, example_writer
from conveyor.data.ingest import ingest
from conveyor.core.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_the_detection_example_validates_and_is_registered():
    spec = load_spec(bundled_example("detection"))
    assert spec.task == "detection" and spec.data.format == "coco"
    assert spec.gates.rules == ["map50 >= 0.55", "latency_p95_ms <= 25"]
    assert spec.deploy.strategy == "canary" and spec.deploy.traffic == 0.1
    assert spec.split.group_by == "camera" and spec.triggers.schedule is not None
    assert example_writer("detection").__name__ == "write_detection_demo"


def test_demo_batches_account_for_every_image_and_box(tmp_path):
    spec_path = tmp_path / "detection.yaml"
    shutil.copyfile(bundled_example("detection"), spec_path)
    spec = load_spec(spec_path)
    write = example_writer("detection")
    write(spec, 1)
    first = ingest(spec, tmp_path / "ws")
    assert first.quarantined == 0 and first.annotations["boxes_quarantined"] == 0
    write(spec, 2)
    second = ingest(spec, tmp_path / "ws")
    assert second.received == second.accepted + second.quarantined
    assert second.quarantine_reasons == {"corrupt": 1, "missing_file": 1}
    a = second.annotations
    assert a["boxes_received"] == a["boxes_accepted"] + a["boxes_quarantined"]
    assert a["box_quarantine_reasons"] == {"box_outside_image": 1, "empty_box": 1, "nan_box": 1,
                                           "unknown_category": 1, "missing_image": 1, "image_quarantined": 1}
    assert second.dataset_version != first.dataset_version


def _conveyor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false", WANDB_MODE="offline",
               PREFECT_HOME=str(cwd / "prefect-home"), PREFECT_LOGGING_LEVEL="WARNING")
    return subprocess.run([sys.executable, "-m", "conveyor.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1800)


@pytest.mark.slow
def test_detection_example_cycle_passes_its_gates(tmp_path):
    spec_path = tmp_path / "detection.yaml"
    shutil.copyfile(bundled_example("detection"), spec_path)
    example_writer("detection")(load_spec(spec_path), 1)
    res = _conveyor("run", str(spec_path), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-5000:]
    s = json.loads(res.stdout)
    assert s["task"] == "detection"
    assert s["decision"] == "promoted", s["gate_summary"]
    m = s["metrics"]
    assert m["map50"] >= 0.55 and m["latency_p95_ms"] <= 25
    assert 0.0 <= m["map"] <= m["map50"]
    assert all(f"precision[{c}]" in m and f"recall[{c}]" in m for c in "0123456789")
    assert s["latency"]["backend"] == "onnxruntime" and s["onnx_max_abs_diff"] is not None
    d = s["dataset"]
    assert d["quarantined"] == 0 and d["annotations"]["boxes_accepted"] == d["annotations"]["boxes_received"]
    assert Path(s["model_dir"], "model.onnx").exists()
