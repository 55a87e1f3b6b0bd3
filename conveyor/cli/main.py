"""The ``conveyor`` command: validate a spec, run a cycle, inspect the registry, roll out, roll back, demo,
webhook, serve."""

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
    # A first start creates and migrates the temporary API's database; on a busy 2-core machine that can take
    # longer than Prefect's 20 s default, and the run would fail before any stage ran.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
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
    from conveyor.core.spec import load_spec

    return load_spec(spec_path)


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def print_summary(s: dict) -> None:
    why = f": {s['reason']}" if s.get("reason") else ""
    print(f"\nrun {s['run_id']} ({s['spec']}, trigger {s['trigger']}{why})")
    if s.get("skipped_because"):
        print(f"  SKIPPED: {s['skipped_because']}")
        return
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
    rv = d.get("review") or {}
    if rv:
        src = ", ".join(f"{k} {v}" for k, v in (d.get("label_sources") or {}).items() if v) or "none"
        pool = ", ".join(f"{k} {v.get('accepted', 0)}/{v.get('received', 0)}" for k, v in rv["pool"].items()
                         if isinstance(v, dict))
        print(f"  labels {d['label_version']}: {src}" + (f"; pool (accepted/received) {pool}" if pool else "")
              + f"; auto-labelled {rv['auto_labeled']}")
        if rv.get("queue"):
            print(f"  review queue: {rv['queued']} images -> {rv['queue']['tasks']} (Label Studio), "
                  f"{rv['queue']['csv']}")
    print(f"  curation kept {d['curated']} (removed: {removed})")
    sp = s["split"]
    print(f"  split by {sp['group_by']}: " + ", ".join(f"{k} {v} images/{sp['groups'][k]} groups" for k, v in sp["counts"].items())
          + (f"; {sp['held_out_machine']} machine labels held out of val/test groups" if sp.get("held_out_machine") else ""))
    m = s["metrics"]
    keys = [k for k in ("f1", "accuracy", "ece", "map50", "miou", "latency_p95_ms", "throughput_ips") if k in m]
    print("  metrics: " + ", ".join(f"{k} {_fmt(m[k])}" for k in keys))
    print(f"  gate: {s['decision'].upper()} - {s['gate_summary']}")
    for r in s["reasons"]:
        print(f"    [{'pass' if r['passed'] else 'FAIL'}] {r['reason']}")
    print(f"  model v{s['model_version']} ({s['model_dir']}); {s['promotion']}")
    tr = (s.get("train") or {}).get("tracking")
    if tr:
        print(f"  wandb run {tr['run_id']} ({tr['mode']}): {tr.get('run_dir') or tr.get('url') or tr['project']}")
    print(f"  run folder: {s['run_dir']}")
    if s.get("report"):
        print(f"  gate report: {s['report']}")


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


def run_cycle(spec_path: str, workspace: str | None, trigger: str = "manual", reason: str | None = None) -> dict:
    spec = _load(spec_path)
    ws = spec.workspace_path(workspace)
    _prepare_env(ws)
    from conveyor.orchestration.flows.cycle import continuous_training

    return continuous_training(spec_path=str(Path(spec_path).resolve()), workspace=str(ws), trigger=trigger,
                               reason=reason)


def cmd_run(args) -> int:
    summary = run_cycle(args.spec, args.workspace, args.trigger, args.reason)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary)
    return 0


