"""`conveyor demo --example segmentation`: two cycles; the first must pass its own gates."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_segmentation_demo_end_to_end(tmp_path):
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false")
    res = subprocess.run(
        [sys.executable, "-m", "conveyor.cli.main", "demo", "--example", "segmentation", "--dir", str(tmp_path / "demo"),
         "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert res.returncode == 0, res.stderr[-5000:]
    first, second = json.loads(res.stdout)

    assert first["decision"] == "promoted" and first["model_version"] == 1, first["gate_summary"]
    m = first["metrics"]
    assert m["miou"] >= 0.82 and m["fn_rate[defect]"] <= 0.06 and m["latency_p95_ms"] <= 25
    assert m["instance_miss_rate[defect]"] <= 0.05  # missed defects counted per instance, not per pixel
    assert {r["metric"] for r in first["reasons"]} >= {"fn_rate[defect]", "instance_miss_rate[defect]"}
    assert first["dataset"]["quarantined"] == 0

    d = second["dataset"]
    assert d["received"] == d["accepted"] + d["quarantined"]
    assert d["quarantine_reasons"] == {"missing_mask": 1, "mask_size_mismatch": 1, "mask_bad_values": 1,
                                       "mask_bad_mode": 1, "unreadable_mask": 1}
    assert second["dataset_version"] != first["dataset_version"]
    assert second["decision"] in ("promoted", "rejected")
    # the frozen evaluation set did not move: the new cameras went to train
    assert second["split"]["counts"]["test"] == first["split"]["counts"]["test"]
