"""A registered version is rebuilt from its lineage alone, bit for bit on CPU."""

from __future__ import annotations

import json

import pytest

from helpers.specs import write_toy_spec
from helpers.toydata import write_toy_dataset

from conveyor.cli.main import main
from conveyor.release.registry import Registry
from conveyor.release.reproduce import ReproduceError, reproduce, weights_hash


@pytest.mark.slow
def test_reproduce_rebuilds_the_registered_weights_bit_for_bit(tmp_path, capsys):
    from conveyor.orchestration.flows.cycle import continuous_training

    write_toy_dataset(tmp_path / "data")
    spec = write_toy_spec(tmp_path, "spec.yaml")
    ws = tmp_path / "ws"
    first = continuous_training(spec_path=str(spec), workspace=str(ws), reason="first model")
    assert first["model_version"] == 1
    v1 = Registry(ws / "registry").get("toy", 1)
    for name in ("split.parquet", "labels.parquet", "run.json", "checkpoint.pt"):
        assert (v1.file(name)).is_file(), name

    assert main(["reproduce", str(spec), "--version", "1", "--workspace", str(ws), "--json",
                 "--out", str(tmp_path / "rebuilt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identical"] is True and out["environment_matches"] is True
    assert out["registered_weights_hash"] == out["reproduced_weights_hash"] == weights_hash(v1.file("checkpoint.pt"))
    # the whole checkpoint, configuration and environment included, hashes the same: the same model identity
    assert out["reproduced_model_hash"] == out["registered_model_hash"] == v1.model_hash
    assert out["metrics"]["f1"]["equal"] and out["metrics"]["f1"]["registered"] == out["metrics"]["f1"]["reproduced"]
    assert "latency_p95_ms" not in out["metrics"]  # timed on a shared machine: not compared


def test_a_version_without_its_lineage_files_is_refused_with_the_reason(tmp_path):
    reg = Registry(tmp_path / "registry")
    ck = tmp_path / "checkpoint.pt"
    ck.write_bytes(b"weights")
    reg.register("toy", files={"checkpoint.pt": str(ck)}, model_hash="h1", metrics={}, lineage={}, gate={})
    with pytest.raises(ReproduceError, match="lacks split.parquet, run.json"):
        reproduce(tmp_path / "registry", "toy", 1)
    with pytest.raises(ReproduceError, match="no version 7"):
        reproduce(tmp_path / "registry", "toy", 7)
