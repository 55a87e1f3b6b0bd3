from pathlib import Path

import pytest
import yaml

from conveyor.core.spec import SpecError, load_spec, parse_rule, spec_from_dict
from helpers.specs import spec_dict as base

ROOT = Path(__file__).resolve().parents[2]


def test_example_spec_validates_and_resolves_paths_against_its_folder():
    spec = load_spec(ROOT / "examples" / "classification.yaml")
    assert spec.task == "classification"
    assert spec.source_path == (ROOT / "examples" / "data" / "digits" / "manifest.csv").resolve()
    assert spec.workspace_path() == (ROOT / "examples" / "workspace").resolve()
    assert [str(r) for r in spec.gates.parsed_rules()] == ["f1 >= 0.92", "ece <= 0.03", "latency_p95_ms <= 25"]


def test_errors_name_the_field_and_the_allowed_values():
    with pytest.raises(SpecError) as e:
        spec_from_dict(base(task="detect", split={"group_by": "lens"}, train={"epochs": 0, "bogus": 1}))
    msg = str(e.value)
    assert "task: must be one of 'classification', 'detection', 'multilabel' or 'segmentation'" in msg
    assert "split.group_by: must be one of 'camera', 'scene', 'time' or 'none'" in msg
    assert "train.epochs" in msg and "train.bogus: is not a known field" in msg


def test_bad_ratios_rules_and_durations_are_rejected():
    for bad, needle in [
        ({"split": {"ratios": {"train": 0.7, "val": 0.2, "test": 0.2}}}, "sum to 1.0"),
        ({"gates": {"rules": ["f2 >= 0.9"]}}, "unknown metric 'f2'"),
        ({"gates": {"rules": ["f1 => 0.9"]}}, "not of the form"),
        ({"gates": {"champion": {"metrics": ["speed"]}}}, "unknown metric 'speed'"),
        ({"triggers": {"schedule": {"cron": "every monday"}}}, "5 fields"),
        ({"triggers": {"drift": {"window": "7 days"}}}, "duration"),
        ({"data": {"source": "x", "min_side": 100, "max_side": 10}}, "min_side"),
    ]:
        with pytest.raises(SpecError, match=needle):
            spec_from_dict(base(**bad))


def test_missing_required_and_not_a_mapping(tmp_path):
    with pytest.raises(SpecError, match="data: is required"):
        spec_from_dict({"name": "s", "task": "classification"})
    p = tmp_path / "s.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(p)
    p.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(p)
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")


def test_section_hashes_follow_content():
    a = spec_from_dict(base(), base_dir="/x")
    b = spec_from_dict(base(train={"epochs": 3}), base_dir="/x")
    assert a.section_hash("data") == b.section_hash("data")
    assert a.section_hash("train") != b.section_hash("train")
    assert a.spec_hash != b.spec_hash
    # the resolved spec round-trips through YAML
    again = spec_from_dict(yaml.safe_load(a.resolved_yaml()), base_dir="/x")
    assert again.spec_hash == a.spec_hash


def test_per_class_rules():
    r = parse_rule("recall[cat] >= 0.8")
    assert (r.metric, r.cls, r.op, r.threshold, r.key) == ("recall", "cat", ">=", 0.8, "recall[cat]")
    with pytest.raises(ValueError, match="no per-class form"):
        parse_rule("ece[cat] <= 0.1", "classification")
    assert parse_rule("ece[cat] <= 0.1", "multilabel").key == "ece[cat]"  # per-label calibration
