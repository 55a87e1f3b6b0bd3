"""Live metrics of a rollout and the decision they lead to.

The inference service logs one row per answer to the prediction log (``model_version``, ``role``
champion / challenger / shadow, ``latency_ms``, ``status``, ...). ``live_metrics`` summarises the
rows since a rollout started, per role: requests, errors, latency percentiles, mean confidence,
the shadow disagreement (champion and shadow rows joined on ``prediction_id``) and the
challenger's precision on labelled feedback. ``decide`` compares them with the spec's
``deploy.alerts`` and says continue, promote or roll back, with one reason per alert.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from conveyor.monitoring import feedback
from conveyor.core.spec import RolloutAlerts, Spec, parse_duration_s
from conveyor.core.timeutil import as_utc, utcnow
from conveyor.core.workspace import Workspace

if TYPE_CHECKING:
    from conveyor.release.rollout import RolloutState

SERVICE_COLUMNS = {"model_version": pl.Int64(), "role": pl.String(), "latency_ms": pl.Float64(),
                   "status": pl.String(), "error": pl.String(), "request_key": pl.String()}


def service_path(ws: Workspace, name: str):
    return ws.state(name) / "service.json"


def read_service(ws: Workspace, name: str) -> dict[str, Any] | None:
    """The service's own state file, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(service_path(ws, name).read_text())
    except (OSError, ValueError):
        return None


@dataclass
class RoleMetrics:
    role: str  # champion | challenger
    version: int
    requests: int = 0
    errors: int = 0
    error_rate: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    mean_confidence: float | None = None
    first_at: str | None = None
    last_at: str | None = None


@dataclass
class LiveMetrics:
    rollout_id: str
    since: str
    until: str
    champion: RoleMetrics
    challenger: RoleMetrics
    disagreement: float | None = None  # shadow: share of compared requests with a different class
    compared: int = 0  # shadow: requests answered by both (ok) and joined on prediction_id
    feedback_labelled: int = 0  # labelled feedback rows joined with the challenger's answers
    feedback_precision: float | None = None
    feedback_note: str | None = None
    registry_champion: int | None = None  # the champion alias now
    service: dict[str, Any] | None = None  # service.json as read
    service_ready: bool = False  # the service reports the challenger loaded and warmed for this rollout

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _role_metrics(rows: pl.DataFrame, role: str, version: int) -> RoleMetrics:
    m = RoleMetrics(role, version, requests=rows.height)
    if rows.height == 0:
        return m
    m.errors = int((rows["status"] == "error").sum())
    m.error_rate = m.errors / rows.height
    lat = rows["latency_ms"].drop_nulls()
    if lat.len():
        m.latency_p50_ms = float(lat.quantile(0.5, "linear"))
        m.latency_p95_ms = float(lat.quantile(0.95, "linear"))
    conf = rows.filter(pl.col("status") != "error")["confidence"].drop_nulls()
    if conf.len():
        m.mean_confidence = float(conf.mean())
    m.first_at = rows["timestamp"].min().isoformat()
    m.last_at = rows["timestamp"].max().isoformat()
    return m


def read_log(ws: Workspace, name: str) -> pl.DataFrame:
    from conveyor.monitoring.monitor import prediction_log_dir

    return feedback.read_prediction_log(prediction_log_dir(ws, name))


def rollout_rows(log: pl.DataFrame, since: datetime, until: datetime) -> pl.DataFrame:
    """Service rows of the prediction log between ``since`` and ``until`` (rows without a role, such as
    those `conveyor observe` adds, are left out)."""
    for c, t in SERVICE_COLUMNS.items():
        log = log.with_columns(pl.col(c).cast(t) if c in log.columns else pl.lit(None, dtype=t).alias(c))
    if log.schema["timestamp"] != pl.Datetime("us", "UTC"):
        log = log.with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    return log.filter(pl.col("role").is_not_null() & (pl.col("timestamp") >= since) & (pl.col("timestamp") <= until))