def print_monitor(rep: dict) -> None:
    print(f"\nmonitor {rep['pipeline']} at {rep['at']} (champion v{rep['champion_version']})")
    for name, t in rep["triggers"].items():
        mark = "FIRED" if t["fired"] else t["status"]
        print(f"  {name:12} {mark:16} {t['reason']}")
    if rep["fired"]:
        if rep["start_cycle"]:
            started = rep.get("started") or {}
            how = {"inline": f"ran cycle {started.get('run_id')}: {started.get('decision')}",
                   "deployment": f"started flow run {started.get('flow_run_id')}",
                   "event": "the cycle deployment's event trigger starts the run"}.get(started.get("mode"),
                                                                                      "not started (no --trigger)")
            print(f"  => a cycle should start (trigger {rep['trigger']}): {how}")
        else:
            print(f"  => no cycle starts: {rep['suppressed_by']}")
    else:
        print("  => nothing fired")
    ro = rep.get("rollout") or {}
    if ro.get("state"):
        st, res, dec = ro["state"], ro.get("result"), ro.get("decision")
        why = res["message"] if res else (dec["reason"] if dec else st.get("reason"))
        print(f"  rollout {st['rollout_id']} ({st['strategy']}, v{st['challenger']} vs champion v{st['champion']}): "
              f"{st['status']} - {why}")


def run_monitor(spec_path: str, workspace: str | None, start: str = "none", now: str | None = None) -> dict:
    spec = _load(spec_path)
    ws = spec.workspace_path(workspace)
    _prepare_env(ws)
    from conveyor.orchestration.flows.monitor import monitor_pipeline

    return monitor_pipeline(spec_path=str(Path(spec_path).resolve()), workspace=str(ws), start=start, now=now)


def cmd_monitor(args) -> int:
    rep = run_monitor(args.spec, args.workspace, "inline" if args.trigger else "none", args.now)
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print_monitor(rep)
    return 0


def cmd_observe(args) -> int:
    from datetime import datetime

    from conveyor.monitoring import monitor
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    ws = Workspace(spec.workspace_path(args.workspace))
    at = datetime.fromisoformat(args.at) if args.at else None
    res = monitor.observe_predictions(spec, ws, args.predictions, at=at)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
        return 0
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(res.quarantine_reasons.items())) or "none"
    print(f"{res.source}: received {res.received}, accepted {res.accepted}, quarantined {res.quarantined} ({reasons})")
    if res.quarantine_path:
        print(f"  quarantined rows with their reasons: {res.quarantine_path}")
    for b in res.batches:
        print(f"  profiled batch {b['batch_id']} at {b['at']}: {b['rows']} predictions, cameras {sorted(b['cameras'])}")
    return 0


def cmd_registry_list(args) -> int:
    from conveyor.release.gate import DECISION_WORDS
    from conveyor.release.registry import Registry
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    reg = Registry(Workspace(spec.workspace_path(args.workspace)).registry)
    versions = reg.list(spec.name)
    champion = reg.alias(spec.name)
    if args.json:
        reports = reg.reports(spec.name)
        print(json.dumps({"name": spec.name, "champion": champion,
                          "versions": [{**v.to_dict(), "report": reports.get(v.version)} for v in versions],
                          "champion_history": reg.alias_history(spec.name), "rollouts": reg.rollouts(spec.name),
                          "approvals": reg.approvals(spec.name)},
                         indent=2, default=str))
        return 0
    if not versions:
        print(f"{spec.name}: no registered versions yet")
        return 0
    # a version that waited for a reviewer shows the sign-off (pending_approval, approved, rejected)
    signoff = {a["version"]: ("pending_approval" if a["status"] == "pending" else a["status"])
               for a in reg.approvals(spec.name)}
    print(f"{'':2}{'version':>7}  {'created':25} {'gate':16} {'f1':>7} {'ece':>7} {'p95 ms':>7}  dataset")
    for v in versions:
        m = v.metrics
        word = signoff.get(v.version) or DECISION_WORDS.get(v.gate.get('decision'), '?')
        print(f"{'*' if v.is_champion else ' ':2}{'v' + str(v.version):>7}  {v.created_at:25} "
              f"{word:16} {_fmt(m.get('f1')):>7} {_fmt(m.get('ece')):>7} "
              f"{_fmt(m.get('latency_p95_ms'), 3):>7}  {v.lineage.get('dataset_version', '?')}")
    print(f"* champion: v{champion}" if champion else "no champion yet")
    for a in reg.approvals(spec.name):
        if a["status"] == "pending":
            print(f"  v{a['version']} waits for approval (run {a['run_id']}, since {a['requested_at']}): "
                  f"conveyor approve {args.spec} {str(a['run_id'])[:8]} --by NAME")
        else:
            print(f"  v{a['version']} {a['status']} by {a['by']} at {a['decided_at']}"
                  + (f": {a['reason']}" if a["reason"] else ""))
    return 0


