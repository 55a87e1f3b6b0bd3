"""The ``conveyor`` command: validate a spec, run a cycle, inspect the registry, roll back, demo."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any


def _prepare_env(workspace: Path) -> None:
    """Quiet, offline defaults, and Prefect state under the workspace (set before Prefect is imported)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    prefect_home = workspace / ".prefect"
    if not os.environ.get("PREFECT_API_URL"):
        # No server configured: Prefect starts a temporary local API whose database lives here.
        os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(prefect_home / "storage"))
    prefect_home.mkdir(parents=True, exist_ok=True)


def _load(spec_path: str):
    from conveyor.spec import load_spec

    return load_spec(spec_path)


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def print_summary(s: dict) -> None:
    print(f"\nrun {s['run_id']} ({s['spec']}, trigger {s['trigger']})")
    d = s["dataset"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(d["quarantine_reasons"].items())) or "none"
    removed = ", ".join(f"{k} {v}" for k, v in sorted(d["removed_reasons"].items())) or "none"
    print(f"  dataset {s['dataset_version']}: received {d['received']}, accepted {d['accepted']}, "
          f"quarantined {d['quarantined']} ({reasons})")
    a = d.get("annotations") or {}
    if a:  # detection sources: box accounting
        box_reasons = ", ".join(f"{k} {v}" for k, v in sorted(a["box_quarantine_reasons"].items())) or "none"
        print(f"  boxes: received {a['boxes_received']}, accepted {a['boxes_accepted']}, "
              f"quarantined {a['boxes_quarantined']} ({box_reasons}); {a['negative_images']} images without boxes")
    print(f"  curation kept {d['curated']} (removed: {removed})")
    sp = s["split"]
    print(f"  split by {sp['group_by']}: " + ", ".join(f"{k} {v} images/{sp['groups'][k]} groups" for k, v in sp["counts"].items()))
    m = s["metrics"]
    keys = [k for k in ("f1", "accuracy", "ece", "map50", "miou", "latency_p95_ms", "throughput_ips") if k in m]
    print("  metrics: " + ", ".join(f"{k} {_fmt(m[k])}" for k in keys))
    print(f"  gate: {s['decision'].upper()} - {s['gate_summary']}")
    for r in s["reasons"]:
        print(f"    [{'pass' if r['passed'] else 'FAIL'}] {r['reason']}")
    print(f"  model v{s['model_version']} ({s['model_dir']}); {s['promotion']}")
    print(f"  run folder: {s['run_dir']}")


def cmd_validate(args) -> int:
    spec = _load(args.spec)
    print(f"spec OK: {spec.name} ({spec.task}), hash {spec.spec_hash}")
    print(f"  source:    {spec.source_path}")
    print(f"  workspace: {spec.workspace_path(args.workspace)}")
    print(f"  gates:     {'; '.join(spec.gates.rules)}; champion: {', '.join(spec.gates.champion.metrics)} "
          f"(tolerance {spec.gates.champion.tolerance:g})")
    if args.show:
        print(spec.resolved_yaml())
    return 0


def run_cycle(spec_path: str, workspace: str | None, trigger: str = "manual") -> dict:
    spec = _load(spec_path)
    ws = spec.workspace_path(workspace)
    _prepare_env(ws)
    from flows.cycle import continuous_training

    return continuous_training(spec_path=str(Path(spec_path).resolve()), workspace=str(ws), trigger=trigger)


def cmd_run(args) -> int:
    summary = run_cycle(args.spec, args.workspace, args.trigger)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary)
    return 0


