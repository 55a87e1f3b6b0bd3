"""Prefect deployments generated from pipeline specs: the spec stays the one source of truth.

``render_prefect_yaml`` turns specs into a ``prefect.yaml`` for ``prefect deploy --all``. Per spec:

- ``conveyor-cycle/<name>``: ``flows/cycle.py:continuous_training`` (``trigger: manual`` by default,
  so the UI's run button records a manual run; ``trigger: schedule`` on the schedule's own runs),
  one cycle at a time (``concurrency_limit: 1``), the spec's ``triggers.schedule`` (cron and time
  zone) as its schedule, and one deployment trigger (a Prefect automation) per declared event
  trigger: ``conveyor.drift.detected`` starts a cycle with ``trigger: drift``,
  ``conveyor.performance.degraded`` one with ``trigger: performance`` and, with
  ``triggers.webhook: true``, ``conveyor.webhook.received`` (``conveyor webhook --mode event``)
  one with ``trigger: webhook``; each passes the event's ``payload.reason`` on as the run's
  ``reason``. Events match on the resource ``conveyor.pipeline.<name>``;
- ``conveyor-monitor/<name>``, only when the spec declares drift or performance triggers:
  ``flows/monitor.py:monitor_pipeline`` every ``triggers.monitor_every``, which evaluates the
  triggers and emits those events;
- ``conveyor-rollout/<name>``, only when ``deploy.strategy`` is shadow, canary or blue_green:
  ``flows/rollout.py:rollout_flow``, no schedule; a cycle whose challenger passes the gate starts a
  run of it (``run_deployment``) to watch the rollout it began and promote or roll it back.

In its default mode the webhook receiver starts ``conveyor-cycle/<name>`` through the Prefect API
and needs no trigger. The layout follows Prefect 3's ``prefect.yaml`` schema
(``prefect/cli/deploy/_models.py`` and ``prefect/events/schemas/deployment_triggers.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from conveyor.core.spec import Spec, load_spec, parse_duration_s

CYCLE_FLOW = "conveyor-cycle"
MONITOR_FLOW = "conveyor-monitor"
CYCLE_ENTRYPOINT = "flows/cycle.py:continuous_training"
MONITOR_ENTRYPOINT = "flows/monitor.py:monitor_pipeline"
ROLLOUT_FLOW = "conveyor-rollout"
ROLLOUT_ENTRYPOINT = "flows/rollout.py:rollout_flow"
DEFAULT_WORK_POOL = "conveyor"
HOME_ENV = "CONVEYOR_HOME"  # the project checkout on the worker's machine
# The Prefect version whose prefect.yaml schema this layout was checked against.
PREFECT_VERSION = "3.9.1"

# Per spec trigger: the event that starts a cycle, and the cycle's ``trigger`` parameter.
EVENTS: dict[str, tuple[str, str]] = {
    "drift": ("conveyor.drift.detected", "drift"),
    "performance": ("conveyor.performance.degraded", "performance"),
    "webhook": ("conveyor.webhook.received", "webhook"),  # `conveyor webhook --mode event`
}
MONITORED = ("drift", "performance")  # the triggers the monitor deployment evaluates


def declared(spec: Spec, key: str) -> bool:
    value = getattr(spec.triggers, key)
    return value is not None and value is not False


def pipeline_resource_id(name: str) -> str:
    """The Prefect event resource id of a pipeline (what the monitor's events are about)."""
    return f"conveyor.pipeline.{name}"


def spec_path_param(spec_path: str | Path, project_root: str | Path) -> str:
    """The spec path as the deployment passes it: relative to the project root when the spec lies
    under it (workers run from the project checkout), absolute otherwise. Relative input paths are
    taken relative to the current folder."""
    absolute = Path(os.path.abspath(Path(spec_path).expanduser()))
    root = Path(os.path.abspath(Path(project_root).expanduser()))
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        return absolute.as_posix()


def _seconds(duration: str) -> int | float:
    s = parse_duration_s(duration)
    return int(s) if float(s).is_integer() else s


def event_triggers(spec: Spec) -> list[dict[str, Any]]:
    """Deployment triggers (prefect.yaml ``triggers:``) for the event triggers the spec declares."""
    out = []
    for key, (event, trigger) in EVENTS.items():
        if not declared(spec, key):
            continue
        source = "its webhook receiver (event mode)" if key == "webhook" else "its monitor"
        out.append({
            "name": f"{CYCLE_FLOW}/{spec.name} on {event}",
            "description": f"Start a cycle of {spec.name} when {source} emits {event}.",
            "enabled": True,
            "type": "event",
            "match": {"prefect.resource.id": pipeline_resource_id(spec.name)},
            "expect": [event],
            "posture": "Reactive",
            "threshold": 1,
            "within": 0,
            # merged over the deployment's parameters (spec_path) by the Prefect API
            "parameters": {"trigger": trigger, "reason": _Quoted("{{ event.payload.reason }}")},
        })
    return out


def cycle_deployment(spec: Spec, spec_param: str, work_pool: str = DEFAULT_WORK_POOL) -> dict[str, Any]:
    schedules = []
    if spec.triggers.schedule is not None:
        # the schedule's own parameters: its runs record trigger "schedule", while a run from the
        # UI's button keeps the deployment's default, "manual"
        schedules.append({"cron": _Quoted(spec.triggers.schedule.cron), "timezone": spec.triggers.schedule.timezone,
                          "active": True, "parameters": {"trigger": "schedule"}})
    description = f"Continuous-training cycle of {spec.name} ({spec_param})."
    if spec.description:
        description += f" {spec.description}"
    return {
        "name": spec.name,
        "description": description,
        "entrypoint": CYCLE_ENTRYPOINT,
        "parameters": {"spec_path": spec_param, "trigger": "manual"},
        "tags": ["conveyor", spec.task, spec.name],
        "work_pool": {"name": work_pool},
        "concurrency_limit": 1,
        # always a list: `[]` clears a schedule removed from the spec when redeployed with
        # PREFECT_DEPLOYMENTS_CLEAR_SCHEDULES_ON_EMPTY=true (Prefect 3.9 keeps it otherwise)
        "schedules": schedules,
        "triggers": event_triggers(spec),  # always a list: redeploying replaces the automations
    }


def monitor_deployment(spec: Spec, spec_param: str, work_pool: str = DEFAULT_WORK_POOL) -> dict[str, Any] | None:
    t = spec.triggers
    monitored = [k for k in MONITORED if declared(spec, k)]
    if not monitored:
        return None
    return {
        "name": spec.name,
        "description": f"Evaluates the {' and '.join(monitored)} trigger{'s' if len(monitored) > 1 else ''} of "
                       f"{spec.name} ({spec_param}) every {t.monitor_every} and emits an event when one fires.",
        "entrypoint": MONITOR_ENTRYPOINT,
        "parameters": {"spec_path": spec_param, "start": "event"},
        "tags": ["conveyor", spec.task, spec.name, "monitor"],
        "work_pool": {"name": work_pool},
        "concurrency_limit": 1,
        "schedules": [{"interval": _seconds(t.monitor_every), "active": True}],
    }


def rollout_deployment(spec: Spec, spec_param: str, work_pool: str = DEFAULT_WORK_POOL) -> dict[str, Any] | None:
    d = spec.deploy
    if d.strategy == "replace":
        return None
    return {
        "name": spec.name,
        "description": f"Watches a {d.strategy} rollout of {spec.name} ({spec_param}) for {d.duration}, checking its "
                       f"live metrics every {d.check_every}; promotes the challenger or rolls it back. Started by "
                       f"the cycle (parameters version and rollout_id).",
        "entrypoint": ROLLOUT_ENTRYPOINT,
        "parameters": {"spec_path": spec_param},
        "tags": ["conveyor", spec.task, spec.name, "rollout"],
        "work_pool": {"name": work_pool},
        "schedules": [],
    }


def deployments_for(spec_paths: Iterable[str | Path], project_root: str | Path,
                    work_pool: str = DEFAULT_WORK_POOL) -> list[tuple[str, dict[str, Any]]]:
    """``(flow name, deployment)`` pairs for the specs, in the order given (cycle, monitor, rollout)."""
    out: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, str] = {}
    for path in spec_paths:
        spec = load_spec(path)
        param = spec_path_param(path, project_root)
        if spec.name in seen:
            raise ValueError(f"two specs are named {spec.name!r} ({seen[spec.name]} and {param}); deployments are "
                             f"named after the pipeline, so names must be unique")
        seen[spec.name] = param
        out.append((CYCLE_FLOW, cycle_deployment(spec, param, work_pool)))
        monitor = monitor_deployment(spec, param, work_pool)
        if monitor is not None:
            out.append((MONITOR_FLOW, monitor))
        rollout = rollout_deployment(spec, param, work_pool)
        if rollout is not None:
            out.append((ROLLOUT_FLOW, rollout))
    return out