def cmd_approve(args, status: str = "approved") -> int:
    """`conveyor approve` / `conveyor reject`: a reviewer's decision on a version waiting for approval."""
    from conveyor.release import approval
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    ws = Workspace(spec.workspace_path(args.workspace))
    _prepare_env(ws.root)
    if status == "approved":
        res = approval.approve(spec, ws, args.run, by=args.by, reason=args.reason, by_version=args.version,
                               spec_path=str(Path(args.spec).resolve()))
    else:
        res = approval.reject(spec, ws, args.run, by=args.by, reason=args.reason, by_version=args.version)
    _emit_local(ws, spec.name, res.events)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
    else:
        print(res.message)
    return 0


def cmd_reject(args) -> int:
    return cmd_approve(args, status="rejected")


def cmd_report(args) -> int:
    from conveyor.reporting.report import find_run, render_report

    workspace = None
    if args.spec:
        workspace = _load(args.spec).workspace_path(args.workspace)
    elif args.workspace:
        workspace = Path(args.workspace)
    run_dir = find_run(args.run, workspace)
    res = render_report(run_dir, out_dir=args.out, workspace=workspace)
    print(f"rendered the gate report of {run_dir.name} in {res.seconds:.1f} s", file=sys.stderr)
    print(res.html_path)
    return 0


def cmd_rollback(args) -> int:
    from conveyor.release.registry import Registry
    from conveyor.release.rollout import RolloutState, rollback, rollout_event
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    ws = Workspace(spec.workspace_path(args.workspace))
    reg = Registry(ws.registry)
    res = rollback(reg, spec.name, args.to, reason=args.reason, workspace=ws)
    if res.rollout is not None:  # a running rollout ended with this manual rollback
        _emit_local(ws, spec.name, [rollout_event("rolled_back", spec.name, RolloutState.from_dict(res.rollout["state"]),
                                                  [args.reason], manual=True)])
    print(res.message)
    return 0


def _emit_local(ws, name: str, event_list: list[dict]) -> None:
    """Events from a command outside a flow: to the Prefect API when one is configured, and to the
    pipeline's event log always."""
    from conveyor.core import events
    from conveyor.monitoring import monitor

    log = monitor.events_log(ws, name)
    for e in event_list:
        if os.environ.get("PREFECT_API_URL"):
            events.emit(e, log)
        else:
            events.append_log(log, e)


def cmd_rollout(args) -> int:
    from conveyor.release.rollout import rollout_event, start_rollout
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    ws = spec.workspace_path(args.workspace)
    if args.watch:
        _prepare_env(ws)
        from conveyor.orchestration.flows.rollout import rollout_flow

        res = rollout_flow(spec_path=str(Path(args.spec).resolve()), version=args.version, workspace=str(ws))
        if args.json:
            print(json.dumps(res, indent=2, default=str))
        else:
            print(f"rollout {res['rollout_id']} ({res['strategy']}, v{res['champion']} vs v{res['challenger']}): "
                  f"{res['status']} - {res['reason']}")
        return 0
    st = start_rollout(spec, Workspace(ws), args.version)
    _emit_local(Workspace(ws), spec.name, [rollout_event("started", spec.name, st, manual=True)])
    if args.json:
        print(json.dumps(st.to_dict(), indent=2))
    else:
        print(f"started {st.strategy} rollout {st.rollout_id}: v{st.challenger} against champion v{st.champion} "
              f"(traffic {st.traffic:g}) until {st.ends_at}")
        print(f"  state file: {Workspace(ws).state(spec.name) / 'rollout.json'}; ends through the "
              f"conveyor-rollout flow, the monitor, or: conveyor rollout {args.spec} --version {args.version} --watch")
    return 0


