"""Environment defaults that every entry point (CLI, tests, Makefile) applies the same way.

Each is a default only: a value the user has set wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A first start of Prefect's temporary API creates and migrates its database, which can pass
    # Prefect's 20 s default on a busy machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "GX_ANALYTICS_ENABLED": "false",
    "WANDB_MODE": "offline",
    "DO_NOT_TRACK": "1",
}


def apply_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """Set every default that is not set yet in ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    for key, value in DEFAULTS.items():
        env.setdefault(key, value)
