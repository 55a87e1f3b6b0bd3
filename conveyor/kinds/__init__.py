"""Task kinds (classification, detection, segmentation) behind one interface.

Each kind module registers an adapter that the generic ``train`` and ``evaluate`` stages call.
Registration is by name and lazy: importing this package imports no model code.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "classification": "conveyor.kinds.classification",
    "detection": "conveyor.kinds.detection",
    "segmentation": "conveyor.kinds.segmentation",
}


def available() -> list[str]:
    return sorted(_MODULES)


def get(task: str):
    """The adapter module for a task kind."""
    if task not in _MODULES:
        raise ValueError(f"unknown task kind {task!r}; available: {available()}")
    return importlib.import_module(_MODULES[task])