def cmd_rollout_status(args) -> int:
    from conveyor.release.rollout import check_rollout
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    check = check_rollout(spec, Workspace(spec.workspace_path(args.workspace)), finish=False)
    if args.json:
        print(json.dumps(check.to_dict(), indent=2, default=str))
        return 0
    st = check.state
    if st is None:
        print(f"{spec.name}: no rollout yet (deploy.strategy {spec.deploy.strategy})")
        return 0
    print(f"rollout {st.rollout_id} of {spec.name}: {st.status.upper()} ({st.strategy}, champion v{st.champion}, "
          f"challenger v{st.challenger}, traffic {st.traffic:g})")
    print(f"  started {st.started_at}, ends {st.ends_at}, updated {st.updated_at}")
    if st.reason:
        print(f"  reason: {st.reason}")
    m, d = check.metrics, check.decision
    if m is not None:
        for r in (m.champion, m.challenger):
            print(f"  {r.role:10} v{r.version}: {r.requests} answers, {r.errors} errors (rate {_fmt(r.error_rate)}), "
                  f"p50 {_fmt(r.latency_p50_ms)} ms, p95 {_fmt(r.latency_p95_ms)} ms, "
                  f"mean confidence {_fmt(r.mean_confidence)}")
        if st.strategy == "shadow":
            print(f"  disagreement {_fmt(m.disagreement)} over {m.compared} requests")
        if m.feedback_precision is not None:
            print(f"  challenger feedback precision {_fmt(m.feedback_precision)} ({m.feedback_labelled} labelled)")
        if st.strategy == "blue_green":
            print(f"  service ready: {m.service_ready} (service.json: {m.service})")
    if d is not None:
        print(f"  decision now: {d.action.upper()} - {d.reason}")
        for c in d.checks:
            print(f"    [{c.status}] {c.reason}")
    return 0


def cmd_demo(args) -> int:
    from conveyor.demo.bundled import bundled_example, example_writer

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
        if batch > 1 and (spec.triggers.drift or spec.triggers.performance):
            print(f"== the monitor looks at batch {batch} before the cycle runs", file=sys.stderr)
            report = run_monitor(str(spec_path), args.workspace)
            if not args.json:
                print_monitor(report)
        summaries.append(run_cycle(str(spec_path), args.workspace, trigger=f"demo-batch-{batch}"))
        if not args.json:
            print_summary(summaries[-1])
    reviewed = _demo_review(spec, args.workspace, summaries[-1], spec_path, quiet=args.json)
    if reviewed:
        summaries[-1]["review_import"] = reviewed
    if args.json:
        print(json.dumps(summaries, indent=2, default=str))
    else:
        ws = spec.workspace_path(args.workspace)
        print(f"\ndemo finished. spec: {spec_path}\n  workspace: {ws}\n  registry:  {ws / 'registry'}\n"
              f"  runs:      {ws / 'runs'}\n  try: conveyor registry list {spec_path}")
    return 0