def _feedback_precision(spec: Spec, log: pl.DataFrame,
                        challenger_ok: pl.DataFrame) -> tuple[int, float | None, str | None]:
    perf = spec.triggers.performance
    if perf is None:
        return 0, None, "no feedback table (triggers.performance.feedback is not set)"
    path = spec.resolve_path(perf.feedback)
    if not path.is_file():
        return 0, None, f"no feedback yet: {path} does not exist"
    checked = feedback.check_feedback(path, spec.data.classes, spec.task, log)
    labelled = checked.accepted.filter(pl.col("prediction_id").is_not_null()).select("prediction_id", "label")
    answers = challenger_ok.filter(pl.col("prediction_id").is_not_null() & pl.col("predicted").is_not_null())
    joined = labelled.join(answers.select("prediction_id", "predicted").unique("prediction_id"), on="prediction_id")
    if joined.height == 0:
        return 0, None, f"no labelled feedback in {path} for the challenger's answers"
    return joined.height, feedback.score(joined["label"].to_list(), joined["predicted"].to_list(), "precision"), None


def live_metrics(ws: Workspace, spec: Spec, state: "RolloutState", now: datetime | None = None) -> LiveMetrics:
    """The champion's and the challenger's live metrics since the rollout started."""
    from conveyor.release.registry import Registry

    now = as_utc(now or utcnow())
    since = as_utc(state.started_at)
    log = read_log(ws, spec.name)  # read once: the live rows and the feedback join both use it
    rows = rollout_rows(log, since, now)
    champ_rows = rows.filter((pl.col("role") == "champion") & (pl.col("model_version") == state.champion))
    chall_rows = rows.filter(pl.col("role").is_in(["challenger", "shadow"]) & (pl.col("model_version") == state.challenger))
    out = LiveMetrics(state.rollout_id, since.isoformat(), now.isoformat(),
                      _role_metrics(champ_rows, "champion", state.champion),
                      _role_metrics(chall_rows, "challenger", state.challenger))
    ok = pl.col("status") == "ok"
    if state.strategy == "shadow":
        a = champ_rows.filter(ok & pl.col("prediction_id").is_not_null()).select("prediction_id", "predicted")
        b = chall_rows.filter(ok & (pl.col("role") == "shadow") & pl.col("prediction_id").is_not_null())
        pairs = a.unique("prediction_id").join(b.select("prediction_id", pl.col("predicted").alias("shadow_predicted"))
                                               .unique("prediction_id"), on="prediction_id")
        out.compared = pairs.height
        if pairs.height:
            out.disagreement = float(pairs.select(pl.col("predicted").ne_missing(pl.col("shadow_predicted")).mean()).item())
    out.feedback_labelled, out.feedback_precision, out.feedback_note = _feedback_precision(
        spec, log, chall_rows.filter(ok))
    out.registry_champion = Registry(ws.registry).alias(spec.name)
    out.service = read_service(ws, spec.name)
    if out.service is not None:
        ready = set()
        for v in out.service.get("ready") or []:
            try:
                ready.add(int(v))
            except (TypeError, ValueError):
                continue
        same_rollout = out.service.get("rollout_id") in (None, state.rollout_id)
        out.service_ready = state.challenger in ready and same_rollout
    return out


# ---- the decision ---------------------------------------------------------------------------------
@dataclass
class AlertCheck:
    alert: str
    value: float | None
    threshold: float | None
    status: str  # ok | breach | pending (not enough answers yet) | not_judged | off
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RolloutDecision:
    action: str  # continue | promote | rollback
    reason: str
    at: str
    due: bool  # the window is over
    checks: list[AlertCheck] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks]

    @property
    def breaches(self) -> list[AlertCheck]:
        return [c for c in self.checks if c.status == "breach"]

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "at": self.at, "due": self.due,
                "checks": [c.to_dict() for c in self.checks]}


def _f(v: float | None, nd: int = 4) -> str:
    if v is None:
        return "-"
    return f"{0.0 if abs(v) < 1e-9 else v:.{nd}g}"  # no -1.1e-16 from a float difference


