"""Prefect's temporary local API, started by conveyor and never left behind.

Without ``PREFECT_API_URL`` Prefect starts a temporary API server in a child process the first
time a flow or client needs one, and stops it at interpreter exit. A ``SIGTERM`` skips that exit,
and a ``SIGKILL`` of conveyor cannot be caught at all: the uvicorn child then runs on, orphaned.

:func:`ensure_api` starts that server up front (the very instance Prefect would start, so Prefect
reuses it) and hands its pid to a small watchdog process.
The watchdog holds the read end of a pipe whose write end only conveyor holds; when conveyor
ends, however it ends, the pipe closes and the watchdog stops the server. :func:`exit_on_signals`
turns SIGTERM into a normal exit so that the server is also stopped the ordinary way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_watchdog: tuple[subprocess.Popen, int] | None = None


def exit_on_signals() -> None:
    """SIGTERM ends the process like SIGINT's KeyboardInterrupt would: through ``sys.exit``, so
    ``atexit`` handlers (Prefect's server stop among them) and ``finally`` blocks run."""

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def start_watchdog() -> None:
    """Start the watchdog of this process (once). It also finds temporary Prefect API servers this
    process starts by itself, so that one started a moment before a SIGKILL is not missed."""
    global _watchdog
    if _watchdog is None:
        read_end, write_end = os.pipe()  # not inheritable: no other child keeps the pipe open
        proc = subprocess.Popen([sys.executable, "-m", "conveyor.orchestration.ephemeral", str(os.getpid())],
                                stdin=read_end, start_new_session=True, close_fds=True)
        os.close(read_end)
        _watchdog = (proc, write_end)


def guard(pid: int) -> None:
    """Stop process ``pid`` when this process ends, even by SIGKILL."""
    start_watchdog()
    assert _watchdog is not None
    os.write(_watchdog[1], f"{int(pid)}\n".encode())


def ensure_api(timeout: float | None = None) -> str | None:
    """Start Prefect's temporary API unless an API URL is configured (environment, profile, or a
    test harness); returns its URL, or None when a server is configured."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    start_watchdog()  # before the server: a kill during its start must not leave it behind either
    server = SubprocessASGIServer()  # the instance Prefect's own clients reuse
    server.start(timeout=int(timeout) if timeout else None)
    if server.server_process is not None:
        guard(server.server_process.pid)
    return server.api_url


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_prefect_server(pid: int) -> bool:
    """Whether ``pid`` is still a temporary Prefect API (not a process that reused the number)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # no procfs (macOS): trust the pid
        return _alive(pid)
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"uvicorn" in args and any(b"prefect.server.api.server" in a for a in args)


def _stop(pids: list[int], grace: float = 5.0) -> None:
    live = [p for p in pids if _is_prefect_server(p)]
    for p in live:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        live = [p for p in live if _alive(p)]
        time.sleep(0.1)
    for p in live:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children(parent: int) -> list[int]:
    """The pids whose parent is ``parent`` (Linux procfs; empty elsewhere)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(parent):
            out.append(int(d.name))
    return out


def _watch(parent: int, every: float = 0.2) -> None:
    """The watchdog: collect the temporary Prefect servers of ``parent`` (sent on stdin, and seen
    among its children) until the pipe closes (the parent ended), then stop them."""
    import select

    pids: set[int] = set()
    buf = b""
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], every)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            pids.update(int(x) for x in lines if x.strip().isdigit())
        pids.update(p for p in _children(parent) if _is_prefect_server(p))
    _stop(sorted(pids))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the terminal is conveyor's to handle
    _watch(int(sys.argv[1]))
