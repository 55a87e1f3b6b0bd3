"""Cache keys follow what results depend on: the environment and the frozen split."""

from __future__ import annotations

import polars as pl

from conveyor.core import io
from conveyor.data.split import STATE_FILE, frozen_state_key
from conveyor.orchestration.tasks.common import ENVIRONMENT, content_cache


def test_an_upgrade_of_a_result_package_changes_the_cache_key(monkeypatch):
    before = ENVIRONMENT.compute_key(None, {}, {})
    real = io.metadata.version
    monkeypatch.setattr(io.metadata, "version", lambda name: "99.0" if name == "onnxruntime" else real(name))
    assert ENVIRONMENT.compute_key(None, {}, {}) != before
    assert io.environment()["packages"]["onnxruntime"] == "99.0"
    assert {"python", "platform"} <= set(io.environment())


def test_content_cached_tasks_key_on_the_environment():
    assert ENVIRONMENT in content_cache("spec").policies


def test_the_split_key_covers_earlier_frozen_assignments_but_not_its_own(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    assert frozen_state_key(state, "dv2") == "empty"
    rows = {"content_hash": ["a", "b"], "phash": ["0", "1"], "group": ["cam-1", "cam-2"], "split": ["train", "test"],
            "first_dataset": ["dv1", "dv2"]}
    pl.DataFrame(rows).write_parquet(state / STATE_FILE)
    key = frozen_state_key(state, "dv2")
    assert key != "empty"
    # the rows dv2 wrote itself do not count: a rerun of dv2 keys as its first run did
    pl.DataFrame({k: v[:1] for k, v in rows.items()}).write_parquet(state / STATE_FILE)
    assert frozen_state_key(state, "dv2") == key
    # an earlier dataset's assignment that changed does
    changed = {**rows, "split": ["val", "test"]}
    pl.DataFrame(changed).write_parquet(state / STATE_FILE)
    assert frozen_state_key(state, "dv2") != key