def _limit(name: str, value: float | None, threshold: float | None, judged: bool, higher_is_bad: bool,
           describe: str, missing: str) -> AlertCheck:
    """One alert: ``describe`` names the value; ``missing`` says why there is none."""
    if threshold is None:
        return AlertCheck(name, value, None, "off", f"{name}: no limit set ({describe} {_f(value)})")
    if value is None:
        return AlertCheck(name, None, threshold, "not_judged", f"{name}: not judged, {missing}")
    bad = value > threshold if higher_is_bad else value < threshold
    op = (">" if bad else "<=") if higher_is_bad else ("<" if bad else ">=")
    text = f"{describe} {_f(value)} {op} {name} {threshold:g}"
    if not judged:
        return AlertCheck(name, value, threshold, "pending", f"{text} (not judged yet: too few challenger answers)")
    return AlertCheck(name, value, threshold, "breach" if bad else "ok", text)


def _alert_checks(state: "RolloutState", metrics: LiveMetrics, alerts: RolloutAlerts) -> tuple[list[AlertCheck], int, bool]:
    """Every alert of the rollout, judged once the challenger has ``min_requests`` answers."""
    champ, chall = metrics.champion, metrics.challenger
    n = chall.requests
    judged = n >= alerts.min_requests
    checks = [AlertCheck("min_requests", n, alerts.min_requests, "ok" if judged else "pending",
                         f"challenger answered {n} requests " + (">=" if judged else "<") +
                         f" min_requests {alerts.min_requests}")]
    checks.append(_limit("max_error_rate", chall.error_rate, alerts.max_error_rate, judged, True,
                         f"challenger error rate ({chall.errors} of {n})", "the challenger has not answered yet"))
    checks.append(_limit("max_latency_p95_ms", chall.latency_p95_ms, alerts.max_latency_p95_ms, judged, True,
                         "challenger p95 latency (ms)", "no challenger latencies logged"))
    if state.strategy == "blue_green" and champ.requests == 0:
        # after the switch the champion serves nothing: there is no live figure to compare with
        for name, limit in (("max_latency_ratio", alerts.max_latency_ratio),
                            ("max_confidence_drop", alerts.max_confidence_drop)):
            checks.append(AlertCheck(name, None, limit, "off",
                                     f"{name}: blue_green, no champion answers in the window to compare with"))
    else:
        ratio = (chall.latency_p95_ms / champ.latency_p95_ms
                 if chall.latency_p95_ms is not None and champ.latency_p95_ms else None)
        checks.append(_limit("max_latency_ratio", ratio, alerts.max_latency_ratio, judged, True,
                             f"p95 latency ratio challenger/champion ({_f(chall.latency_p95_ms)} / "
                             f"{_f(champ.latency_p95_ms)} ms)", "no champion or challenger latencies to compare"))
        drop = (champ.mean_confidence - chall.mean_confidence
                if champ.mean_confidence is not None and chall.mean_confidence is not None else None)
        checks.append(_limit("max_confidence_drop", drop, alerts.max_confidence_drop, judged, True,
                             f"confidence drop (champion {_f(champ.mean_confidence)} - challenger "
                             f"{_f(chall.mean_confidence)})", "no champion or challenger confidences to compare"))
    if state.strategy == "shadow":
        checks.append(_limit("max_disagreement", metrics.disagreement, alerts.max_disagreement, judged, True,
                             f"shadow disagreement ({metrics.compared} requests compared)",
                             "no request answered by both the champion and the shadow"))
    else:
        checks.append(AlertCheck("max_disagreement", None, alerts.max_disagreement, "off",
                                 "max_disagreement: shadow only"))
    if alerts.min_feedback_precision is None:
        checks.append(AlertCheck("min_feedback_precision", metrics.feedback_precision, None, "off",
                                 "min_feedback_precision: not set"))
    elif metrics.feedback_labelled < alerts.min_feedback:
        checks.append(AlertCheck("min_feedback_precision", metrics.feedback_precision, alerts.min_feedback_precision,
                                 "not_judged", f"min_feedback_precision: not judged, {metrics.feedback_labelled} "
                                               f"labelled challenger answers < min_feedback {alerts.min_feedback}"
                                 + (f" ({metrics.feedback_note})" if metrics.feedback_note else "")))
    else:
        checks.append(_limit("min_feedback_precision", metrics.feedback_precision, alerts.min_feedback_precision,
                             True, False, f"challenger feedback precision ({metrics.feedback_labelled} labelled)",
                             "no labelled feedback"))
    return checks, n, judged


