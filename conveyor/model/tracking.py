"""Experiment tracking with Weights & Biases, optional and never in the way.

Each training run becomes a wandb run: its config (the resolved ``train`` section, the task, the
dataset, curated and split versions, the seed), one history row per epoch (loss, learning rate and
the validation metrics), the final numbers in the run summary, and the checkpoint as a ``model``
artifact. Later steps attach more files to the same run with :func:`log_artifact`, which resumes it
by id (for example the gate report of the cycle).

The environment decides the mode, as wandb itself reads it:

- ``WANDB_MODE=offline`` (the default here when it is unset, and what ``conveyor`` sets): runs are
  written to ``<workspace>/wandb/offline-run-<time>-<id>/`` and nothing leaves the machine;
  ``wandb sync <that folder>`` uploads one later;
- ``WANDB_MODE=online``: runs go to the server of the wandb account (``WANDB_API_KEY``,
  ``WANDB_ENTITY``, ``WANDB_BASE_URL`` as wandb reads them);
- ``WANDB_MODE=disabled`` (or ``WANDB_DISABLED=true``): nothing is tracked.

``WANDB_DIR``, when set, replaces ``<workspace>`` as the folder wandb writes under. The project is
the pipeline's name and the run's name the first 8 characters of the cycle's run id.

Tracking never fails a training run or a cycle: when wandb cannot be imported, cannot start or fails
later, a warning is logged once (per kind of failure and process) and the work goes on untracked.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
_ALIASES = {"dryrun": "offline", "run": "online", "shared": "online"}

_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(kind: str, message: str, *args: Any) -> None:
    with _warn_lock:
        if kind in _warned:
            return
        _warned.add(kind)
    log.warning("experiment tracking: " + message + " (training goes on untracked; this is said once)", *args)


def mode() -> str:
    """``online``, ``offline`` or ``disabled``, from ``WANDB_MODE`` / ``WANDB_DISABLED`` (default ``offline``)."""
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    raw = (os.environ.get("WANDB_MODE") or "offline").strip().lower()
    m = _ALIASES.get(raw, raw)
    if m not in MODES:
        _warn_once(f"mode:{raw}", "WANDB_MODE=%r is not one of %s; using offline", raw, ", ".join(MODES))
        return "offline"
    return m


def tracking_root(workspace: str | Path) -> Path:
    """The folder wandb writes its ``wandb/`` folder into: ``WANDB_DIR`` or the workspace."""
    return Path(os.environ.get("WANDB_DIR") or workspace).expanduser().resolve()


def _settings(wandb: Any) -> Any:
    # Quiet (the CLI's stdout stays machine-readable), no console capture (Prefect and pytest own the
    # streams) and none of the per-run samplers that cost time at start: the lineage already records
    # the code commit and the package versions.
    return wandb.Settings(silent=True, console="off", save_code=False, disable_git=True, disable_job_creation=True,
                          x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True)


def _artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:128] or "artifact"


class TrackedRun:
    """A started wandb run, or nothing at all (``ref`` is None): every method is safe to call either way,
    and a failure inside wandb turns the run into nothing (with one warning)."""

    def __init__(self, run: Any = None, ref: dict[str, Any] | None = None):
        self._run = run
        self.ref = ref

    @property
    def active(self) -> bool:
        return self._run is not None

    def _guard(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        if self._run is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never fail the work
            _warn_once(f"call:{what}", "wandb failed to %s: %s: %s", what, type(err).__name__, err)
            self._abandon()
            return None

    def _abandon(self) -> None:
        run, self._run = self._run, None
        if self.ref is not None:
            self.ref["incomplete"] = True
        try:
            run.finish(exit_code=1)
        except Exception:  # noqa: BLE001
            pass

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """One history row (numbers only; other values are left out)."""
        row = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._guard("log metrics", lambda: self._run.log(row, step=step))

    def summary(self, values: dict[str, Any]) -> None:
        self._guard("write the run summary", lambda: self._run.summary.update(dict(values)))

    def config(self, values: dict[str, Any]) -> None:
        self._guard("update the run config", lambda: self._run.config.update(dict(values), allow_val_change=True))

    def log_artifact(self, path: str | Path, name: str, type: str, metadata: dict[str, Any] | None = None,
                     aliases: list[str] | None = None) -> str | None:
        """Attach one file (or a folder) as an artifact; returns the artifact's name, or None when not logged.

        Files are referenced in place (wandb's ``immutable`` policy: no copy outside the workspace), so
        an offline run's files must stay where they are until it is synced."""
        if self._run is None:
            return None
        path = Path(path)
        art_name = _artifact_name(name)

        def _do() -> str:
            import wandb

            art = wandb.Artifact(art_name, type=type, metadata=_jsonable(metadata or {}))
            if path.is_dir():
                art.add_dir(str(path), policy="immutable")
            else:
                art.add_file(str(path), policy="immutable")
            self._run.log_artifact(art, aliases=aliases)
            return art_name

        return self._guard(f"log artifact {art_name}", _do)

    def finish(self, exit_code: int = 0) -> dict[str, Any] | None:
        """End the run; returns its reference (None when no run started; ``incomplete`` when wandb failed
        part-way)."""
        if self._run is None:
            return self.ref
        run, self._run = self._run, None
        try:
            run.finish(exit_code=exit_code)
        except Exception as err:  # noqa: BLE001
            _warn_once("call:finish", "wandb failed to finish run %s: %s: %s", self.ref.get("run_id"),
                       type(err).__name__, err)
        return self.ref

    def __enter__(self) -> "TrackedRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(d, default=str))


def start_run(workspace: str | Path, project: str, *, name: str | None = None, config: dict[str, Any] | None = None,
              job_type: str = "train", tags: list[str] | None = None, run_id: str | None = None,
              resume: str | None = None, run_mode: str | None = None) -> TrackedRun:
    """Start (or, with ``run_id`` and ``resume="allow"``, resume) a wandb run. Returns an inactive
    :class:`TrackedRun` when tracking is disabled or wandb is unavailable or fails to start."""
    m = mode()
    if m == "disabled":
        return TrackedRun()
    if run_mode in ("online", "offline"):
        m = run_mode
    try:
        import wandb
    except Exception as err:  # noqa: BLE001 - ImportError, or a broken installation
        _warn_once("import", "wandb cannot be imported: %s: %s", type(err).__name__, err)
        return TrackedRun()
    root = tracking_root(workspace)
    try:
        root.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project, name=name, config=_jsonable(config or {}), job_type=job_type, tags=tags,
                         id=run_id, resume=resume, mode=m, dir=str(root), reinit="create_new",
                         settings=_settings(wandb))
        if run is None or not getattr(run, "id", None):
            raise RuntimeError("wandb.init returned no run")
        ref = {"mode": m, "run_id": run.id, "project": project, "name": name,
               "run_dir": str(run.settings.sync_dir) if m == "offline" else None,
               "url": getattr(run, "url", None) if m == "online" else None,
               "entity": getattr(run, "entity", None) if m == "online" else None}
    except Exception as err:  # noqa: BLE001 - init errors, timeouts, a missing API key online
        _warn_once("init", "wandb could not start a run (mode %s, folder %s): %s: %s", m, root, type(err).__name__, err)
        return TrackedRun()
    return TrackedRun(run, ref)


