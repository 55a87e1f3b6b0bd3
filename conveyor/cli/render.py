"""What the commands print for a person: run summaries, monitor reports, registry and label tables.

``--json`` output is written by the commands themselves; everything here is the human-readable form.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.core.summary import RunSummary

if TYPE_CHECKING:
    from conveyor.labels.stage import ImportResult, LabelStageResult
    from conveyor.labels.versions import LabelDiff
    from conveyor.monitoring.monitor import Observed
    from conveyor.release.registry import ModelVersion
    from conveyor.release.reproduce import Reproduction
    from conveyor.release.rollout import RolloutCheck, RolloutState


def fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def print_summary(s: RunSummary) -> None:
    why = f": {s.reason}" if s.reason else ""
    print(f"\nrun {s.run_id} ({s.spec}, trigger {s.trigger}{why})")
    if s.skipped_because:
        print(f"  SKIPPED: {s.skipped_because}")
        return
    d = s.dataset
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(d.quarantine_reasons.items())) or "none"
    removed = ", ".join(f"{k} {v}" for k, v in sorted(d.removed_reasons.items())) or "none"
    print(f"  dataset {s.dataset_version}: received {d.received}, accepted {d.accepted}, "
          f"quarantined {d.quarantined} ({reasons})")
    a = d.annotations or {}
    if a:  # detection sources: box accounting
        box_reasons = ", ".join(f"{k} {v}" for k, v in sorted(a["box_quarantine_reasons"].items())) or "none"
        print(f"  boxes: received {a['boxes_received']}, accepted {a['boxes_accepted']}, "
              f"quarantined {a['boxes_quarantined']} ({box_reasons}); {a['negative_images']} images without boxes")
    rv = d.review
    if rv is not None:
        src = ", ".join(f"{k} {v}" for k, v in (d.label_sources or {}).items() if v) or "none"
        pool = ", ".join(f"{k} {v.get('accepted', 0)}/{v.get('received', 0)}" for k, v in rv.pool.items()
                         if isinstance(v, dict))
        print(f"  labels {d.label_version}: {src}" + (f"; pool (accepted/received) {pool}" if pool else "")
              + f"; auto-labelled {rv.auto_labeled}")
        if rv.queue:
            print(f"  review queue: {rv.queued} images -> {rv.queue['tasks']} (Label Studio), {rv.queue['csv']}")
    print(f"  curation kept {d.curated} (removed: {removed})")
    sp = s.split
    print(f"  split by {sp.group_by}: " + ", ".join(f"{k} {v} images/{sp.groups[k]} groups" for k, v in sp.counts.items())
          + (f"; {sp.held_out_machine} machine labels held out of val/test groups" if sp.held_out_machine else ""))
    m = s.metrics
    keys = [k for k in ("f1", "accuracy", "ece", "map50", "miou", "latency_p95_ms", "throughput_ips") if k in m]
    print("  metrics: " + ", ".join(f"{k} {fmt(m[k])}" for k in keys))
    print(f"  gate: {s.decision.upper()} - {s.gate_summary}")
    for r in s.reasons:
        print(f"    [{'pass' if r.passed else 'FAIL'}] {r.reason}")
    print(f"  model v{s.model_version} ({s.model_dir}); {s.promotion}")
    tr = s.train.tracking if s.train else None
    if tr:
        print(f"  wandb run {tr['run_id']} ({tr['mode']}): {tr.get('run_dir') or tr.get('url') or tr['project']}")
    print(f"  run folder: {s.run_dir}")
    if s.report:
        print(f"  gate report: {s.report}")


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


def print_observe(res: Observed) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(res.quarantine_reasons.items())) or "none"
    print(f"{res.source}: received {res.received}, accepted {res.accepted}, quarantined {res.quarantined} ({reasons})")
    if res.quarantine_path:
        print(f"  quarantined rows with their reasons: {res.quarantine_path}")
    for b in res.batches:
        print(f"  profiled batch {b['batch_id']} at {b['at']}: {b['rows']} predictions, cameras {sorted(b['cameras'])}")


def print_registry(spec_arg: str, name: str, versions: list[ModelVersion], champion: int | None,
                   approvals: list[dict], decision_words: dict[str, str]) -> None:
    """The registry table; ``spec_arg`` is the spec path as the user typed it (for the approve hint)."""
    if not versions:
        print(f"{name}: no registered versions yet")
        return
    # a version that waited for a reviewer shows the sign-off (pending_approval, approved, rejected)
    signoff = {a["version"]: ("pending_approval" if a["status"] == "pending" else a["status"]) for a in approvals}
    print(f"{'':2}{'version':>7}  {'created':25} {'gate':16} {'f1':>7} {'ece':>7} {'p95 ms':>7}  dataset")
    for v in versions:
        m = v.metrics
        word = signoff.get(v.version) or decision_words.get(v.gate.get('decision'), '?')
        print(f"{'*' if v.is_champion else ' ':2}{'v' + str(v.version):>7}  {v.created_at:25} "
              f"{word:16} {fmt(m.get('f1')):>7} {fmt(m.get('ece')):>7} "
              f"{fmt(m.get('latency_p95_ms'), 3):>7}  {v.lineage.get('dataset_version', '?')}")
    print(f"* champion: v{champion}" if champion else "no champion yet")
    for a in approvals:
        if a["status"] == "pending":
            print(f"  v{a['version']} waits for approval (run {a['run_id']}, since {a['requested_at']}): "
                  f"conveyor approve {spec_arg} {str(a['run_id'])[:8]} --by NAME")
        else:
            print(f"  v{a['version']} {a['status']} by {a['by']} at {a['decided_at']}"
                  + (f": {a['reason']}" if a["reason"] else ""))


def print_rollout_finished(res: dict) -> None:
    print(f"rollout {res['rollout_id']} ({res['strategy']}, v{res['champion']} vs v{res['challenger']}): "
          f"{res['status']} - {res['reason']}")


def print_rollout_started(st: RolloutState, state_file: Path, spec_arg: str, version: int) -> None:
    print(f"started {st.strategy} rollout {st.rollout_id}: v{st.challenger} against champion v{st.champion} "
          f"(traffic {st.traffic:g}) until {st.ends_at}")
    print(f"  state file: {state_file}; ends through the conveyor-rollout flow, the monitor, or: "
          f"conveyor rollout start {spec_arg} --version {version} --watch")


def print_rollout_status(name: str, strategy: str, check: RolloutCheck) -> None:
    st = check.state
    if st is None:
        print(f"{name}: no rollout yet (deploy.strategy {strategy})")
        return
    print(f"rollout {st.rollout_id} of {name}: {st.status.upper()} ({st.strategy}, champion v{st.champion}, "
          f"challenger v{st.challenger}, traffic {st.traffic:g})")
    print(f"  started {st.started_at}, ends {st.ends_at}, updated {st.updated_at}")
    if st.reason:
        print(f"  reason: {st.reason}")
    m, d = check.metrics, check.decision
    if m is not None:
        for r in (m.champion, m.challenger):
            print(f"  {r.role:10} v{r.version}: {r.requests} answers, {r.errors} errors (rate {fmt(r.error_rate)}), "
                  f"p50 {fmt(r.latency_p50_ms)} ms, p95 {fmt(r.latency_p95_ms)} ms, "
                  f"mean confidence {fmt(r.mean_confidence)}")
        if st.strategy == "shadow":
            print(f"  disagreement {fmt(m.disagreement)} over {m.compared} requests")
        if m.feedback_precision is not None:
            print(f"  challenger feedback precision {fmt(m.feedback_precision)} ({m.feedback_labelled} labelled)")
        if st.strategy == "blue_green":
            print(f"  service ready: {m.service_ready} (service.json: {m.service})")
    if d is not None:
        print(f"  decision now: {d.action.upper()} - {d.reason}")
        for c in d.checks:
            print(f"    [{c.status}] {c.reason}")


def print_demo_finished(spec_path: Path, workspace: Path) -> None:
    print(f"\ndemo finished. spec: {spec_path}\n  workspace: {workspace}\n  registry:  {workspace / 'registry'}\n"
          f"  runs:      {workspace / 'runs'}\n  try: conveyor registry list {spec_path}")


def print_demo_review(reviewed: Path, res: ImportResult, spec_path: Path) -> None:
    print(f"review import {reviewed}: {res.accepted} of {res.received} accepted, {res.quarantined} quarantined"
          f"{' ' + str(res.quarantine_reasons) if res.quarantined else ''}; label version {res.label_version}"
          + (f" ({res.added} images added, {res.changed} relabelled, "
             f"{res.confirmed} confirmed since {res.parent_version})" if res.parent_version else ""))
    print(f"  the next cycle trains on it; see: conveyor labels diff {spec_path} previous")


def print_label_history(name: str, hist: list[dict]) -> None:
    if not hist:
        print(f"{name}: no label versions yet")
    for e in hist:
        print(f"{e['version']}  {e['created_at']}  {e['rows']} images  parent {e.get('parent') or '-'}")


def print_label_diff(d: LabelDiff) -> None:
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


def print_review_queue(name: str, res: LabelStageResult, auto_label_threshold: float, champion_version: int | None
                       ) -> None:
    print(f"{name}: labels by source {res.by_source}; {res.auto_labeled} auto-labelled "
          f"(threshold {auto_label_threshold}); champion "
          f"{'v%d' % champion_version if champion_version is not None else 'none (no pre-annotations, diversity only)'}")
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


def print_review_import(res: ImportResult) -> None:
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


def print_review_status(name: str, st: dict) -> None:
    q = st["queue"]
    print(f"{name}: queue " + (f"{q['count']} images, {q['tasks']}" if q else "not built yet"))
    print(f"  {st['reviewed_images']} reviewed images from {len(st['imports'])} import(s); "
          f"{len(st['label_versions'])} label version(s)")


def print_reproduction(res: "Reproduction") -> None:
    same = "bit-identical" if res.identical else "DIFFERENT"
    print(f"{res.name} v{res.version} rebuilt from its lineage: weights {same} "
          f"({res.registered_weights_hash[:16]} vs {res.reproduced_weights_hash[:16]})")
    if not res.environment_matches:
        print("  environment differs from training: " + ", ".join(
            f"{k} {v['registered']} -> {v['now']}" for k, v in res.environment_differences.items()))
    for key, m in res.metrics.items():
        print(f"  {key:24} registered {fmt(m.registered)}  reproduced {fmt(m.reproduced)}"
              + ("" if m.equal else f"  (diff {fmt(m.difference)})"))
    print(f"  rebuilt checkpoint: {res.checkpoint_path}")
