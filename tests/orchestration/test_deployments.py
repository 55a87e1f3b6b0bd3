"""prefect.yaml generated from specs: schedules, event triggers, monitors, and the committed file."""

from __future__ import annotations

import importlib
import inspect
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from conveyor.cli.main import main
from conveyor.orchestration.deployments import render_prefect_yaml, spec_path_param
from helpers.specs import write_pipeline_spec as write_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / f"{k}.yaml" for k in ("classification", "detection", "segmentation")]


def generated(spec_paths, root: Path, **kw) -> dict:
    return yaml.safe_load(render_prefect_yaml(spec_paths, root, **kw))


def deployment(conf: dict, flow: str, name: str) -> dict | None:
    entry = {"conveyor-cycle": "flows/cycle.py:continuous_training",
             "conveyor-monitor": "flows/monitor.py:monitor_pipeline"}[flow]
    found = [d for d in conf["deployments"] if d["entrypoint"] == entry and d["name"] == name]
    assert len(found) <= 1
    return found[0] if found else None


def test_committed_prefect_yaml_matches_the_specs():
    expected = render_prefect_yaml(EXAMPLES, ROOT)
    assert (ROOT / "prefect.yaml").read_text() == expected, (
        "prefect.yaml is out of date with the specs; regenerate it with:\n  conveyor deployments "
        "examples/classification.yaml examples/detection.yaml examples/segmentation.yaml --write prefect.yaml")


def test_cron_and_timezone_become_the_cycle_schedule(tmp_path):
    spec = write_spec(tmp_path / "pipelines", schedule={"cron": "15 2 * * 1-5", "timezone": "Europe/Berlin"})
    conf = generated([spec], tmp_path)
    cycle = deployment(conf, "conveyor-cycle", "toy")
    assert cycle["schedules"] == [{"cron": "15 2 * * 1-5", "timezone": "Europe/Berlin", "active": True,
                                   "parameters": {"trigger": "schedule"}}]
    # a run from the UI's button is manual; the schedule's own runs say "schedule"
    assert cycle["parameters"] == {"spec_path": "pipelines/toy.yaml", "trigger": "manual"}
    assert cycle["concurrency_limit"] == 1 and cycle["work_pool"] == {"name": "conveyor"}
    assert cycle["triggers"] == [] and deployment(conf, "conveyor-monitor", "toy") is None
    assert conf["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CONVEYOR_HOME }}"}}]


def test_no_schedule_no_triggers_no_monitor(tmp_path):
    conf = generated([write_spec(tmp_path)], tmp_path, work_pool="gpu")
    (cycle,) = conf["deployments"]
    assert cycle["schedules"] == []  # explicit, so that redeploying clears a schedule dropped from the spec
    assert cycle["triggers"] == []
    assert cycle["work_pool"] == {"name": "gpu"}


@pytest.mark.parametrize("declared", [["drift"], ["performance"], ["webhook"], ["drift", "performance", "webhook"]])
def test_event_triggers_only_for_declared_triggers(tmp_path, declared):
    config = {"drift": {"features": ["brightness"]}, "performance": {"below": 0.8}, "webhook": True}
    conf = generated([write_spec(tmp_path, **{k: config[k] for k in declared})], tmp_path)
    cycle = deployment(conf, "conveyor-cycle", "toy")
    events = {"drift": "conveyor.drift.detected", "performance": "conveyor.performance.degraded",
              "webhook": "conveyor.webhook.received"}
    assert [t["expect"] for t in cycle["triggers"]] == [[events[k]] for k in declared]
    monitor = deployment(conf, "conveyor-monitor", "toy")
    assert (monitor is not None) == (declared != ["webhook"]), "a monitor only for drift / performance"
    for key, trig in zip(declared, cycle["triggers"]):
        assert trig["match"] == {"prefect.resource.id": "conveyor.pipeline.toy"}
        assert trig["posture"] == "Reactive" and trig["threshold"] == 1 and trig["enabled"] is True
        assert trig["parameters"] == {"trigger": key, "reason": "{{ event.payload.reason }}"}


def test_monitor_deployment_runs_every_monitor_every(tmp_path):
    spec = write_spec(tmp_path, drift={"features": ["contrast"]}, monitor_every="30m")
    conf = generated([spec], tmp_path)
    monitor = deployment(conf, "conveyor-monitor", "toy")
    assert monitor["parameters"] == {"spec_path": "toy.yaml", "start": "event"}
    assert monitor["schedules"] == [{"interval": 1800, "active": True}]
    assert monitor["concurrency_limit"] == 1
    assert [d["name"] for d in conf["deployments"]] == ["toy", "toy"]  # cycle, then its monitor


