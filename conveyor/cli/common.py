"""What the command modules share: loading a spec, the process environment a flow needs, and
events emitted by a command that runs outside a flow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.core.spec import Spec
    from conveyor.core.workspace import Workspace


def load(spec_path: str) -> Spec:
    from conveyor.core.spec import load_spec

    return load_spec(spec_path)


def prepare_env(workspace: Path) -> None:
    """Quiet, offline defaults, and Prefect state under the workspace (set before Prefect is imported)."""
    from conveyor.core.env import apply_defaults

    apply_defaults()
    prefect_home = workspace / ".prefect"
    if not os.environ.get("PREFECT_API_URL"):
        # No server configured: Prefect starts a temporary local API whose database lives here.
        os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(prefect_home / "storage"))
    prefect_home.mkdir(parents=True, exist_ok=True)


def emit_local(ws: Workspace, name: str, event_list: list[dict]) -> None:
    """Events from a command outside a flow: to the Prefect API when one is configured, and to the
    pipeline's event log always."""
    from conveyor.core import events
    from conveyor.monitoring import monitor
    from conveyor.orchestration import prefect_api

    log = monitor.events_log(ws, name)
    for e in event_list:
        if os.environ.get("PREFECT_API_URL"):
            prefect_api.emit(e, log)
        else:
            events.append_log(log, e)


def start_api() -> None:
    """Prefect's temporary API for a command that runs flows or starts runs, when no server is
    configured: started up front and stopped when the command ends, however it ends."""
    from conveyor.orchestration.ephemeral import ensure_api

    ensure_api()


def login_name() -> str:
    """Who runs the command, for decisions the registry records (``--by`` overrides it)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return "unknown"
