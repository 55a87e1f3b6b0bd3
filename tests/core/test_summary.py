"""The typed run summary: one JSON form (the keys the cycle always wrote, plus schema_version), round trips,
the skipped form, and the cycle's events read from the record."""

from __future__ import annotations

import copy
import json
import math

import pytest
from pydantic import ValidationError

from conveyor.core.summary import SCHEMA_VERSION, SKIPPED_KEYS, RunSummary

RUN_ID = "5e1f0c2a-7b3d-4c8e-9f10-0123456789ab"


def cycle_summary(**overrides) -> dict:
    """A summary.json as the cycle writes it (conveyor/orchestration/flows/cycle.py), without schema_version."""
    s = {
        "run_id": RUN_ID, "spec": "toy", "task": "classification", "trigger": "drift", "reason": "brightness drifted",
        "workspace": "/ws", "run_dir": "/ws/runs/20260101T000000Z-5e1f0c2a", "dataset_version": "d" * 16,
        "decision": "promoted", "gate_summary": "all 2 rules passed",
        "reasons": [{"rule": "f1 >= 0.5", "kind": "absolute", "metric": "f1", "op": ">=", "threshold": 0.5,
                     "value": 0.91, "passed": True, "reason": "f1 0.91 >= 0.5", "champion_value": None},
                    {"rule": "f1 >= champion - 0.01", "kind": "champion", "metric": "f1", "op": ">=", "threshold": 0.87,
                     "value": 0.91, "passed": True, "reason": "f1 0.91 >= 0.87", "champion_value": 0.88}],
        "metrics": {"f1": 0.91, "accuracy": 0.92, "ece": 0.04, "recall[cat]": 0.8, "latency_p95_ms": 3.2, "n": 40},
        "champion_metrics": {"f1": 0.88, "accuracy": 0.9},
        "model_version": 2, "model_dir": "/ws/registry/toy/v2", "champion_version": 2,
        "promotion": "v2 is the champion (was v1)", "rollout": None, "approval": None,
        "dataset": {
            "label_version": "lv-3", "labeled_version": "lab-3", "label_sources": {"source": 100, "review": 8},
            "review": {"auto_labeled": 2, "queued": 5, "queue": {"tasks": "/ws/review/toy/tasks.json"},
                       "pool": {"feedback": {"received": 3, "quarantined": 0}}, "feedback": {"rows": 3},
                       "reviewed": 8, "selection": {"strategy": "uncertainty"}},
            "received": 110, "accepted": 108, "quarantined": 2, "quarantine_reasons": {"corrupt": 2},
            "quarantine_path": "/ws/datasets/d/quarantine.parquet", "curated": 107,
            "removed_reasons": {"exact_duplicate": 1}, "removed_path": "/ws/datasets/d/removed.parquet",
            "annotations": {},
        },
        "split": {"split_version": "s-2", "group_by": "camera", "counts": {"train": 75, "val": 16, "test": 16},
                  "held_out_machine": 0, "groups": {"train": 4, "val": 1, "test": 1},
                  "per_class": {"train": {"cat": 38, "dog": 37}, "val": {"cat": 8, "dog": 8}, "test": {"cat": 8, "dog": 8}},
                  "path": "/ws/splits/s-2/split.parquet"},
        "evaluation": {"metrics_path": "/ws/evals/c/metrics.json", "predictions_path": "/ws/evals/c/predictions.parquet",
                       "champion_metrics_path": "/ws/evals/v2/metrics.json"},
        "train": {"checkpoint": "/ws/models/c/checkpoint.pt", "seconds": 12.5, "epochs": 3, "best_epoch": 2,
                  "tracking": {"mode": "offline", "run_id": "abc", "project": "toy"}},
        "onnx_max_abs_diff": 2.1e-6,
        "latency": {"backend": "onnxruntime", "latency_p50_ms": 2.0, "latency_p95_ms": 3.2,
                    "latency_histogram_ms": {"edges": [0.0, 1.0, 2.0], "counts": [3, 7], "above": 0}},
        "report": "/ws/runs/20260101T000000Z-5e1f0c2a/report/gate_report.html",
    }
    s.update(overrides)
    return s


