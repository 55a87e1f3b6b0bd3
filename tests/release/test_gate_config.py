"""A gate with no absolute rule never promotes; the champion comparison follows the rules."""

from __future__ import annotations

import pytest
import yaml

from conveyor.cli.main import main
from conveyor.core.spec import SpecError, spec_from_dict
from conveyor.release.gate import evaluate_gate


def _spec(**gates):
    return {"name": "g", "task": "classification", "data": {"source": "data"}, "gates": gates}


def test_a_spec_without_an_absolute_rule_is_refused():
    with pytest.raises(SpecError, match="gates.rules is empty"):
        spec_from_dict(_spec(rules=[], champion={"metrics": []}))


def test_validate_exits_non_zero_for_a_spec_without_rules(tmp_path, capsys):
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(_spec(rules=[])))
    assert main(["validate", str(p)]) != 0
    assert "gates.rules is empty" in capsys.readouterr().err


def test_champion_metrics_default_to_the_quality_metrics_of_the_rules():
    spec = spec_from_dict(_spec(rules=["f1 >= 0.9", "ece <= 0.05", "recall[cat] >= 0.8", "latency_p95_ms <= 20"]))
    assert spec.gates.champion.metrics == ["f1", "ece", "recall[cat]"]
    explicit = spec_from_dict(_spec(rules=["f1 >= 0.9"], champion={"metrics": ["accuracy"]}))
    assert explicit.gates.champion.metrics == ["accuracy"]


def test_the_gate_rejects_when_a_spec_has_no_rule_at_all():
    spec = spec_from_dict(_spec(rules=["f1 >= 0.9"]))
    spec.gates.__dict__["rules"] = []  # as a spec built around the validation would carry
    decision = evaluate_gate(spec, {"f1": 1.0}, None)
    assert not decision.passed and decision.decision == "reject"
    assert "no absolute gate rule" in decision.summary