def test_prefect_accepts_the_generated_yaml(tmp_path):
    """Validated with the models `prefect deploy` itself uses for prefect.yaml, triggers and schedules."""
    from prefect.cli.deploy._models import PrefectYamlModel, RawScheduleConfig
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    spec = write_spec(tmp_path, schedule={"cron": "0 3 * * 1", "timezone": "America/New_York"},
                      drift={"features": ["brightness"]}, performance={"below": 0.9}, webhook=True,
                      monitor_every="2h")
    conf = yaml.safe_load(render_prefect_yaml([spec, *EXAMPLES], ROOT))
    model = PrefectYamlModel.model_validate(conf)
    assert len(model.deployments) == 2 + 3 + 2 + 3  # cycle, monitor (drift / performance), rollout (not replace)

    cycle = deployment(conf, "conveyor-cycle", "toy")
    triggers = _initialize_deployment_triggers("toy", [dict(t) for t in cycle["triggers"]])
    assert all(isinstance(t, DeploymentEventTrigger) for t in triggers)
    deployment_id = uuid.uuid4()
    assert len(triggers) == 3
    for t, key in zip(triggers, ("drift", "performance", "webhook")):
        t.set_deployment_id(deployment_id)
        automation = t.as_automation()
        (action,) = automation.actions
        assert isinstance(action, RunDeployment) and action.deployment_id == deployment_id
        assert action.parameters == {"trigger": key, "reason": "{{ event.payload.reason }}"}
        assert automation.trigger.match.model_dump()["prefect.resource.id"] == "conveyor.pipeline.toy"
        assert automation.trigger.within == timedelta(0)

    (cron,) = cycle["schedules"]
    RawScheduleConfig.model_validate(cron)
    made = _schedule_config_to_deployment_schedule(cron)["schedule"]
    assert isinstance(made, CronSchedule) and (made.cron, made.timezone) == ("0 3 * * 1", "America/New_York")
    (interval,) = deployment(conf, "conveyor-monitor", "toy")["schedules"]
    RawScheduleConfig.model_validate(interval)
    made = _schedule_config_to_deployment_schedule(interval)["schedule"]
    assert isinstance(made, IntervalSchedule) and made.interval == timedelta(hours=2)


def test_events_and_resource_are_the_ones_conveyor_emits():
    events = pytest.importorskip("conveyor.core.events")
    from conveyor.orchestration.deployments import EVENTS, pipeline_resource_id

    assert events.resource("toy")["prefect.resource.id"] == pipeline_resource_id("toy")
    for event, _ in EVENTS.values():
        assert event in events.EVENTS


def test_parameters_match_the_flow_signatures():
    conf = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for dep in conf["deployments"]:
        module, func = dep["entrypoint"].split(":")
        if not (ROOT / module).exists():  # a flow not written yet
            continue
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        params = set(inspect.signature(flow.fn).parameters)
        assert set(dep["parameters"]) <= params, dep["name"]
        for trig in dep.get("triggers", []):
            assert set(trig["parameters"]) <= params


def test_spec_paths_relative_to_the_project_when_possible(tmp_path):
    inside = write_spec(tmp_path / "project" / "specs")
    outside = write_spec(tmp_path / "elsewhere", name="other")
    assert spec_path_param(inside, tmp_path / "project") == "specs/toy.yaml"
    assert spec_path_param(outside, tmp_path / "project") == outside.resolve().as_posix()


def test_pipeline_names_must_be_unique(tmp_path):
    with pytest.raises(ValueError, match="two specs are named 'toy'"):
        render_prefect_yaml([write_spec(tmp_path / "a"), write_spec(tmp_path / "b")], tmp_path)


def test_cli_prints_and_writes(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path / "specs", schedule={"cron": "0 1 * * *"})
    monkeypatch.chdir(tmp_path)
    assert main(["deployments", "specs/toy.yaml", "--work-pool", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed == render_prefect_yaml([spec], tmp_path, work_pool="cpu")

    out = tmp_path / "deploy" / "prefect.yaml"
    out.parent.mkdir()
    assert main(["deployments", str(spec), "--write", str(out)]) == 0
    assert out.read_text() == render_prefect_yaml([spec], out.parent)
    # the spec is outside the written file's folder (the project root): an absolute path
    assert yaml.safe_load(out.read_text())["deployments"][0]["parameters"]["spec_path"] == spec.resolve().as_posix()
    assert not [p for p in out.parent.iterdir() if p.name != "prefect.yaml"], "no temporary file left behind"

    assert main(["deployments", str(tmp_path / "missing.yaml")]) == 2
