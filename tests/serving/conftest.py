"""Fixtures of the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.serving import tiny_models
from helpers.toydata import TOY_COLOURS


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny ONNX models (red, green, uniform, colour classifiers; a detector; a segmenter; a broken file)."""
    return tiny_models(tmp_path_factory.mktemp("models"), list(TOY_COLOURS))
