"""A registry of stand-in versions for release tests: no training, just files and hashes."""

from __future__ import annotations

from pathlib import Path

from conveyor.core.workspace import Workspace
from conveyor.release.registry import Registry


def toy_registry(tmp_path: Path, versions: int = 2) -> tuple[Workspace, Registry]:
    """``versions`` registered versions of ``toy`` (v1 the champion) in a workspace under ``tmp_path``."""
    ws = Workspace(tmp_path / "ws")
    reg = Registry(ws.registry)
    for v in range(1, versions + 1):
        ck = tmp_path / f"ck{v}.pt"
        ck.write_bytes(f"weights {v}".encode())
        reg.register("toy", files={"checkpoint.pt": str(ck)}, model_hash=f"hash-{v}", metrics={"f1": 0.9},
                     lineage={}, gate={"decision": "promote"})
    reg.set_alias("toy", 1, reason="first model")
    return ws, reg