def _demo_review(spec, workspace: str | None, summary: dict, spec_path: Path, quiet: bool) -> dict | None:
    """The demo plays the reviewer: the last cycle's review queue labelled with the true digits and
    imported, which makes the label version the next cycle trains on."""
    from conveyor.labels import stage as review
    from conveyor.demo.bundled import review_as_truth
    from conveyor.core.workspace import Workspace

    queue = (summary.get("dataset") or {}).get("review", {}).get("queue")
    if not spec.labeling.unlabeled or not queue:
        return None
    pool = spec.resolve_path(spec.labeling.unlabeled)
    truth = pool.parent / f"{pool.name}-truth.csv"
    if not truth.is_file():
        return None
    print(f"== a reviewer works through the review queue ({queue['count']} images; the demo answers with the "
          f"true digits)", file=sys.stderr)
    ws = Workspace(spec.workspace_path(workspace))
    reviewed = review_as_truth(queue["csv"], truth, spec_path.parent / "reviewed-queue.csv")
    res = review.import_review(spec, ws, reviewed)
    if not quiet:
        print(f"review import {reviewed}: {res.accepted} of {res.received} accepted, {res.quarantined} quarantined"
              f"{' ' + str(res.quarantine_reasons) if res.quarantined else ''}; label version {res.label_version}"
              + (f" ({res.added} images added, {res.changed} relabelled, "
                 f"{res.confirmed} confirmed since {res.parent_version})" if res.parent_version else ""))
        print(f"  the next cycle trains on it; see: conveyor labels diff {spec_path} previous")
    return res.to_dict()


def cmd_deployments(args) -> int:
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


def cmd_webhook(args) -> int:
    from conveyor.monitoring.webhook import WebhookConfig, serve

    specs = [_load(p) for p in args.spec]
    config = WebhookConfig.from_env(mode=args.mode, rate_per_minute=args.rate_per_minute, burst=args.burst)
    _prepare_env(specs[0].workspace_path(args.workspace))
    serve(specs, host=args.host, port=args.port, config=config)
    return 0


def cmd_webhook_send(args) -> int:
    from conveyor.monitoring.webhook import send

    res = send(args.url, reason=args.reason, timeout=args.timeout)
    print(f"HTTP {res.status_code}")
    print(res.text)
    return 0 if res.is_success else 1


def cmd_serve(args) -> int:
    from conveyor.serving.http import serve
    from conveyor.serving.service import ServiceConfig

    spec = _load(args.spec)
    config = ServiceConfig(threads=args.threads, poll_s=args.poll)
    serve(spec, spec.workspace_path(args.workspace), host=args.host, port=args.port, config=config)
    return 0


def cmd_labels_list(args) -> int:
    from conveyor.labels import versions as labels
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    hist = labels.history(Workspace(spec.workspace_path(args.workspace)), spec.name)
    if args.json:
        print(json.dumps(hist, indent=2))
        return 0
    if not hist:
        print(f"{spec.name}: no label versions yet")
    for e in hist:
        print(f"{e['version']}  {e['created_at']}  {e['rows']} images  parent {e.get('parent') or '-'}")
    return 0


def cmd_labels_diff(args) -> int:
    from conveyor.labels import versions as labels
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    d = labels.diff(Workspace(spec.workspace_path(args.workspace)), spec.name, args.old, args.new)
    if args.json:
        print(json.dumps(d.to_dict(), indent=2))
        return 0
    same = sum(1 for c in d.changed if c["old"] == c["new"])
    print(f"labels {d.old} -> {d.new}: {len(d.changed)} changed, {len(d.added)} added, {len(d.removed)} removed"
          + (f" ({same} of the changed keep their label; only who labelled them changed)" if same else ""))
    for c in d.changed:
        src = f" ({c['old_source']} -> {c['new_source']})" if c["old_source"] != c["new_source"] else ""
        print(f"  ~ {c['id']}: {c['old']} -> {c['new']}{src}")
    for a in d.added:
        print(f"  + {a['id']}: {a['label']}")
    for r in d.removed:
        print(f"  - {r['id']}: {r['label']}")
    return 0


