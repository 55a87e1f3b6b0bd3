"""Cache policies, retry conditions and artifact helpers shared by the tasks."""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from conveyor.core.io import environment_hash

_PACKAGE = Path(__file__).resolve().parents[2]  # the conveyor package


@lru_cache(maxsize=1)
def library_source_hash() -> str:
    """Hash of the library code and the data contracts: a change to either misses the cache."""
    h = hashlib.sha256()
    for pattern in ("*.py", "*.json"):
        for f in sorted(_PACKAGE.rglob(pattern)):
            h.update(str(f.relative_to(_PACKAGE)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run; a plain logger when a task is called with ``.fn()``."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("conveyor")


LIBRARY_SOURCE = CacheKeyFnPolicy(cache_key_fn=lambda ctx, params: library_source_hash())
# The versions of the packages that change results, Python and the platform: an upgrade of torch,
# onnxruntime, Pillow ... retrains and re-evaluates instead of reusing old results.
ENVIRONMENT = CacheKeyFnPolicy(cache_key_fn=lambda ctx, params: environment_hash())


def content_cache(*exclude: str) -> CachePolicy:
    """Cache on the task's source, the library's source, the environment and the inputs less ``exclude``.

    Tasks take content keys (dataset version, spec-section hashes, model hashes) as inputs and
    exclude the objects those keys stand for, so a path whose file changed never hits.
    """
    policy = TASK_SOURCE + LIBRARY_SOURCE + ENVIRONMENT + INPUTS
    for name in exclude:
        policy = policy - name
    return policy


TRANSIENT = (TimeoutError, ConnectionError, InterruptedError, BlockingIOError, sqlite3.OperationalError)


def transient_only(task, task_run, state) -> bool:
    """Retry transient I/O failures only; bad data and failed contracts fail at once."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except OSError as err:
        # A missing or unreadable input will not appear by retrying; a busy resource may clear.
        return not isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))
    except BaseException:
        return False
    return False


RETRY = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": transient_only}


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with JSON-friendly cell values, for create_table_artifact."""
    out = []
    for r in rows:
        out.append({k: (round(v, 4) if isinstance(v, float) else v if isinstance(v, (int, str, type(None))) else str(v))
                    for k, v in r.items()})
    return out
