"""The monitor: profile what arrives, evaluate every trigger, and say whether a cycle should start.

``observe_*`` functions add batches to the pipeline's profile store (incoming images from a
manifest, production predictions from a table). ``evaluate_triggers`` evaluates the drift and
performance triggers against the champion's baseline and the feedback table, reports the
schedule and webhook settings, applies the cool-down, and returns one report that says for each
trigger why it did or did not fire. ``report_events`` turns a report into the events to emit.
Nothing here starts a run: the monitor flow and the CLI do that.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from conveyor.monitoring import drift as drift_mod
from conveyor.core import events
from conveyor.monitoring import feedback
from conveyor.monitoring import profiles
from conveyor.core.cycles import CycleGuard
from conveyor.core.spec import Spec, parse_duration_s
from conveyor.core.io import atomic_write_json, write_parquet_atomic
from conveyor.core.timeutil import as_utc, utcnow
from conveyor.core.workspace import Workspace

SEEN_IMAGES = "seen_images.parquet"


# ---- where things live --------------------------------------------------------------------------
def monitoring_dir(ws: Workspace, name: str) -> Path:
    return ws.subdir("monitoring", name)


def profile_store(ws: Workspace, name: str) -> profiles.ProfileStore:
    return profiles.ProfileStore(monitoring_dir(ws, name) / "profiles")


def events_log(ws: Workspace, name: str) -> Path:
    return monitoring_dir(ws, name) / "events.jsonl"


def prediction_log_dir(ws: Workspace, name: str) -> Path:
    return monitoring_dir(ws, name) / "predictions"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---- observing ----------------------------------------------------------------------------------
def observe_manifest(spec: Spec, ws: Workspace, manifest_path: str | Path, *, at: datetime | None = None,
                     source: str = "ingest") -> profiles.Batch | None:
    """Profile the images of a manifest not profiled before (by content hash) as one batch.

    Idempotent: the monitor and the cycle both call it on each ingest, and an image is counted
    once, when it first arrives."""
    mdir = monitoring_dir(ws, spec.name)
    with _locked(mdir / ".observe.lock"):
        seen_path = mdir / SEEN_IMAGES
        seen = pl.read_parquet(seen_path) if seen_path.is_file() else pl.DataFrame(schema={"content_hash": pl.String()})
        manifest = pl.read_parquet(manifest_path)
        new = manifest.filter(~pl.col("content_hash").is_in(seen["content_hash"].implode()))
        new = new.unique("content_hash", keep="first", maintain_order=True)
        if new.height == 0:
            return None
        batch = profile_store(ws, spec.name).write_batch("images", profiles.image_table(new), at=at, source=source,
                                                         keys=new["content_hash"])
        write_parquet_atomic(pl.concat([seen, new.select("content_hash")]), seen_path)
        return batch


@dataclass
class Observed:
    source: str
    received: int
    accepted: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    quarantine_path: str | None
    batches: list[dict[str, Any]]
    log_path: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def observe_predictions(spec: Spec, ws: Workspace, table: str | Path, *, at: datetime | None = None) -> Observed:
    """Check a table of production predictions, append the good rows to the prediction log,
    quarantine the bad ones with their reasons, and profile the good ones (one batch per day)."""
    at = as_utc(at or utcnow())
    checked = feedback.check_predictions(table, spec.data.classes, spec.task, at)
    mdir = monitoring_dir(ws, spec.name)
    stamp = f"{at.strftime('%Y%m%dT%H%M%S')}-{os.urandom(4).hex()}"
    qpath = None
    if checked.quarantined.height:
        qpath = str(write_parquet_atomic(checked.quarantined, mdir / "quarantine" / f"predictions-{stamp}.parquet"))
    log_path = None
    batches: list[dict[str, Any]] = []
    good = checked.accepted
    if good.height:
        log_path = str(write_parquet_atomic(good, prediction_log_dir(ws, spec.name) / f"{at:%Y-%m-%d}" / f"{stamp}.parquet"))
        store = profile_store(ws, spec.name)
        days = good.with_columns(pl.col("timestamp").dt.date().alias("_day"))
        for (_day,), part in days.group_by(["_day"], maintain_order=True):
            b = store.write_batch("predictions", profiles.prediction_table(part.drop("_day")),
                                  at=part["timestamp"].max(), source=str(table))
            if b is not None:
                batches.append(b.to_dict())
    return Observed(str(table), checked.received, good.height, checked.quarantined.height, checked.reasons, qpath,
                    batches, log_path)


# ---- the champion's baseline -----------------------------------------------------------------------
def champion_baselines(ws: Workspace, name: str) -> tuple[int | None, dict[str, Any]]:
    from conveyor.release.registry import Registry

    reg = Registry(ws.registry)
    champ = reg.alias(name)
    if champ is None:
        return None, {}
    v = reg.get(name, champ)
    return champ, {s: profiles.read_baseline(v.artifact_dir, s) for s in profiles.STREAMS}


def champion_images(ws: Workspace, name: str) -> frozenset[str] | None:
    """Content hashes of the images of the dataset the champion was trained on (its registered
    split, all splits); None without a champion or for a version registered without its split."""
    from conveyor.release.registry import Registry

    reg = Registry(ws.registry)
    champ = reg.alias(name)
    if champ is None:
        return None
    split = Path(reg.get(name, champ).artifact_dir) / "split.parquet"
    if not split.is_file():
        return None
    return frozenset(pl.read_parquet(split, columns=["content_hash"])["content_hash"].to_list())


# ---- evaluating the triggers ----------------------------------------------------------------------
@dataclass
class MonitorReport:
    pipeline: str
    at: str
    champion_version: int | None
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {status, fired, reason, ...}
    fired: list[str] = field(default_factory=list)
    start_cycle: bool = False
    trigger: str | None = None  # what a started cycle records as its trigger
    reason: str = ""
    suppressed_by: str | None = None
    drift: drift_mod.DriftReport | None = None
    performance: feedback.PerformanceReport | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drift"] = self.drift.to_dict() if self.drift else None
        d["performance"] = self.performance.to_dict() if self.performance else None
        return d


def evaluate_triggers(spec: Spec, ws: Workspace, now: datetime | None = None) -> MonitorReport:
    now = as_utc(now or utcnow())
    trig = spec.triggers
    champ, baselines = champion_baselines(ws, spec.name)
    rep = MonitorReport(spec.name, now.isoformat(), champ)

    if trig.drift is not None:
        d = drift_mod.evaluate_drift(trig.drift, profile_store(ws, spec.name), baselines, now, champ,
                                     exclude=champion_images(ws, spec.name))
        rep.drift = d
        rep.triggers["drift"] = {"status": d.status, "fired": d.fired, "reason": d.reason}
    else:
        rep.triggers["drift"] = {"status": "off", "fired": False, "reason": "not declared in the spec (triggers.drift)"}

    if trig.performance is not None:
        path = spec.resolve_path(trig.performance.feedback)
        checked = None
        if path.is_file():
            log = feedback.read_prediction_log(prediction_log_dir(ws, spec.name))
            checked = feedback.check_feedback(path, spec.data.classes, spec.task, log)
            if checked.quarantined.height:
                write_parquet_atomic(checked.quarantined, monitoring_dir(ws, spec.name) / "quarantine" / "feedback.parquet")
        p = feedback.evaluate_performance(trig.performance, path, checked, now)
        rep.performance = p
        rep.triggers["performance"] = {"status": p.status, "fired": p.fired, "reason": p.reason}
    else:
        rep.triggers["performance"] = {"status": "off", "fired": False,
                                       "reason": "not declared in the spec (triggers.performance)"}

    if trig.schedule is not None:
        nxt = next_cron(trig.schedule, now)
        rep.triggers["schedule"] = {"status": "scheduled", "fired": False, "cron": trig.schedule.cron,
                                    "timezone": trig.schedule.timezone, "next_run": nxt,
                                    "reason": f"runs on the deployment's schedule ({trig.schedule.cron}, "
                                              f"{trig.schedule.timezone}); next at {nxt}"}
    else:
        rep.triggers["schedule"] = {"status": "off", "fired": False, "reason": "no triggers.schedule in the spec"}
    rep.triggers["webhook"] = {
        "status": "on" if trig.webhook else "off", "fired": False,
        "reason": "signed calls to `conveyor webhook` start runs" if trig.webhook else "triggers.webhook is false"}
    rep.triggers["manual"] = {"status": "on", "fired": False,
                              "reason": "`conveyor run SPEC --reason TEXT` or the Prefect UI's run button"}

    rep.fired = [t for t in ("drift", "performance") if rep.triggers[t]["fired"]]
    if rep.fired:
        rep.trigger = rep.fired[0] if len(rep.fired) == 1 else "+".join(rep.fired)
        rep.reason = "; ".join(rep.triggers[t]["reason"] for t in rep.fired)
        sup = CycleGuard(ws.state(spec.name)).suppression(rep.trigger, parse_duration_s(trig.cooldown), now)
        if sup.blocked:
            rep.suppressed_by = sup.reason
        else:
            rep.start_cycle = True
    return rep


def next_cron(schedule: Any, now: datetime) -> str:
    from zoneinfo import ZoneInfo

    from cronsim import CronSim

    local = now.astimezone(ZoneInfo(schedule.timezone))
    return next(CronSim(schedule.cron, local)).isoformat()


def report_events(rep: MonitorReport) -> list[dict[str, Any]]:
    """One event per evaluated trigger: detected / degraded when a cycle should start,
    suppressed when it fired but may not start, checked otherwise."""
    base = {"champion_version": rep.champion_version, "at": rep.at}

    def event(kind: str, fired_name: str, fired: bool, payload: dict[str, Any]) -> dict[str, Any]:
        name = f"conveyor.{kind}.checked"
        if fired:
            name = f"conveyor.{kind}.{fired_name}" if rep.start_cycle else f"conveyor.{kind}.suppressed"
            if not rep.start_cycle:
                payload["suppressed_by"] = rep.suppressed_by
        return events.make_event(name, rep.pipeline, {**base, **payload})

    out: list[dict[str, Any]] = []
    if rep.drift is not None:
        d = rep.drift
        out.append(event("drift", "detected", d.fired, {
            "status": d.status, "reason": d.reason, "window": d.window,
            "features": [f.to_dict() for f in (d.drifted if d.fired else d.features)]}))
    if rep.performance is not None:
        p = rep.performance
        out.append(event("performance", "degraded", p.fired, {
            "status": p.status, "reason": p.reason, "metric": p.metric, "value": p.value, "below": p.below,
            "samples": p.samples, "per_camera": p.per_camera}))
    return out


def write_report(ws: Workspace, rep: MonitorReport) -> Path:
    mdir = monitoring_dir(ws, rep.pipeline) / "reports"
    stamp = rep.at.replace(":", "").replace("-", "").split(".")[0].replace("+0000", "Z")
    path = atomic_write_json(mdir / f"{stamp}.json", rep.to_dict())
    atomic_write_json(mdir / "latest.json", rep.to_dict())
    return path