def cmd_review_queue(args) -> int:
    import polars as pl

    from conveyor.labels import versions as labels
    from conveyor.labels import stage as review
    from conveyor.data.ingest import ingest
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    ws = Workspace(spec.workspace_path(args.workspace))
    ing = ingest(spec, ws.datasets, progress=not args.json)
    champion, challenger = review.model_refs(ws.registry, spec.name)
    res = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion, challenger,
                             progress=not args.json)
    labels.publish(ws, spec.name, pl.read_parquet(res.manifest_path))  # what an import builds on
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
        return 0
    print(f"{spec.name}: labels by source {res.by_source}; {res.auto_labeled} auto-labelled "
          f"(threshold {spec.labeling.auto_label_threshold}); champion "
          f"{'v%d' % champion.version if champion else 'none (no pre-annotations, diversity only)'}")
    for kind, info in res.pool.items():
        if isinstance(info, dict):
            print(f"  pool {kind}: {info['accepted']} of {info['received']} images accepted, "
                  f"{info['quarantined']} quarantined {info['quarantine_reasons'] or ''}")
    if res.queue:
        print(f"review queue: {res.queued} images ({res.selection.get('taken', {})})")
        print(f"  Label Studio tasks: {res.queue['tasks']}\n  labelling config:   {res.queue['config']}\n"
              f"  CSV:                {res.queue['csv']}")
    else:
        print("review queue: empty (no images without labels need a person)")
    return 0


def cmd_review_import(args) -> int:
    from conveyor.labels import stage as review
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    res = review.import_review(spec, Workspace(spec.workspace_path(args.workspace)), args.file)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        print(f"{res.file}: {res.received} received, {res.accepted} accepted, {res.quarantined} quarantined"
              + (f" {res.quarantine_reasons}" if res.quarantined else ""))
        if res.quarantined:
            import polars as pl

            q = pl.read_parquet(res.quarantine_path)
            for r in q.head(20).iter_rows(named=True):
                print(f"  ! row {r['row']} task {r['task_id'] or '-'} {r['field']}: {r['reason']}: {r['detail']}")
            if q.height > 20:
                print(f"  ... {q.height - 20} more in {res.quarantine_path}")
        if res.already_imported:
            print(f"already imported (import {res.import_id}); label version {res.label_version} unchanged")
        elif res.label_version and res.label_version != res.parent_version:
            print(f"new label version {res.label_version} (parent {res.parent_version or '-'}): "
                  f"{res.changed} relabelled, {res.confirmed} confirmed, {res.added} added; "
                  f"the next cycle trains on it")
        else:
            print("no new label version (nothing accepted)")
    return 0 if res.accepted or not res.quarantined else 1


