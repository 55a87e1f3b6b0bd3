"""The cycle flow under a temporary Prefect API: stages, caching, contracts stopping a cycle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.prefectapi import artifact_keys
from helpers.specs import write_toy_spec as write_spec
from helpers.toydata import write_toy_dataset

CACHED_STAGES = {"ingest", "curate", "split", "data-contracts", "train", "evaluate"}


def task_states(flow_run_id: str) -> dict[str, list[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, list[str]] = {}
    for tr in runs:
        out.setdefault(tr.name.rsplit("-", 1)[0], []).append(tr.state.name)
    return out


@pytest.mark.slow
def test_cycle_registers_caches_and_reacts_to_content(prefect_harness, tmp_path):
    from conveyor.orchestration.flows.cycle import continuous_training
    from conveyor.release.registry import Registry

    write_toy_dataset(tmp_path / "data")
    spec_path = write_spec(tmp_path)
    ws = tmp_path / "ws"

    first = continuous_training(spec_path=str(spec_path), workspace=str(ws))
    assert first["decision"] == "promoted" and first["model_version"] == 1 and first["champion_version"] == 1
    assert first["dataset"]["received"] == first["dataset"]["accepted"] == 108
    run_dir = Path(first["run_dir"])
    assert (run_dir / "spec.yaml").exists() and (run_dir / "contracts.json").exists()
    assert json.loads((run_dir / "summary.json").read_text())["run_id"] == first["run_id"]
    assert {r["metric"] for r in first["reasons"]} == {"f1", "latency_p95_ms"}
    assert artifact_keys(first["run_id"]) == {"toy-dataset", "toy-labels", "toy-split", "toy-metrics", "toy-gate", "toy-report"}
    states = task_states(first["run_id"])
    assert all(s == ["Completed"] for name, s in states.items() if name in CACHED_STAGES), states
    # the gate report: rendered last, linked as an artifact, in the summary and indexed under the version
    report = Path(first["report"])
    assert report == run_dir / "report" / "gate_report.html" and report.is_file()
    page = report.read_text()
    assert 'class="gate-table"' in page and 'alt="Reliability on' in page and "data:image/png;base64" in page
    assert json.loads((run_dir / "summary.json").read_text())["report"] == first["report"]
    # one JSON form: summary.json is the typed record's, and the flow returns it without schema_version
    from conveyor.core.summary import SCHEMA_VERSION, RunSummary

    written = json.loads((run_dir / "summary.json").read_text())
    assert RunSummary.load(run_dir / "summary.json").to_json() == written
    assert written == {"schema_version": SCHEMA_VERSION, **first}
    assert Registry(ws / "registry").report("toy", 1) == first["report"]

    # unchanged data and spec: every stage is a cache hit and nothing new is registered
    second = continuous_training(spec_path=str(spec_path), workspace=str(ws))
    assert second["decision"] == "skipped" and second["model_version"] == 1
    assert artifact_keys(second["run_id"]) == {"toy-dataset", "toy-labels", "toy-split", "toy-metrics", "toy-gate", "toy-report"}
    states = task_states(second["run_id"])
    for stage in CACHED_STAGES:
        assert states[stage] == ["Cached"], (stage, states)

    # one image changed under the same path: a new dataset version, ingest and train run again
    victim = sorted((tmp_path / "data" / "img").rglob("*.png"))[0]
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] = (arr[0, 0].astype(int) + 1) % 256
    Image.fromarray(arr).save(victim)
    third = continuous_training(spec_path=str(spec_path), workspace=str(ws))
    assert third["dataset_version"] != first["dataset_version"]
    states = task_states(third["run_id"])
    assert states["ingest"] == ["Completed"] and states["train"] == ["Completed"]
    assert third["champion_metrics"] is not None, "the champion must be re-evaluated on the same frozen set"
    assert {r["kind"] for r in third["reasons"]} == {"absolute", "champion"}
    assert third["model_version"] == 2
    versions = Registry(ws / "registry").list("toy")
    assert [v.version for v in versions] == [1, 2]
    assert versions[1].lineage["dataset_version"] == third["dataset_version"]
    # the changed pixels are a new image content, so a new label version, named in the lineage
    assert versions[1].lineage["label_version"] == third["dataset"]["label_version"]
    assert third["dataset"]["label_version"] != first["dataset"]["label_version"]
    reports = Registry(ws / "registry").reports("toy")
    assert reports == {1: first["report"], 2: third["report"]}, "v1 keeps the report of the run that registered it"
    assert Path(second["report"]).is_file() and second["report"] != first["report"]


@pytest.mark.slow
def test_failing_contract_stops_the_cycle_and_keeps_the_result(prefect_harness, tmp_path):
    from conveyor.orchestration.flows.cycle import continuous_training
    from conveyor.data.contracts import ContractError

    write_toy_dataset(tmp_path / "data")
    spec_path = write_spec(tmp_path, split={"min_per_class_eval": 500})
    with pytest.raises(ContractError) as err:
        continuous_training(spec_path=str(spec_path), workspace=str(tmp_path / "ws"))
    assert "split_class_coverage" in str(err.value)
    saved = list((tmp_path / "ws" / "runs").glob("*/contracts.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["success"] is False
    assert not (tmp_path / "ws" / "registry" / "toy").exists(), "nothing may be trained or registered"
