"""Shared test set-up: offline, quiet defaults and a toy dataset made in tmp_path."""

from __future__ import annotations

import os
import tempfile

# Before Prefect, Great Expectations or wandb are imported anywhere.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Experiment tracking is off in tests that do not test it (each offline run costs ~0.15 s and writes
# files); tests/test_approval.py switches it on. CONVEYOR_TEST_WANDB_MODE=offline tracks every test.
os.environ["WANDB_MODE"] = os.environ.get("CONVEYOR_TEST_WANDB_MODE", "disabled")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", tempfile.mkdtemp(prefix="conveyor-prefect-results-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

TOY_COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def write_toy_dataset(root: Path, per_class_per_camera: int = 6, cameras: int = 6, size: int = 16, seed: int = 0,
                      start_index: int = 0, camera_offset: int = 0) -> Path:
    """Noisy solid-colour squares (3 classes) from several cameras, with a CSV manifest.

    Appends to ``root/manifest.csv`` when it exists, so a second call adds a new batch.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    k = start_index
    for c in range(camera_offset, camera_offset + cameras):
        camera = f"cam-{c:02d}"
        for label, rgb in TOY_COLOURS.items():
            for _ in range(per_class_per_camera):
                arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 25, size=(size, size, 3)), 0, 255)
                rel = f"img/{camera}/{label}-{k:05d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(root / rel)
                rows.append({"path": rel, "label": label, "camera": camera, "scene": f"scene-{c % 3}",
                             "captured_at": f"2026-10-{1 + c:02d}T{k % 24:02d}:00:00Z"})
                k += 1
    manifest = root / "manifest.csv"
    df = pl.DataFrame(rows)
    if manifest.exists():
        df = pl.concat([pl.read_csv(manifest, infer_schema=False), df])
    df.write_csv(manifest)
    return manifest


def toy_spec_dict(source: str = "data/manifest.csv", **overrides) -> dict:
    spec = {
        "name": "toy",
        "task": "classification",
        "data": {"source": source, "classes": list(TOY_COLOURS)},
        "split": {"group_by": "camera", "ratios": {"train": 0.5, "val": 0.25, "test": 0.25}, "min_per_class_eval": 1},
        "train": {"model": "resnet10t", "image_size": 16, "epochs": 2, "batch_size": 16, "lr": 0.01, "seed": 0},
        "gates": {"rules": ["f1 >= 0.5", "latency_p95_ms <= 1000"], "champion": {"metrics": ["f1"], "tolerance": 0.05}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (starting one costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
