"""Task wrappers called with .fn(): no Prefect run needed. Retry conditions and cache keys."""

from __future__ import annotations

import sqlite3

import pytest
from prefect.states import Failed

from helpers.specs import toy_spec_dict
from conveyor.data.contracts import ContractError, ContractReport
from conveyor.core.spec import spec_from_dict
from conveyor.orchestration.tasks.common import artifact_key, content_cache, library_source_hash, transient_only
from conveyor.orchestration.tasks.data import curate_task, fingerprint_task, ingest_task, split_task


def failed(exc: BaseException):
    return Failed(data=exc)


@pytest.mark.parametrize("exc, retry", [
    (TimeoutError("slow disk"), True),
    (sqlite3.OperationalError("database is locked"), True),
    (OSError(5, "Input/output error"), True),
    (FileNotFoundError("gone"), False),
    (PermissionError("no"), False),
    (ValueError("bad label"), False),
    (ContractError(ContractReport(success=False, suites=[])), False),
])
def test_only_transient_errors_are_retried(exc, retry):
    assert transient_only(None, None, failed(exc)) is retry


def test_cache_policy_excludes_the_objects_keys_stand_for():
    policy = content_cache("spec", "manifest_path")
    inputs = [p for p in policy.policies if hasattr(p, "exclude")]
    assert inputs and set(inputs[0].exclude) == {"spec", "manifest_path"}
    assert library_source_hash() == library_source_hash() and len(library_source_hash()) == 16


def test_artifact_keys_are_valid():
    assert artifact_key("Digits_Classifier.v2", "dataset") == "digits-classifier-v2-dataset"


def test_data_tasks_run_without_prefect(toy_data, tmp_path):
    spec = spec_from_dict(toy_spec_dict(), base_dir=tmp_path)
    ws = str(tmp_path / "ws")
    key = fingerprint_task.fn(spec)
    ing = ingest_task.fn(spec, key, spec.section_hash("data"), ws)
    assert ing.accepted == ing.received == 108
    cur = curate_task.fn(spec, ing.manifest_path, ing.dataset_version, "k", frozenset(), "p", ws)
    assert cur.kept + cur.removed == 108
    spl = split_task.fn(spec, cur.curated_path, cur.curated_version, ing.dataset_version, "k", ing.classes, ws)
    assert sum(spl.counts.values()) == cur.kept
    # the content key follows bytes, not names
    victim = sorted((tmp_path / "data" / "img").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert fingerprint_task.fn(spec) != key
