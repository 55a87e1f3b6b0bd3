"""Task kinds behind one plug-in interface (:class:`conveyor.kinds.base.TaskKind`) and a registry.

Built-in kinds register here by name, lazily: importing this package imports no model code.
Other packages can add kinds through the ``conveyor.kinds`` entry-point group
(``name = "package.module:KindClass"``) or by calling :func:`register`.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from conveyor.kinds.base import TaskKind

ENTRY_POINT_GROUP = "conveyor.kinds"
# The kind of records written before the task kind was recorded in them (checkpoints, run
# folders and contract parameters of the first releases, which knew classification only).
LEGACY_TASK = "classification"

_BUILTIN = {
    "classification": "conveyor.kinds.classification:ClassificationKind",
    "detection": "conveyor.kinds.detection:DetectionKind",
    "segmentation": "conveyor.kinds.segmentation:SegmentationKind",
    "multilabel": "conveyor.kinds.multilabel:MultilabelKind",
}
_registered: dict[str, str | type[TaskKind]] = {}
_instances: dict[str, TaskKind] = {}


def register(name: str, kind: str | type[TaskKind]) -> None:
    """Register a task kind: a :class:`TaskKind` subclass, or ``"module:Class"`` to import lazily."""
    _registered[name] = kind
    _instances.pop(name, None)


def _table() -> dict[str, str | type[TaskKind]]:
    table: dict[str, str | type[TaskKind]] = dict(_BUILTIN)
    try:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            table.setdefault(ep.name, ep.value)
    except Exception:  # a broken third-party distribution must not break the built-in kinds
        pass
    table.update(_registered)
    return table


def available() -> list[str]:
    """The names of every registered task kind."""
    return sorted(_table())


def get(task: str) -> TaskKind:
    """The task kind registered as ``task``."""
    if task in _instances:
        return _instances[task]
    table = _table()
    if task not in table:
        raise ValueError(f"unknown task kind {task!r}; available: {available()}")
    ref = table[task]
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        ref = getattr(importlib.import_module(module), attr)
    kind = ref()
    if kind.name != task:
        raise ValueError(f"task kind registered as {task!r} calls itself {kind.name!r}")
    _instances[task] = kind
    return kind


__all__ = ["LEGACY_TASK", "TaskKind", "available", "get", "register"]