def cmd_registry_list(args) -> int:
    from conveyor.gate import DECISION_WORDS
    from conveyor.registry import Registry
    from conveyor.workspace import Workspace

    spec = _load(args.spec)
    reg = Registry(Workspace(spec.workspace_path(args.workspace)).registry)
    versions = reg.list(spec.name)
    champion = reg.alias(spec.name)
    if args.json:
        print(json.dumps({"name": spec.name, "champion": champion, "versions": [v.to_dict() for v in versions],
                          "champion_history": reg.alias_history(spec.name)}, indent=2, default=str))
        return 0
    if not versions:
        print(f"{spec.name}: no registered versions yet")
        return 0
    print(f"{'':2}{'version':>7}  {'created':25} {'gate':8} {'f1':>7} {'ece':>7} {'p95 ms':>7}  dataset")
    for v in versions:
        m = v.metrics
        print(f"{'*' if v.is_champion else ' ':2}{'v' + str(v.version):>7}  {v.created_at:25} "
              f"{DECISION_WORDS.get(v.gate.get('decision'), '?'):8} {_fmt(m.get('f1')):>7} {_fmt(m.get('ece')):>7} "
              f"{_fmt(m.get('latency_p95_ms'), 3):>7}  {v.lineage.get('dataset_version', '?')}")
    print(f"* champion: v{champion}" if champion else "no champion yet")
    return 0


def cmd_rollback(args) -> int:
    from conveyor.registry import Registry
    from conveyor.rollout import rollback
    from conveyor.workspace import Workspace

    spec = _load(args.spec)
    reg = Registry(Workspace(spec.workspace_path(args.workspace)).registry)
    res = rollback(reg, spec.name, args.to, reason=args.reason)
    print(res.message)
    return 0


def cmd_demo(args) -> int:
    from conveyor.demo import bundled_example, example_writer

    write_batch = example_writer(args.example)
    root = Path(args.dir).resolve()
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / f"{args.example}.yaml"
    if not spec_path.exists():
        shutil.copyfile(bundled_example(args.example), spec_path)
    spec = _load(str(spec_path))
    summaries = []
    for batch in (1, 2):
        print(f"== demo cycle {batch}: writing batch {batch} of the {args.example} demo data to {spec.source_path}",
              file=sys.stderr)
        write_batch(spec, batch)
        summaries.append(run_cycle(str(spec_path), args.workspace, trigger=f"demo-batch-{batch}"))
        if not args.json:
            print_summary(summaries[-1])
    if args.json:
        print(json.dumps(summaries, indent=2, default=str))
    else:
        ws = spec.workspace_path(args.workspace)
        print(f"\ndemo finished. spec: {spec_path}\n  workspace: {ws}\n  registry:  {ws / 'registry'}\n"
              f"  runs:      {ws / 'runs'}\n  try: conveyor registry list {spec_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conveyor", description="Continuous training for computer-vision models.")
    sub = p.add_subparsers(dest="command", required=True)

    def ws(sp):
        sp.add_argument("--workspace", help="state folder (default: the spec's workspace, or ./workspace beside it)")

    v = sub.add_parser("validate", help="check a spec and print what it resolves to")
    v.add_argument("spec")
    v.add_argument("--show", action="store_true", help="print the resolved spec")
    ws(v)
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run one cycle of the pipeline a spec describes")
    r.add_argument("spec")
    r.add_argument("--json", action="store_true", help="print a machine-readable summary")
    r.add_argument("--trigger", default="manual", help="what started this run (recorded in the lineage)")
    ws(r)
    r.set_defaults(func=cmd_run)

    reg = sub.add_parser("registry", help="inspect the model registry")
    regsub = reg.add_subparsers(dest="registry_command", required=True)
    rl = regsub.add_parser("list", help="list versions with metrics, lineage and the champion")
    rl.add_argument("spec")
    rl.add_argument("--json", action="store_true")
    ws(rl)
    rl.set_defaults(func=cmd_registry_list)

    rb = sub.add_parser("rollback", help="move the champion alias back to an earlier version")
    rb.add_argument("spec")
    rb.add_argument("--to", type=int, required=True, metavar="VERSION")
    rb.add_argument("--reason", default="manual rollback")
    ws(rb)
    rb.set_defaults(func=cmd_rollback)

    d = sub.add_parser("demo", help="run a bundled example: two cycles, a second batch of data arriving between them")
    d.add_argument("--example", default="classification", help="which bundled example (default: classification)")
    d.add_argument("--dir", default=".demo", help="where the demo spec and data go (default: ./.demo)")
    d.add_argument("--fresh", action="store_true", help="delete the demo folder first")
    d.add_argument("--json", action="store_true")
    ws(d)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from conveyor.spec import SpecError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the message names the stage, file, row or field
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
