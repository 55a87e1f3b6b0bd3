"""Verbs that run or inspect a pipeline: validate, run, monitor, observe, report, demo, deployments."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from conveyor.cli.common import load, prepare_env, start_api
from conveyor.cli.render import (print_demo_finished, print_demo_review, print_monitor, print_observe,
                                 print_summary)
from conveyor.core.summary import RunSummary


def cmd_validate(args: argparse.Namespace) -> int:
    spec = load(args.spec)
    print(f"spec OK: {spec.name} ({spec.task}), hash {spec.spec_hash}")
    print(f"  source:    {spec.source_path}")
    print(f"  workspace: {spec.workspace_path(args.workspace)}")
    print(f"  gates:     {'; '.join(spec.gates.rules)}; champion: {', '.join(spec.gates.champion.metrics)} "
          f"(tolerance {spec.gates.champion.tolerance:g})")
    if args.show:
        print(spec.resolved_yaml())
    return 0


def run_cycle(spec_path: str, workspace: str | None, trigger: str = "manual", reason: str | None = None) -> RunSummary:
    spec = load(spec_path)
    ws = spec.workspace_path(workspace)
    prepare_env(ws)
    start_api()
    from conveyor.orchestration.flows.cycle import continuous_training

    return RunSummary.model_validate(continuous_training(spec_path=str(Path(spec_path).resolve()), workspace=str(ws),
                                                         trigger=trigger, reason=reason))


def cmd_run(args: argparse.Namespace) -> int:
    summary = run_cycle(args.spec, args.workspace, args.trigger, args.reason)
    if args.json:  # the one JSON form of the run summary, as summary.json holds it
        print(json.dumps(summary.to_json(), indent=2, default=str))
    else:
        print_summary(summary)
    return 0


def run_monitor(spec_path: str, workspace: str | None, start: str = "none", now: str | None = None) -> dict:
    spec = load(spec_path)
    ws = spec.workspace_path(workspace)
    prepare_env(ws)
    start_api()
    from conveyor.orchestration.flows.monitor import monitor_pipeline

    return monitor_pipeline(spec_path=str(Path(spec_path).resolve()), workspace=str(ws), start=start, now=now)


def cmd_monitor(args: argparse.Namespace) -> int:
    rep = run_monitor(args.spec, args.workspace, "inline" if args.trigger else "none", args.now)
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print_monitor(rep)
    return 0


def cmd_observe(args: argparse.Namespace) -> int:
    from datetime import datetime

    from conveyor.core.workspace import Workspace
    from conveyor.monitoring import monitor

    spec = load(args.spec)
    ws = Workspace(spec.workspace_path(args.workspace))
    at = datetime.fromisoformat(args.at) if args.at else None
    res = monitor.observe_predictions(spec, ws, args.predictions, at=at)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
    else:
        print_observe(res)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from conveyor.reporting.report import find_run, render_report

    workspace = None
    if args.spec:
        workspace = load(args.spec).workspace_path(args.workspace)
    elif args.workspace:
        workspace = Path(args.workspace)
    run_dir = find_run(args.run, workspace)
    res = render_report(run_dir, out_dir=args.out, workspace=workspace)
    print(f"rendered the gate report of {run_dir.name} in {res.seconds:.1f} s", file=sys.stderr)
    print(res.html_path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from conveyor.core.workspace import Workspace
    from conveyor.demo.bundled import DEFAULT_EXAMPLE, bundled_example, example_writer
    from conveyor.demo.reviewer import answer_with_truth, pending_review

    args.example = args.example or DEFAULT_EXAMPLE
    write_batch = example_writer(args.example)
    root = Path(args.dir).resolve()
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / f"{args.example}.yaml"
    if not spec_path.exists():
        shutil.copyfile(bundled_example(args.example), spec_path)
    spec = load(str(spec_path))
    summaries = []
    for batch in (1, 2):
        print(f"== demo cycle {batch}: writing batch {batch} of the {args.example} demo data to {spec.source_path}",
              file=sys.stderr)
        write_batch(spec, batch)
        if batch > 1 and (spec.triggers.drift or spec.triggers.performance):
            print(f"== the monitor looks at batch {batch} before the cycle runs", file=sys.stderr)
            report = run_monitor(str(spec_path), args.workspace)
            if not args.json:
                print_monitor(report)
        summaries.append(run_cycle(str(spec_path), args.workspace, trigger=f"demo-batch-{batch}"))
        if not args.json:
            print_summary(summaries[-1])
    # The demo plays the reviewer: the last cycle's review queue labelled with the true labels and
    # imported, which makes the label version the next cycle trains on.
    pending = pending_review(spec, summaries[-1])
    if pending is not None:
        print(f"== a reviewer works through the review queue ({pending.count} images; the demo answers with the "
              f"true digits)", file=sys.stderr)
        reviewed = spec_path.parent / "reviewed-queue.csv"
        res = answer_with_truth(spec, Workspace(spec.workspace_path(args.workspace)), pending, reviewed)
        if not args.json:
            print_demo_review(reviewed, res, spec_path)
    if args.json:
        out = [s.to_json() for s in summaries]
        if pending is not None:
            out[-1]["review_import"] = res.to_dict()
        print(json.dumps(out, indent=2, default=str))
    else:
        print_demo_finished(spec_path, spec.workspace_path(args.workspace))
    return 0


def cmd_deployments(args: argparse.Namespace) -> int:
    from conveyor.orchestration.deployments import render_prefect_yaml, write_atomic

    root = Path(args.write).resolve().parent if args.write else Path.cwd()
    text = render_prefect_yaml(args.spec, root, work_pool=args.work_pool)
    if not args.write:
        sys.stdout.write(text)
        return 0
    write_atomic(args.write, text)
    print(f"wrote {args.write}; deploy with: prefect deploy --all"
          + ("" if Path(args.write).name == "prefect.yaml" else f" --prefect-file {args.write}"), file=sys.stderr)
    return 0
