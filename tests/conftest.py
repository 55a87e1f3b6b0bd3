"""Shared fixtures. Environment defaults are applied before Prefect, Great Expectations or wandb are imported."""

from __future__ import annotations

import os
import tempfile

from conveyor.core.env import apply_defaults

# Experiment tracking is off in tests that do not test it (each offline run costs ~0.15 s and writes
# files); tests/release/test_approval.py switches it on. CONVEYOR_TEST_WANDB_MODE=offline tracks every test.
os.environ["WANDB_MODE"] = os.environ.get("CONVEYOR_TEST_WANDB_MODE", "disabled")
os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", tempfile.mkdtemp(prefix="conveyor-prefect-results-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
apply_defaults()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from helpers.toydata import write_toy_dataset  # noqa: E402


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (starting one costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