def log_artifact(workspace: str | Path, run_ref: dict[str, Any] | str | None, path: str | Path, name: str,
                 type: str, *, project: str | None = None,
                 metadata: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Attach ``path`` as an artifact to an earlier run (a training run's ``tracking`` reference, as in
    ``TrainResult.tracking`` and a registered version's ``lineage["tracking"]``, or a bare run id with
    ``project``). The run is resumed by id in its own mode (an offline run gets one more offline folder
    with the same id, which ``wandb sync`` merges). Returns ``{mode, run_id, run_dir, artifact}``, or None
    when nothing was logged (no run, tracking disabled, or wandb failed: warned once, never raised)."""
    if not run_ref:
        return None
    ref = {"run_id": run_ref} if isinstance(run_ref, str) else dict(run_ref)
    proj = ref.get("project") or project
    if not ref.get("run_id") or not proj:
        _warn_once("ref", "cannot attach %s: the run reference names no run id and project (%r)", name, run_ref)
        return None
    if not Path(path).exists():
        _warn_once(f"missing:{name}", "cannot attach %s: %s does not exist", name, path)
        return None
    run = start_run(workspace, proj, name=ref.get("name"), run_id=ref["run_id"], resume="allow", job_type="train",
                    run_mode=ref.get("mode"))
    if not run.active:
        return None
    with run:
        logged = run.log_artifact(path, name, type, metadata)
    if logged is None:
        return None
    return {"mode": run.ref["mode"], "run_id": run.ref["run_id"], "run_dir": run.ref["run_dir"], "artifact": logged}