class _Quoted(str):
    """A string written in double quotes (cron expressions and templates read better that way)."""


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False):  # indent lists under their key
        return super().increase_indent(flow, False)


_Dumper.add_representer(_Quoted, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style='"'))


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000,
                     allow_unicode=True)


def _indent(text: str, prefix: str = "  ") -> str:
    return "".join(prefix + line if line.strip() else line for line in text.splitlines(keepends=True))


def render_prefect_yaml(spec_paths: Sequence[str | Path], project_root: str | Path,
                        work_pool: str = DEFAULT_WORK_POOL) -> str:
    """The ``prefect.yaml`` text for the specs; spec paths are made relative to ``project_root``."""
    if not spec_paths:
        raise ValueError("give at least one spec")
    deployments = deployments_for(spec_paths, project_root, work_pool)
    params = [spec_path_param(p, project_root) for p in spec_paths]
    pool_flag = "" if work_pool == DEFAULT_WORK_POOL else f" --work-pool {work_pool}"
    header = f"""\
# Prefect deployments of the conveyor pipelines, generated from their specs by
#
#   conveyor deployments {' '.join(params)}{pool_flag} --write prefect.yaml
#
# Do not edit by hand: change the specs and run that command again. To run the pipelines on a
# Prefect server, from this folder:
#
#   prefect server start                                   # in one terminal (UI on :4200)
#   export PREFECT_API_URL=http://127.0.0.1:4200/api {HOME_ENV}=$PWD
#   export PREFECT_DEPLOYMENTS_CLEAR_SCHEDULES_ON_EMPTY=true   # a schedule removed from a spec goes too
#   prefect work-pool create {work_pool} --type process
#   prefect deploy --all
#   prefect worker start --pool {work_pool}
#
# Cycles then start from each spec's cron schedule, from the monitor's drift / performance events
# (the deployment triggers below), from signed webhooks (`conveyor webhook`), from the UI, or from
# `prefect deployment run 'conveyor-cycle/<pipeline>'`.
"""
    top = _dump({"name": "conveyor", "prefect-version": PREFECT_VERSION, "build": None, "push": None})
    pull = _dump({"pull": [{"prefect.deployments.steps.set_working_directory":
                            {"directory": _Quoted("{{ $" + HOME_ENV + " }}")}}]})
    parts = [header, top, "\n# Workers run the flows from the project checkout.\n", pull, "\ndeployments:\n"]
    for i, (flow_name, dep) in enumerate(deployments):
        if i:
            parts.append("\n")
        parts.append(f"  # {flow_name}/{dep['name']}\n")
        parts.append(_indent(_dump([dep])))
    return "".join(parts)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