def decide(state: "RolloutState", metrics: LiveMetrics, alerts: RolloutAlerts, now: datetime | None = None) -> RolloutDecision:
    """Continue, promote or roll back a running rollout, with one reason per alert.

    A breach rolls back at once; alerts are judged once the challenger has ``min_requests`` answers.
    The rollout is promoted only on evidence: at the end of its window every enabled alert must
    have been judged and hold. Short of evidence (too few answers, nothing to compare with, too
    little feedback), it is extended up to its ``deadline`` (``deploy.max_duration``), then
    rolled back for not enough evidence. blue_green waits for the service to report the challenger
    ready, then judges the same alerts while the challenger serves all traffic for ``bake``; it is
    rolled back when the service is not ready within the window."""
    now = as_utc(now or utcnow())
    if state.status != "running":
        raise ValueError(f"rollout {state.rollout_id} is not running (status {state.status})")
    due = now >= as_utc(state.ends_at)
    deadline = as_utc(state.deadline) if state.deadline else as_utc(state.ends_at)
    at = now.isoformat()

    if metrics.registry_champion is not None and metrics.registry_champion != state.champion:
        check = AlertCheck("champion", metrics.registry_champion, state.champion, "breach",
                           f"the champion alias moved from v{state.champion} to v{metrics.registry_champion} during "
                           f"the rollout: the challenger was not compared with the champion now serving")
        return RolloutDecision("rollback", check.reason, at, due, [check])

    checks: list[AlertCheck] = []
    if state.strategy == "blue_green":
        svc = metrics.service
        if not metrics.service_ready:
            seen = "no service.json" if svc is None else f"service.json lists ready {svc.get('ready')}" + (
                f" for rollout {svc.get('rollout_id')}" if svc.get("rollout_id") not in (None, state.rollout_id) else "")
            if due:
                check = AlertCheck("service_ready", 0, 1, "breach", f"the service did not report v{state.challenger} "
                                                                    f"ready before {state.ends_at} ({seen})")
                return RolloutDecision("rollback", check.reason, at, due, [check])
            check = AlertCheck("service_ready", 0, 1, "pending", f"waiting for the service to report "
                                                                 f"v{state.challenger} ready until {state.ends_at} ({seen})")
            return RolloutDecision("continue", check.reason, at, due, [check])
        checks.append(AlertCheck("service_ready", 1, 1, "ok", f"the service reports v{state.challenger} loaded and "
                                                              f"warmed (service.json updated "
                                                              f"{svc.get('updated_at') if svc else '?'})"))
        first = metrics.challenger.first_at
        bake_s = parse_duration_s(state.bake or "0s")
        baked_at = as_utc(first) + timedelta(seconds=bake_s) if first else None
        baked = baked_at is not None and now >= baked_at
        checks.append(AlertCheck("bake", None if first is None else (now - as_utc(first)).total_seconds(), bake_s,
                                 "ok" if baked else "pending",
                                 f"bake: the challenger has served all traffic since {first}, until {baked_at.isoformat()}"
                                 if first else "bake: the challenger has not answered yet"))
        due = baked  # blue_green is judged once its bake is over

    alert_checks, n, judged = _alert_checks(state, metrics, alerts)
    checks += alert_checks
    breaches = [c for c in checks if c.status == "breach"]
    if breaches:
        return RolloutDecision("rollback", "; ".join(c.reason for c in breaches), at, due, checks)
    missing = [c for c in checks if c.status in ("pending", "not_judged")]
    if due and not missing:
        return RolloutDecision("promote", f"every alert was judged and held over the {state.strategy} "
                                          f"{'bake' if state.strategy == 'blue_green' else 'window'} "
                                          f"({n} challenger answers)", at, due, checks)
    if now >= deadline:
        for c in missing:
            c.status = "breach"
        return RolloutDecision("rollback", f"not enough evidence by {deadline.isoformat()} (deploy.max_duration): "
                               + "; ".join(c.reason for c in missing), at, due, checks)
    if due:
        return RolloutDecision("continue", f"extended until {deadline.isoformat()} at most: not enough evidence "
                                           "yet: " + "; ".join(c.reason for c in missing), at, due, checks)
    pending = "" if judged else f"; {n} of {alerts.min_requests} challenger answers needed to judge"
    return RolloutDecision("continue", f"no alert breached; the window ends at {state.ends_at}{pending}", at, due, checks)
