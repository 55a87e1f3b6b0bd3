"""A class that appears in new data: the champion (which does not know it) is evaluated on the
classes it knows, the challenger on all, and the gate compares the two on the common classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from helpers.specs import toy_spec_dict
from helpers.toydata import write_toy_dataset


def add_yellow(root: Path, cameras: range, per_camera: int = 6, size: int = 16, seed: int = 7) -> None:
    """Images of a fourth class, from cameras of their own, appended to the toy manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in cameras:
        camera = f"cam-{c:02d}"
        for k in range(per_camera):
            arr = np.clip(np.array([210, 200, 30])[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255)
            rel = f"img/{camera}/yellow-{c:02d}{k:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr.astype(np.uint8)).save(root / rel)
            rows.append({"path": rel, "label": "yellow", "camera": camera, "scene": f"scene-{c % 3}",
                         "captured_at": f"2026-10-{1 + c:02d}T{k % 24:02d}:00:00Z"})
    manifest = root / "manifest.csv"
    pl.concat([pl.read_csv(manifest, infer_schema=False), pl.DataFrame(rows)]).write_csv(manifest)


@pytest.mark.slow
def test_a_new_class_does_not_crash_the_champion_evaluation(prefect_harness, tmp_path):
    from conveyor.orchestration.flows.cycle import continuous_training

    write_toy_dataset(tmp_path / "data")
    spec = toy_spec_dict(split={"new_groups_to": "ratio"})
    del spec["data"]["classes"]  # the classes are the labels the data has
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    ws = tmp_path / "ws"

    first = continuous_training(spec_path=str(spec_path), workspace=str(ws))
    assert first["decision"] == "promoted" and first["champion_version"] == 1

    add_yellow(tmp_path / "data", range(6, 16))  # enough new cameras for yellow to reach val and test
    second = continuous_training(spec_path=str(spec_path), workspace=str(ws))
    assert second["model_version"] == 2
    assert "yellow" in " ".join(k for k in second["metrics"] if k.startswith("f1["))

    # the champion was scored on the classes it knows; the rows of the new class were left out
    champion_eval = json.loads(Path(second["champion_metrics_path"] if "champion_metrics_path" in second
                                    else _champion_metrics_file(ws)).read_text())
    assert champion_eval["classes"] == ["blue", "green", "red"]
    assert champion_eval["excluded"]["classes"] == ["yellow"] and champion_eval["excluded"]["rows"] > 0
    assert champion_eval["n_images"] + champion_eval["excluded"]["rows"] > champion_eval["n_images"]

    # the champion comparison ran on the common classes, and the gate says so
    champion_rules = [r for r in second["reasons"] if r["kind"] == "champion"]
    assert champion_rules and all("common classes" in r["reason"] for r in champion_rules), champion_rules
    assert "yellow" in second["gate_summary"]
    # the absolute rules still judge the challenger on every class
    absolute = {r["metric"]: r["value"] for r in second["reasons"] if r["kind"] == "absolute"}
    assert absolute["f1"] == second["metrics"]["f1"]


def _champion_metrics_file(ws: Path) -> Path:
    """The metrics.json of the champion's evaluation on the second cycle's split."""
    files = [p for p in (ws / "evals").glob("*/metrics.json")
             if json.loads(p.read_text()).get("classes") == ["blue", "green", "red"]
             and json.loads(p.read_text()).get("excluded")]
    assert len(files) == 1, files
    return files[0]


def test_the_gate_compares_with_the_champion_on_the_common_classes():
    from conveyor.core.spec import spec_from_dict
    from conveyor.release.gate import evaluate_gate

    spec = spec_from_dict(toy_spec_dict())
    challenger = {"f1": 0.70, "latency_p95_ms": 5.0}  # every class, the new one included
    champion = {"f1": 0.90, "latency_p95_ms": 5.0}  # the classes it knows
    common = {"classes": ["blue", "green", "red"], "left_out": ["yellow"], "rows": 30, "metrics": {"f1": 0.92}}
    plain = evaluate_gate(spec, challenger, champion, 1)
    assert not plain.passed  # all classes against the champion's three: an unfair comparison
    fair = evaluate_gate(spec, challenger, champion, 1, common=common)
    assert fair.passed, fair.summary
    rule = next(o for o in fair.outcomes if o.kind == "champion")
    assert rule.value == 0.92 and "common classes (blue, green, red" in rule.reason and "yellow" in rule.reason
    assert "yellow" in fair.summary
    assert next(o for o in fair.outcomes if o.kind == "absolute" and o.metric == "f1").value == 0.70
    worse = evaluate_gate(spec, challenger, champion, 1, common={**common, "metrics": {"f1": 0.5}})
    assert not worse.passed and "yellow" in worse.summary
