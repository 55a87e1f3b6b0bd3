import json
import sqlite3
import threading

import pytest

from conveyor.release.gate import evaluate_gate, skip_decision
from conveyor.release.registry import Registry, RegistryError
from conveyor.release.rollout import promote, rollback
from helpers.specs import gate_spec as spec


GOOD = {"f1": 0.95, "ece": 0.02, "latency_p95_ms": 3.0}


def test_first_model_passes_on_absolute_rules_alone():
    d = evaluate_gate(spec(), GOOD)
    assert d.passed and d.decision == "promote" and len(d.outcomes) == 3
    assert all(o.kind == "absolute" for o in d.outcomes)


def test_each_failed_rule_is_reported_with_metric_threshold_and_value():
    d = evaluate_gate(spec(), {"f1": 0.80, "ece": 0.02, "latency_p95_ms": 40.0})
    assert not d.passed and d.decision == "reject"
    failed = {o.metric: o for o in d.outcomes if not o.passed}
    assert set(failed) == {"f1", "latency_p95_ms"}
    assert failed["f1"].threshold == 0.9 and failed["f1"].value == 0.80
    assert "f1 = 0.8 fails >= 0.9" in d.summary


def test_missing_or_nan_metric_is_never_a_pass():
    d = evaluate_gate(spec(), {"f1": float("nan"), "ece": 0.01})
    assert not d.passed
    assert {o.metric for o in d.outcomes if not o.passed} == {"f1", "latency_p95_ms"}


def test_champion_rule_beat_or_tie_within_tolerance():
    champ = {"f1": 0.96, "ece": 0.015, "latency_p95_ms": 2.0}
    tie = evaluate_gate(spec(), {**GOOD, "f1": 0.951, "ece": 0.024}, champ, 1)  # within 0.01 on both
    assert tie.passed, tie.summary
    worse = evaluate_gate(spec(), {**GOOD, "f1": 0.945}, champ, 1)
    assert not worse.passed
    bad = [o for o in worse.outcomes if not o.passed]
    assert len(bad) == 1 and bad[0].kind == "champion" and bad[0].champion_value == 0.96
    assert "champion v1" in bad[0].reason
    higher_ece = evaluate_gate(spec(), {**GOOD, "ece": 0.03}, champ, 1)  # ece is lower-is-better
    assert not higher_ece.passed


def test_per_class_rule():
    s = spec(rules=("recall[cat] >= 0.8",), champion=())
    assert evaluate_gate(s, {"recall[cat]": 0.85}).passed
    assert not evaluate_gate(s, {"recall[dog]": 0.99}).passed


def files(tmp_path, tag="a"):
    ck = tmp_path / f"ck-{tag}.pt"
    ck.write_bytes(b"weights " + tag.encode())
    mj = tmp_path / f"metrics-{tag}.json"
    mj.write_text(json.dumps(GOOD))
    return {"checkpoint.pt": str(ck), "metrics.json": str(mj)}


def register(reg, tmp_path, tag, **kw):
    return reg.register("m", files=files(tmp_path, tag), model_hash=f"hash-{tag}", metrics=GOOD,
                        lineage={"dataset_version": f"ds-{tag}"}, gate={"decision": "promote"}, **kw)


def test_register_versions_champion_history_and_rollback(tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = register(reg, tmp_path, "a")
    assert v1.version == 1 and (tmp_path / "reg" / "m" / "v0001" / "checkpoint.pt").read_bytes() == b"weights a"
    assert register(reg, tmp_path, "a").version == 1, "same model hash must not make a new version"
    res = promote(reg, "m", 1, evaluate_gate(spec(), GOOD))
    assert res.action == "promoted" and reg.alias("m") == 1
    v2 = register(reg, tmp_path, "b")
    assert v2.version == 2
    rejected = promote(reg, "m", 2, evaluate_gate(spec(), {**GOOD, "f1": 0.5}))
    assert rejected.action == "kept" and reg.alias("m") == 1
    assert promote(reg, "m", 2, evaluate_gate(spec(), GOOD, GOOD, 1)).action == "promoted"
    assert reg.champion("m").version == 2
    assert promote(reg, "m", 2, skip_decision(2, "same")).action == "unchanged"
    rb = rollback(reg, "m", 1)
    assert rb.champion_version == 1 and rb.previous_version == 2
    hist = reg.alias_history("m")
    assert [(h["version"], h["previous"]) for h in hist] == [(1, None), (2, 1), (1, 2)]
    assert hist[-1]["reason"] == "manual rollback"
    listed = reg.list("m")
    assert [v.is_champion for v in listed] == [True, False]
    with pytest.raises(RegistryError, match="no version 7; versions: \\[1, 2\\]"):
        rollback(reg, "m", 7)


def test_failure_during_register_leaves_no_half_version(tmp_path):
    class Crashing(Registry):
        def _before_commit(self, name, version):
            raise OSError("disk went away")

    reg = Crashing(tmp_path / "reg")
    with pytest.raises(OSError):
        register(reg, tmp_path, "a")
    assert reg.list("m") == []
    assert not (tmp_path / "reg" / "m" / "v0001").exists()
    assert [p.name for p in (tmp_path / "reg" / "m").iterdir()] == [], "temporary folders left behind"
    ok = Registry(tmp_path / "reg")
    assert register(ok, tmp_path, "a").version == 1


def test_missing_artifact_is_refused_before_anything_is_written(tmp_path):
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="checkpoint.pt"):
        reg.register("m", files={"checkpoint.pt": str(tmp_path / "nope.pt")}, model_hash="h", metrics={},
                     lineage={}, gate={})
    con = sqlite3.connect(tmp_path / "reg" / "registry.sqlite")
    assert con.execute("select count(*) from versions").fetchone()[0] == 0


def test_concurrent_registrations_get_distinct_versions(tmp_path):
    reg = Registry(tmp_path / "reg")
    errors = []

    def work(tag):
        try:
            register(Registry(tmp_path / "reg"), tmp_path, tag)
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert sorted(v.version for v in reg.list("m")) == [1, 2, 3, 4, 5, 6]