def cmd_review_status(args) -> int:
    from conveyor.labels import stage as review
    from conveyor.core.workspace import Workspace

    spec = _load(args.spec)
    st = review.status(Workspace(spec.workspace_path(args.workspace)), spec.name)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    q = st["queue"]
    print(f"{spec.name}: queue " + (f"{q['count']} images, {q['tasks']}" if q else "not built yet"))
    print(f"  {st['reviewed_images']} reviewed images from {len(st['imports'])} import(s); "
          f"{len(st['label_versions'])} label version(s)")
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
    r.add_argument("--reason", help="why this run was started, in words (recorded with the run)")
    ws(r)
    r.set_defaults(func=cmd_run)

    lb = sub.add_parser("labels", help="label versions: list them, or show what changed between two")
    lbsub = lb.add_subparsers(dest="labels_command", required=True)
    ll = lbsub.add_parser("list", help="every label version, oldest first")
    ll.add_argument("spec")
    ll.add_argument("--json", action="store_true")
    ws(ll)
    ll.set_defaults(func=cmd_labels_list)
    ld = lbsub.add_parser("diff", help="labels changed, added and removed between two versions")
    ld.add_argument("spec")
    ld.add_argument("old", help="a label version id (or unique prefix), or previous")
    ld.add_argument("new", nargs="?", default="latest", help="another one (default: latest)")
    ld.add_argument("--json", action="store_true")
    ws(ld)
    ld.set_defaults(func=cmd_labels_diff)

    rv = sub.add_parser("review", help="the human review queue: build it, import a reviewed export, status")
    rvsub = rv.add_subparsers(dest="review_command", required=True)
    rq = rvsub.add_parser("queue", help="ingest, auto-label and write the review queue now (no training)")
    rq.add_argument("spec")
    rq.add_argument("--json", action="store_true")
    ws(rq)
    rq.set_defaults(func=cmd_review_queue)
    ri = rvsub.add_parser("import", help="read a reviewed export (Label Studio JSON or the queue CSV) back")
    ri.add_argument("spec")
    ri.add_argument("file", help="Label Studio JSON export or the edited queue.csv")
    ri.add_argument("--json", action="store_true")
    ws(ri)
    ri.set_defaults(func=cmd_review_import)
    rs = rvsub.add_parser("status", help="the latest queue, imports and label versions")
    rs.add_argument("spec")
    rs.add_argument("--json", action="store_true")
    ws(rs)
    rs.set_defaults(func=cmd_review_status)

    mo = sub.add_parser("monitor", help="evaluate every trigger now and say why each did or did not fire")
    mo.add_argument("spec")
    mo.add_argument("--json", action="store_true", help="print the full report")
    mo.add_argument("--trigger", action="store_true", help="start a cycle here when a trigger fired (and no "
                                                           "cycle runs and the cool-down allows)")
    mo.add_argument("--now", help=argparse.SUPPRESS)  # evaluate as of another time (ISO 8601), for replays
    ws(mo)
    mo.set_defaults(func=cmd_monitor)

    ob = sub.add_parser("observe", help="add a table of production predictions to the prediction log and profiles")
    ob.add_argument("spec")
    ob.add_argument("--predictions", required=True, metavar="TABLE",
                    help="CSV/Parquet/JSONL: confidence, predicted, [timestamp, prediction_id, camera, ...]")
    ob.add_argument("--at", help="when the rows without a timestamp were made (ISO 8601; default: now)")
    ob.add_argument("--json", action="store_true")
    ws(ob)
    ob.set_defaults(func=cmd_observe)

    reg = sub.add_parser("registry", help="inspect the model registry")
    regsub = reg.add_subparsers(dest="registry_command", required=True)
    rl = regsub.add_parser("list", help="list versions with metrics, lineage and the champion")
    rl.add_argument("spec")
    rl.add_argument("--json", action="store_true")
    ws(rl)
    rl.set_defaults(func=cmd_registry_list)

    for verb, helptext in (("approve", "approve a version waiting for a reviewer (gates.require_approval): promote "
                                       "it, or start its rollout"),
                           ("reject", "reject a version waiting for a reviewer; the champion stays")):
        ap = sub.add_parser(verb, help=helptext)
        ap.add_argument("spec")
        ap.add_argument("run", metavar="RUN", help="the cycle's run id or its first 8 characters (with --version: "
                                                   "the version number)")
        ap.add_argument("--version", action="store_true", help="RUN is a version number")
        ap.add_argument("--by", required=True, metavar="NAME", help="who decides (recorded in the registry)")
        ap.add_argument("--reason", required=verb == "reject", metavar="TEXT",
                        help="why (required to reject; recorded in the registry)")
        ap.add_argument("--json", action="store_true")
        ws(ap)
        ap.set_defaults(func=cmd_approve if verb == "approve" else cmd_reject)

    rb = sub.add_parser("rollback", help="move the champion alias back to an earlier version")
    rb.add_argument("spec")
    rb.add_argument("--to", type=int, required=True, metavar="VERSION")
    rb.add_argument("--reason", default="manual rollback")
    ws(rb)
    rb.set_defaults(func=cmd_rollback)

    ro = sub.add_parser("rollout", help="start a rollout of a registered version against the champion "
                                        "(deploy.strategy shadow, canary or blue_green)")
    ro.add_argument("spec")
    ro.add_argument("--version", type=int, required=True, metavar="N", help="the registered version to roll out")
    ro.add_argument("--watch", action="store_true", help="run the rollout flow here until the rollout ends")
    ro.add_argument("--json", action="store_true")
    ws(ro)
    ro.set_defaults(func=cmd_rollout)

    rs = sub.add_parser("rollout-status", help="the rollout's state, live metrics and what its alerts say now")
    rs.add_argument("spec")
    rs.add_argument("--json", action="store_true")
    ws(rs)
    rs.set_defaults(func=cmd_rollout_status)

    d = sub.add_parser("demo", help="run a bundled example: two cycles, a second batch of data arriving between them")
    d.add_argument("--example", default="classification", help="which bundled example (default: classification)")
    d.add_argument("--dir", default=".demo", help="where the demo spec and data go (default: ./.demo)")
    d.add_argument("--fresh", action="store_true", help="delete the demo folder first")
    d.add_argument("--json", action="store_true")
    ws(d)
    d.set_defaults(func=cmd_demo)

    wh = sub.add_parser("webhook", help="serve a signed HTTP webhook that starts pipeline runs "
                                        "(secret from CONVEYOR_WEBHOOK_SECRET)")
    wh.add_argument("spec", nargs="+", help="specs of the pipelines to serve (each with triggers.webhook: true)")
    wh.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    wh.add_argument("--port", type=int, default=8787, help="port (default: 8787)")
    wh.add_argument("--mode", choices=["deployment", "event"], default="deployment",
                    help="start the conveyor-cycle/<name> deployment, or emit a Prefect event (default: deployment)")
    wh.add_argument("--rate-per-minute", type=float, default=6, help="accepted requests per pipeline per minute")
    wh.add_argument("--burst", type=int, default=3, help="requests a pipeline accepts at once before the rate applies")
    ws(wh)
    wh.set_defaults(func=cmd_webhook)

    whs = sub.add_parser("webhook-send", help="send a signed request to a conveyor webhook (secret from "
                                              "CONVEYOR_WEBHOOK_SECRET)")
    whs.add_argument("url", help="e.g. http://127.0.0.1:8787/hooks/digits-classifier")
    whs.add_argument("--reason", help="why the run is wanted (recorded with the run)")
    whs.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    whs.set_defaults(func=cmd_webhook_send)

    sv = sub.add_parser("serve", help="serve the champion (and a running rollout's challenger) over HTTP with "
                                      "onnxruntime")
    sv.add_argument("spec")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    sv.add_argument("--threads", type=int, default=1,
                    help="onnxruntime threads per model call (default: 1; requests run in parallel)")
    sv.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                    help="how often to check the champion alias and rollout.json (default: 1.0)")
    ws(sv)
    sv.set_defaults(func=cmd_serve)

    rp = sub.add_parser("report", help="render the gate report (HTML) of a past run again")
    rp.add_argument("run", help="a run folder, or a run id (or its first 8 characters) looked up with --spec")
    rp.add_argument("--spec", help="the pipeline's spec: run ids are looked up in its workspace's runs/")
    rp.add_argument("--out", metavar="DIR", help="where the notebook and HTML go (default: RUN/report)")
    ws(rp)
    rp.set_defaults(func=cmd_report)

    dp = sub.add_parser("deployments", help="generate the prefect.yaml deployments of one or more specs "
                                             "(schedules, event triggers, monitors)")
    dp.add_argument("spec", nargs="+")
    dp.add_argument("--work-pool", default="conveyor", metavar="NAME", help="work pool to deploy to (default: conveyor)")
    dp.add_argument("--write", metavar="PATH", help="write the YAML to PATH (atomically) instead of printing it; "
                                                    "spec paths are written relative to PATH's folder")
    dp.set_defaults(func=cmd_deployments)
    return p


def main(argv: list[str] | None = None) -> int:
    from conveyor.core.spec import SpecError

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
