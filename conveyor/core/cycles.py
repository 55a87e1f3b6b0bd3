"""Which cycles may start: one at a time per pipeline, and a cool-down after each start.

A running cycle holds an exclusive ``flock`` on ``<workspace>/state/<name>/cycle.lock`` for its
whole run; the operating system drops the lock when the process ends, however it ends, so a
crashed cycle never blocks the pipeline. ``cycles.json`` beside it records the running cycle and
the last start, which the cool-down reads. Manual runs skip the cool-down but never run beside
another cycle of the same pipeline.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from conveyor.core.io import atomic_write_json

MANUAL_TRIGGERS = ("manual", "demo")


def is_manual(trigger: str) -> bool:
    """Manual runs (the CLI, the Prefect UI's run button, the demo) are exempt from the cool-down."""
    return any(trigger == t or trigger.startswith(t + "-") for t in MANUAL_TRIGGERS)


class CycleRunning(RuntimeError):
    """Another cycle of the same pipeline holds the lock."""

    def __init__(self, info: dict[str, Any] | None):
        self.info = info or {}
        who = f"run {self.info.get('run_id', '?')} (trigger {self.info.get('trigger', '?')}, since {self.info.get('started_at', '?')})"
        super().__init__(f"a cycle of this pipeline is already running: {who}")


@dataclass
class Suppression:
    blocked: bool
    reason: str
    until: str | None = None


class CycleGuard:
    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.dir / "cycle.lock"
        self.state_path = self.dir / "cycles.json"

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, **changes: Any) -> None:
        st = self.state()
        st.update(changes)
        atomic_write_json(self.state_path, st)

    def running(self) -> dict[str, Any] | None:
        """The running cycle's record, or None when no process holds the lock."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self.state().get("running") or {"run_id": "?"}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @contextmanager
    def hold(self, run_id: str, trigger: str, reason: str | None = None) -> Iterator[None]:
        """Hold the pipeline's cycle lock for the ``with`` block; raise CycleRunning when taken."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CycleRunning(self.state().get("running")) from None
            now = datetime.now(timezone.utc).isoformat()
            info = {"run_id": run_id, "trigger": trigger, "reason": reason, "started_at": now, "pid": os.getpid()}
            self._write(running=info, last_start=info)
            try:
                yield
            finally:
                self._write(running=None, last_finished_at=datetime.now(timezone.utc).isoformat())
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def suppression(self, trigger: str, cooldown_s: float, now: datetime | None = None) -> Suppression:
        """Whether a cycle started by ``trigger`` must not start now, and why."""
        now = now or datetime.now(timezone.utc)
        running = self.running()
        if running is not None:
            return Suppression(True, f"a cycle is running: run {running.get('run_id', '?')} "
                                     f"(trigger {running.get('trigger', '?')}, since {running.get('started_at', '?')})")
        if is_manual(trigger):
            return Suppression(False, "manual runs are exempt from the cool-down")
        last = self.state().get("last_start") or {}
        if last.get("started_at"):
            started = datetime.fromisoformat(last["started_at"])
            until = started + timedelta(seconds=cooldown_s)
            if now < until:
                return Suppression(True, f"cool-down: the last cycle started at {started.isoformat()} "
                                         f"(trigger {last.get('trigger', '?')}); no trigger starts another before "
                                         f"{until.isoformat()}", until.isoformat())
        return Suppression(False, "no cycle running and no cool-down in force")
