"""Verbs of the release side: registry list, approve, reject, rollback, rollout start, rollout status."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from conveyor.cli.common import emit_local, load, login_name, prepare_env, start_api
from conveyor.cli.render import (print_registry, print_reproduction, print_rollout_finished, print_rollout_started,
                                 print_rollout_status)


def cmd_registry_list(args: argparse.Namespace) -> int:
    from conveyor.core.workspace import Workspace
    from conveyor.release.gate import DECISION_WORDS
    from conveyor.release.registry import Registry

    spec = load(args.spec)
    reg = Registry(Workspace(spec.workspace_path(args.workspace)).registry)
    versions = reg.list(spec.name)
    champion = reg.alias(spec.name)
    if args.json:
        reports = reg.reports(spec.name)
        print(json.dumps({"name": spec.name, "champion": champion,
                          "versions": [{**v.to_dict(), "report": reports.get(v.version),
                                        "rolled_back": reg.withdrawal(spec.name, v.version)} for v in versions],
                          "champion_history": reg.alias_history(spec.name), "rollouts": reg.rollouts(spec.name),
                          "approvals": reg.approvals(spec.name), "withdrawals": reg.withdrawals(spec.name)},
                         indent=2, default=str))
        return 0
    print_registry(args.spec, spec.name, versions, champion, reg.approvals(spec.name) if versions else [],
                   DECISION_WORDS)
    return 0


def cmd_approve(args: argparse.Namespace, status: str = "approved") -> int:
    """`conveyor approve` / `conveyor reject`: a reviewer's decision on a version waiting for approval."""
    from conveyor.core.workspace import Workspace
    from conveyor.release import approval

    spec = load(args.spec)
    ws = Workspace(spec.workspace_path(args.workspace))
    prepare_env(ws.root)
    if status == "approved":
        res = approval.approve(spec, ws, args.run, by=args.by, reason=args.reason, by_version=args.version,
                               spec_path=str(Path(args.spec).resolve()))
    else:
        res = approval.reject(spec, ws, args.run, by=args.by, reason=args.reason, by_version=args.version)
    emit_local(ws, spec.name, res.events)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
    else:
        print(res.message)
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    return cmd_approve(args, status="rejected")


def cmd_rollback(args: argparse.Namespace) -> int:
    from conveyor.core.workspace import Workspace
    from conveyor.release.registry import Registry
    from conveyor.release.rollout import RolloutState, rollback, rollout_event

    spec = load(args.spec)
    ws = Workspace(spec.workspace_path(args.workspace))
    reg = Registry(ws.registry)
    res = rollback(reg, spec.name, args.to, reason=args.reason, workspace=ws, by=args.by or login_name())
    if res.rollout is not None:  # a running rollout ended with this manual rollback
        emit_local(ws, spec.name, [rollout_event("rolled_back", spec.name, RolloutState.from_dict(res.rollout["state"]),
                                                 [args.reason], manual=True)])
    print(res.message)
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    """`conveyor rollout start`: start a rollout, or (--watch) run the rollout flow here until it ends."""
    from conveyor.core.workspace import Workspace
    from conveyor.release.rollout import rollout_event, start_rollout

    spec = load(args.spec)
    ws = spec.workspace_path(args.workspace)
    if args.watch:
        prepare_env(ws)
        start_api()
        from conveyor.orchestration.flows.rollout import rollout_flow

        res = rollout_flow(spec_path=str(Path(args.spec).resolve()), version=args.version, workspace=str(ws))
        if args.json:
            print(json.dumps(res, indent=2, default=str))
        else:
            print_rollout_finished(res)
        return 0
    if args.force and not (args.reason or "").strip():
        raise ValueError("--force needs --reason: why a rolled-back version goes out again is recorded")
    force = {"force_by": args.by or login_name(), "force_reason": args.reason} if args.force else {}
    st = start_rollout(spec, Workspace(ws), args.version, **force)
    emit_local(Workspace(ws), spec.name, [rollout_event("started", spec.name, st, manual=True)])
    if args.json:
        print(json.dumps(st.to_dict(), indent=2))
    else:
        print_rollout_started(st, Workspace(ws).state(spec.name) / "rollout.json", args.spec, args.version)
    return 0


def cmd_rollout_status(args: argparse.Namespace) -> int:
    """`conveyor rollout status`: the rollout's state, live metrics and what its alerts say now."""
    from conveyor.core.workspace import Workspace
    from conveyor.release.rollout import check_rollout

    spec = load(args.spec)
    check = check_rollout(spec, Workspace(spec.workspace_path(args.workspace)), finish=False)
    if args.json:
        print(json.dumps(check.to_dict(), indent=2, default=str))
    else:
        print_rollout_status(spec.name, spec.deploy.strategy, check)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """`conveyor reproduce`: train a registered version again from its lineage and compare."""
    from conveyor.core.workspace import Workspace
    from conveyor.release.reproduce import reproduce

    spec = load(args.spec)
    ws = Workspace(spec.workspace_path(args.workspace))
    prepare_env(ws.root)
    res = reproduce(ws.registry, spec.name, args.version, workspace=ws.root, out_dir=args.out,
                    num_threads=spec.train.num_threads)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
    else:
        print_reproduction(res)
    return 0 if res.identical else 3
