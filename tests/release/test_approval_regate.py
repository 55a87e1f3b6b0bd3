"""Approving a version gates it again when the champion or the frozen test split changed since its gate.

A registry with made-up versions; the evaluator is a table of what each version scores on each split."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from conveyor.core.spec import spec_from_dict
from conveyor.core.workspace import Workspace
from conveyor.release.approval import ApprovalError, Scores, approve, request
from conveyor.release.gate import GateDecision
from conveyor.release.registry import Registry
from helpers.specs import toy_spec_dict


def _gate(champion_version: int | None) -> dict:
    return GateDecision(True, "promote", [], champion_version, "all gate rules pass").to_dict()


class Table:
    """f1 per (version, version whose registered split it is scored on); every call is recorded."""

    def __init__(self, f1: dict[tuple[int, str], float]):
        self.f1, self.calls = f1, []

    def __call__(self, mv, split_path: str, out_dir: Path) -> Scores:
        key = (mv.version, int(Path(split_path).parent.name.lstrip("v")))
        self.calls.append(key)
        return Scores({"f1": self.f1[key]})


def _register(tmp_path: Path, reg: Registry, v: int, gated_against: int | None, eval_set: str, f1: float) -> None:
    folder = tmp_path / f"src{v}"
    folder.mkdir()
    (folder / "ck.pt").write_bytes(f"weights {v}".encode())
    pl.DataFrame({"id": [f"{eval_set}-1"], "label": ["red"], "split": ["test"]}).write_parquet(folder / "split.parquet")
    reg.register("toy", files={"checkpoint.pt": str(folder / "ck.pt"), "split.parquet": str(folder / "split.parquet")},
                 model_hash=f"hash-{v}", metrics={"f1": f1, "latency_p95_ms": 5.0},
                 lineage={"eval_set_hash": eval_set}, gate=_gate(gated_against), run_id=f"run{v:05d}-aaaa-bbbb")


@pytest.fixture
def three(tmp_path):
    """v1 is the champion; v2 and v3 were both gated against v1 on the same frozen split and wait."""
    spec = spec_from_dict(toy_spec_dict(gates={"rules": ["f1 >= 0.5", "latency_p95_ms <= 1000"], "require_approval": True,
                                               "champion": {"metrics": ["f1"], "tolerance": 0.02}},
                                        deploy={"strategy": "replace"}), base_dir=tmp_path)
    ws = Workspace(tmp_path / "ws")
    reg = Registry(ws.registry)
    _register(tmp_path, reg, 1, None, "eval-1", 0.80)
    reg.set_alias("toy", 1, reason="first model")
    _register(tmp_path, reg, 2, 1, "eval-1", 0.85)
    _register(tmp_path, reg, 3, 1, "eval-1", 0.95)
    for v in (2, 3):
        request(reg, spec, v, f"run{v:05d}-aaaa-bbbb")
    return spec, ws, reg


def test_a_pending_version_is_regated_against_the_newer_champion_and_refused_when_worse(three):
    spec, ws, reg = three
    table = Table({(2, 2): 0.85, (3, 2): 0.95, (2, 3): 0.85, (3, 3): 0.95})
    first = approve(spec, ws, 3, by="alice", by_version=True, evaluator=table)
    assert first.regate is None and table.calls == [], "nothing changed since v3 was gated: its decision stands"
    assert reg.alias("toy") == 3

    shown = []
    with pytest.raises(ApprovalError, match=r"v2 of 'toy' was gated again because the champion is now v3 \(v1 when "
                                            r"v2 was gated\), and now fails: .*f1 = 0.85 is worse than champion v3 "
                                            r"\(0.95, tolerance 0.02\).*stays pending.*conveyor reject"):
        approve(spec, ws, "run00002", by="bob", evaluator=table, on_regate=shown.append)
    # both models scored on the current frozen split (the newest registered version's), before anything happened
    assert sorted(table.calls) == [(2, 3), (3, 3)]
    (regate,) = shown
    assert regate.decision.decision == "reject" and regate.champion_version == 3 and regate.gated_against == 1
    assert reg.approval("toy", 2)["status"] == "pending", "a refused approval changes nothing"
    assert reg.alias("toy") == 3


def test_a_regated_version_that_still_passes_is_released_with_the_new_decision(three, tmp_path):
    spec, ws, reg = three
    approve(spec, ws, 3, by="alice", by_version=True, evaluator=Table({}))
    # a later cycle froze more test images (v4, rejected by its gate) and v2 now scores better than v3 there
    _register(tmp_path, reg, 4, 3, "eval-2", 0.5)
    table = Table({(2, 4): 0.97, (3, 4): 0.96})
    res = approve(spec, ws, "run00002", by="bob", reason="better at night", evaluator=table)
    assert res.regate is not None and res.regate.decision.passed and res.regate.eval_set_hash == "eval-2"
    assert "the frozen test split changed" in res.regate.why and "the champion is now v3" in res.regate.why
    assert reg.alias("toy") == 2 and res.replaces == 3
    assert "gated again because" in res.message and "all gate rules pass" in res.message
    assert res.to_dict()["regate"]["decision"]["champion_version"] == 3


def test_without_a_frozen_split_a_version_that_needs_regating_is_refused(tmp_path):
    spec = spec_from_dict(toy_spec_dict(gates={"require_approval": True}), base_dir=tmp_path)
    ws = Workspace(tmp_path / "ws")
    reg = Registry(ws.registry)
    (tmp_path / "ck.pt").write_bytes(b"w")
    for v in (1, 2):
        reg.register("toy", files={"checkpoint.pt": str(tmp_path / "ck.pt")}, model_hash=f"h{v}",
                     metrics={"f1": 0.9}, lineage={}, gate=_gate(None), run_id=f"run{v:05d}-aaaa-bbbb")
    reg.set_alias("toy", 1, reason="first")
    request(reg, spec, 2, "run00002-aaaa-bbbb")
    with pytest.raises(ApprovalError, match="must be gated again .*no frozen test split"):
        approve(spec, ws, 2, by="bob", by_version=True, evaluator=Table({}))
    assert reg.approval("toy", 2)["status"] == "pending"
