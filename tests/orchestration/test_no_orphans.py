"""Killing conveyor never leaves its temporary Prefect API (or any other child) running.

Each test starts a real `conveyor` command as a process of its own, waits until it has started
its children, kills it (SIGTERM, or SIGKILL which cannot be caught) and checks that every
process it had started is gone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers.specs import write_pipeline_spec, write_toy_spec
from helpers.toydata import write_toy_dataset

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "CONVEYOR_WEBHOOK_SECRET": "s3cret-for-tests-0123456789",
                "PYTHONUNBUFFERED": "1"})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_server(p: psutil.Process) -> bool:
    try:
        return "prefect.server.api.server:create_app" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def _start(args: list[str], tmp_path: Path, until, timeout: float = 240) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """Start `conveyor ARGS` and wait until ``until(descendants)`` holds; returns its descendants."""
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", *args], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = parent.children(recursive=True)
        if until(kids):
            return proc, kids
        if proc.poll() is not None:
            raise AssertionError(f"conveyor {' '.join(args)} ended with {proc.returncode} before its children started")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"conveyor {' '.join(args)}: children never started")


def _gone(procs: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    """The processes still running after ``timeout`` (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    left = procs
    while time.monotonic() < deadline:
        left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            return []
        time.sleep(0.2)
    return left


def _has_server(kids: list[psutil.Process]) -> bool:
    return any(_prefect_server(k) for k in kids)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _server_and_watchdog(kids: list[psutil.Process]) -> bool:
    """The temporary API is up (the command is past its start) and the watchdog runs."""
    return _has_server(kids) and any("conveyor.orchestration.ephemeral" in _cmdline(k) for k in kids)


def _kill_and_check(proc: subprocess.Popen, kids: list[psutil.Process], sig: int) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=60)
    left = _gone(kids)
    for p in left:  # do not leave them behind for the next test either
        p.kill()
    assert not left, f"left running after {signal.Signals(sig).name}: {[' '.join(p.cmdline())[:120] for p in left]}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_leaves_no_prefect_server(tmp_path, sig):
    write_toy_dataset(tmp_path / "data")
    spec = write_toy_spec(tmp_path, "spec.yaml")
    proc, kids = _start(["run", str(spec), "--workspace", str(tmp_path / "ws")], tmp_path, _server_and_watchdog)
    time.sleep(3)  # let the run get under way (training), as a kill in the middle of a cycle would
    kids = psutil.Process(proc.pid).children(recursive=True)
    assert _has_server(kids)
    _kill_and_check(proc, kids, sig)


def test_a_terminated_webhook_receiver_leaves_no_prefect_server(tmp_path):
    spec = write_pipeline_spec(tmp_path, "toy", webhook=True)
    proc, kids = _start(["webhook", "serve", str(spec), "--port", str(_free_port())], tmp_path, _server_and_watchdog)
    _kill_and_check(proc, kids, signal.SIGTERM)


def test_a_terminated_service_leaves_no_child(tmp_path):
    spec = write_toy_spec(tmp_path, "spec.yaml")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "serve", str(spec), "--port", str(port)], cwd=tmp_path,
                            env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # listening: the service has started whatever it starts
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None, f"conveyor serve ended with {proc.returncode}"
        time.sleep(0.2)
    kids = psutil.Process(proc.pid).children(recursive=True)
    _kill_and_check(proc, kids, signal.SIGTERM)
    assert proc.returncode is not None