def test_the_json_form_is_the_cycle_summary_plus_the_schema_version(tmp_path):
    today = cycle_summary()
    rec = RunSummary.model_validate(today)
    assert rec.to_json() == {"schema_version": SCHEMA_VERSION, **today}
    assert list(rec.to_json())[1:] == list(today)  # the order the cycle always listed them in
    assert rec.reasons[1].champion_value == 0.88 and rec.dataset.review.queued == 5 and rec.split.counts["test"] == 16
    # a round trip through the file keeps every key and value
    path = rec.write(tmp_path / "summary.json")
    assert json.loads(path.read_text()) == rec.to_json()
    assert RunSummary.load(path) == rec


def test_a_summary_written_before_schema_version_loads_as_version_1(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(cycle_summary()))
    rec = RunSummary.load(tmp_path / "summary.json")
    assert rec.schema_version == 1 and rec.to_json()["schema_version"] == 1


def test_nan_metrics_stay_nan_as_the_summary_always_wrote_them(tmp_path):
    rec = RunSummary.model_validate(cycle_summary(metrics={"ece": float("nan"), "f1": 0.5}))
    text = rec.write(tmp_path / "summary.json").read_text()
    assert '"ece": NaN' in text
    assert math.isnan(RunSummary.load(tmp_path / "summary.json").metrics["ece"])


def test_detection_annotations_and_approval_round_trip():
    approval = {"version": 2, "run_id": RUN_ID, "status": "pending", "requested_at": "2026-01-01T00:00:00+00:00",
                "by": None, "reason": None, "decided_at": None, "outcome": None, "created": True,
                "decision": "pending_approval", "message": "v2 waits", "approve": "conveyor approve ...",
                "reject": "conveyor reject ..."}
    ds = copy.deepcopy(cycle_summary()["dataset"])
    ds["annotations"] = {"boxes_received": 14, "boxes_accepted": 12, "box_quarantine_reasons": {"empty_box": 2}}
    today = cycle_summary(task="detection", decision="pending_approval", approval=approval, dataset=ds, report=None)
    assert RunSummary.model_validate(today).to_json() == {"schema_version": SCHEMA_VERSION, **today}


def test_a_skipped_cycle_keeps_its_short_form(tmp_path):
    skipped = {"run_id": RUN_ID, "spec": "toy", "task": "classification", "trigger": "drift", "reason": "drift",
               "workspace": "/ws", "run_dir": "/ws/runs/x", "decision": "skipped",
               "skipped_because": "another cycle is running"}
    rec = RunSummary.model_validate(skipped)
    assert rec.skipped and rec.to_json() == {"schema_version": SCHEMA_VERSION, **skipped}
    assert set(rec.to_json()) == {"schema_version", *SKIPPED_KEYS}
    assert RunSummary.load(rec.write(tmp_path / "summary.json")) == rec
    assert not RunSummary.model_validate(cycle_summary()).skipped


def test_unknown_keys_and_wrong_types_are_refused():
    with pytest.raises(ValidationError, match="decison"):
        RunSummary.model_validate(cycle_summary(decison="promoted"))
    with pytest.raises(ValidationError, match="model_version"):
        RunSummary.model_validate(cycle_summary(model_version="two"))


def test_cycle_events_read_the_record():
    from conveyor.orchestration.flows.cycle import _cycle_events

    promoted = RunSummary.model_validate(cycle_summary())
    evs = _cycle_events("toy", promoted)
    assert [e["event"] for e in evs] == ["conveyor.cycle.completed", "conveyor.model.promoted"]
    assert evs[0]["payload"]["model_version"] == 2 and evs[0]["payload"]["reason"] == "all 2 rules passed"

    approval = {"version": 2, "run_id": RUN_ID, "status": "pending", "requested_at": "2026-01-01T00:00:00+00:00",
                "approve": "conveyor approve toy 5e1f0c2a", "reject": "conveyor reject toy 5e1f0c2a"}
    pending = RunSummary.model_validate(cycle_summary(decision="pending_approval", approval=approval))
    evs = _cycle_events("toy", pending)
    assert [e["event"] for e in evs] == ["conveyor.cycle.completed", "conveyor.approval.requested"]
    assert evs[1]["payload"]["approve"] == "conveyor approve toy 5e1f0c2a" and evs[1]["payload"]["metrics"]["f1"] == 0.91
