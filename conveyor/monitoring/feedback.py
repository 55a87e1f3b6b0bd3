"""Production signals: the prediction log, ground-truth feedback, and the performance trigger.

**Prediction log.** Production predictions arrive as tables (CSV, Parquet or JSONL) with one row
per prediction: ``confidence`` (0..1) and, for classification, ``predicted`` (a class); optional
``timestamp`` (default: when the table is observed), ``prediction_id``, ``camera``, and the
detection / segmentation features ``predicted_objects``, ``predicted_object_size``,
``predicted_foreground``, and the multi-label ``predicted_count`` (labels predicted). Rows are checked one by one; a bad row is quarantined with its row
number, field and reason, and ``accepted + quarantined == received`` always holds.

**Feedback.** Ground truth arrives later, for a sample of predictions, in a table the user appends
to (``triggers.performance.feedback``): ``timestamp`` (when the prediction was made), ``label``
(the truth) and ``predicted`` - or ``prediction_id`` instead of ``predicted``, looked up in the
prediction log. For detection or segmentation, each row is one reviewed object or region, and
``background`` stands for "no object". The performance trigger computes precision, recall, F1
(macro over the classes present in the window) or accuracy over the rolling window and fires when
the value is below the target. A window with fewer than ``min_samples`` rows is reported as
``not_enough_data``, never as a pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import polars as pl

from conveyor.data.records import IngestError
from conveyor.data.sources import column_values, parse_timestamp, read_table, text_or_none
from conveyor.core.spec import PerformanceTrigger, parse_duration_s
from conveyor.serving.prediction import BACKGROUND  # noqa: F401 - what non-class predictions name

PREDICTION_NUMERIC = ("confidence", "predicted_objects", "predicted_object_size", "predicted_foreground",
                      "predicted_count")
FEEDBACK_QUARANTINE_SCHEMA = {"source": pl.String(), "row": pl.Int64(), "field": pl.String(), "reason": pl.String(),
                              "detail": pl.String()}
PREDICTION_LOG_SCHEMA = {
    "prediction_id": pl.String(), "timestamp": pl.Datetime("us", "UTC"), "camera": pl.String(),
    "predicted": pl.String(), "confidence": pl.Float64(), "predicted_objects": pl.Float64(),
    "predicted_object_size": pl.Float64(), "predicted_foreground": pl.Float64(), "predicted_count": pl.Float64(),
}
FEEDBACK_SCHEMA = {"timestamp": pl.Datetime("us", "UTC"), "label": pl.String(), "predicted": pl.String(),
                   "camera": pl.String(), "prediction_id": pl.String()}


class FeedbackError(IngestError):
    """A feedback or prediction table that cannot be read at all (missing columns, unreadable)."""


@dataclass
class Checked:
    """Accepted rows, quarantined rows (with reasons), and the count received."""

    accepted: pl.DataFrame
    quarantined: pl.DataFrame
    received: int

    def __post_init__(self) -> None:
        if self.accepted.height + self.quarantined.height != self.received:
            raise AssertionError(f"rows lost: {self.accepted.height} + {self.quarantined.height} != {self.received}")

    @property
    def reasons(self) -> dict[str, int]:
        if self.quarantined.height == 0:
            return {}
        return dict(self.quarantined.group_by("reason").len().sort("reason").iter_rows())


def _quarantine(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=FEEDBACK_QUARANTINE_SCHEMA)


class _Bad(Exception):
    def __init__(self, fld: str, reason: str, detail: str):
        self.field, self.reason, self.detail = fld, reason, detail


def _check_rows(path: Path, n: int, schema: dict, check: Callable[[int, int], dict[str, Any]]) -> Checked:
    """Run ``check(index, row number)`` over every row: its dict is accepted, a ``_Bad`` it
    raises is quarantined with the row number, field and reason."""
    good: dict[str, list] = {c: [] for c in schema}
    bad: list[dict] = []
    for i in range(n):
        try:
            values = check(i, i + 1)
        except _Bad as b:
            bad.append({"source": str(path), "row": i + 1, "field": b.field, "reason": b.reason, "detail": b.detail})
            continue
        for c in schema:
            good[c].append(values.get(c))
    return Checked(pl.DataFrame(good, schema=schema), _quarantine(bad), n)


def _number(v: Any) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    f = float(v)  # ValueError for text
    if not math.isfinite(f):
        raise ValueError(f"{v!r} is not a finite number")
    return f


def _allowed_classes(classes: Sequence[str] | None, task: str) -> set[str] | None:
    """The names a prediction or feedback label of the task kind may carry (None: any)."""
    from conveyor import kinds

    if classes is None:
        return None
    return kinds.get(task).prediction_classes(classes)


def check_predictions(path: str | Path, classes: Sequence[str] | None, task: str, observed_at: datetime) -> Checked:
    """Validate a table of production predictions row by row."""
    path = Path(path)
    df = read_table(path, "prediction table")
    if "confidence" not in df.columns:
        raise FeedbackError(f"prediction table {path} lacks the required column 'confidence'; found {df.columns}")
    from conveyor import kinds

    required = kinds.get(task).prediction_required
    if required and "predicted" not in df.columns:
        raise FeedbackError(f"prediction table {path} lacks the required column 'predicted' (the predicted class)")
    allowed = _allowed_classes(classes, task)
    cols = {c: column_values(df, c) for c in ("prediction_id", "timestamp", "camera", "predicted", *PREDICTION_NUMERIC)}
    seen: dict[str, int] = {}

    def check(i: int, row: int) -> dict[str, Any]:
        pid = text_or_none(cols["prediction_id"][i])
        if pid is not None and pid in seen:
            raise _Bad("prediction_id", "duplicate_row", f"prediction_id {pid!r} is already in row {seen[pid]}")
        try:
            ts = parse_timestamp(cols["timestamp"][i]) or observed_at
        except ValueError as err:
            raise _Bad("timestamp", "bad_timestamp", f"timestamp {cols['timestamp'][i]!r}: {err}") from None
        predicted = text_or_none(cols["predicted"][i])
        if required and predicted is None:
            raise _Bad("predicted", "missing_prediction", "no predicted class")
        if predicted is not None and allowed is not None and predicted not in allowed:
            raise _Bad("predicted", "unknown_class", f"predicted {predicted!r} is not one of {sorted(allowed)}")
        nums: dict[str, float | None] = {}
        for c in PREDICTION_NUMERIC:
            try:
                v = nums[c] = _number(cols[c][i])
            except ValueError:
                raise _Bad(c, "bad_value", f"{c} {cols[c][i]!r} is not a number") from None
            if v is None:
                continue
            if c in ("confidence", "predicted_foreground", "predicted_object_size") and not 0.0 <= v <= 1.0:
                raise _Bad(c, "out_of_range", f"{c} {v!r} is outside 0..1")
            if c in ("predicted_objects", "predicted_count") and (v < 0 or v != int(v)):
                raise _Bad(c, "out_of_range", f"{c} {v!r} is not a whole number >= 0")
        if nums["confidence"] is None:
            raise _Bad("confidence", "missing_value", "no confidence")
        if pid is not None:
            seen[pid] = row
        return {"prediction_id": pid, "timestamp": ts, "camera": text_or_none(cols["camera"][i]),
                "predicted": predicted, **nums}

    return _check_rows(path, df.height, PREDICTION_LOG_SCHEMA, check)


def read_prediction_log(log_dir: str | Path) -> pl.DataFrame:
    """Every accepted prediction so far (the parquet files under ``log_dir``)."""
    files = sorted(Path(log_dir).rglob("*.parquet")) if Path(log_dir).is_dir() else []
    if not files:
        return pl.DataFrame(schema=PREDICTION_LOG_SCHEMA)
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


def answering_predictions(log: pl.DataFrame) -> pl.DataFrame:
    """The rows whose answer a caller received. The inference service also logs shadow copies (role
    ``shadow``, same prediction_id) and failed calls (status ``error``); tables added with
    ``conveyor observe`` have neither column and are kept whole."""
    if "role" in log.columns:
        log = log.filter(pl.col("role").is_null() | (pl.col("role") != "shadow"))
    if "status" in log.columns:
        log = log.filter(pl.col("status").is_null() | (pl.col("status") == "ok"))
    return log


def check_feedback(path: str | Path, classes: Sequence[str] | None, task: str,
                   prediction_log: pl.DataFrame | None = None) -> Checked:
    """Validate the feedback table row by row; ``prediction_id`` rows are joined with the log."""
    path = Path(path)
    df = read_table(path, "feedback table")
    missing = [c for c in ("timestamp", "label") if c not in df.columns]
    if "predicted" not in df.columns and "prediction_id" not in df.columns:
        missing.append("predicted (or prediction_id)")
    if missing:
        raise FeedbackError(f"feedback table {path} lacks the required column(s) {', '.join(missing)}; "
                            f"found {df.columns}")
    by_id: dict[str, str | None] = {}
    if prediction_log is not None and prediction_log.height and "prediction_id" in df.columns:
        for pid, pred in answering_predictions(prediction_log).select("prediction_id", "predicted").iter_rows():
            if pid is not None:
                by_id[pid] = pred
    allowed = _allowed_classes(classes, task)
    cols = {c: column_values(df, c) for c in FEEDBACK_SCHEMA}
    seen: dict[str, int] = {}

    def check(i: int, row: int) -> dict[str, Any]:
        try:
            ts = parse_timestamp(cols["timestamp"][i])
        except ValueError as err:
            raise _Bad("timestamp", "bad_timestamp", f"timestamp {cols['timestamp'][i]!r}: {err}") from None
        if ts is None:
            raise _Bad("timestamp", "bad_timestamp", "no timestamp")
        label = text_or_none(cols["label"][i])
        if label is None:
            raise _Bad("label", "missing_label", "no label (the ground truth)")
        if allowed is not None and label not in allowed:
            raise _Bad("label", "unknown_label", f"label {label!r} is not one of {sorted(allowed)}")
        pid = text_or_none(cols["prediction_id"][i])
        if pid is not None and pid in seen:
            raise _Bad("prediction_id", "duplicate_row",
                       f"feedback for prediction_id {pid!r} is already in row {seen[pid]}")
        predicted = text_or_none(cols["predicted"][i])
        if predicted is None and pid is not None:
            if pid not in by_id:
                raise _Bad("prediction_id", "unknown_prediction", f"prediction_id {pid!r} is not in the prediction log")
            predicted = by_id[pid]
        if predicted is None:
            raise _Bad("predicted", "missing_prediction", "neither predicted nor a known prediction_id")
        if allowed is not None and predicted not in allowed:
            raise _Bad("predicted", "unknown_class", f"predicted {predicted!r} is not one of {sorted(allowed)}")
        if pid is not None:
            seen[pid] = row
        return {"timestamp": ts, "label": label, "predicted": predicted, "camera": text_or_none(cols["camera"][i]),
                "prediction_id": pid}

    return _check_rows(path, df.height, FEEDBACK_SCHEMA, check)


# ---- the performance trigger ---------------------------------------------------------------------
def score(labels: Sequence[str], predicted: Sequence[str], metric: str) -> float:
    """accuracy, or precision / recall / F1 macro-averaged over the classes present in either column."""
    from sklearn.metrics import precision_recall_fscore_support

    if not labels:
        raise ValueError("no samples to score")
    if metric == "accuracy":
        return sum(a == b for a, b in zip(labels, predicted)) / len(labels)
    present = sorted(set(labels) | set(predicted))
    p, r, f, _ = precision_recall_fscore_support(labels, predicted, labels=present, average="macro", zero_division=0)
    return float({"precision": p, "recall": r, "f1": f}[metric])


@dataclass
class PerformanceReport:
    status: str  # fired | ok | not_enough_data | no_feedback
    fired: bool
    metric: str
    below: float
    value: float | None
    samples: int
    min_samples: int
    window: str
    since: str
    until: str
    feedback_path: str
    received: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    per_camera: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_performance(cfg: PerformanceTrigger, feedback_path: Path, checked: Checked | None,
                         now: datetime) -> PerformanceReport:
    """The rolling-window metric from checked feedback rows (``checked`` None: no feedback file yet)."""
    since = now - timedelta(seconds=parse_duration_s(cfg.window))
    rep = PerformanceReport("no_feedback", False, cfg.metric, cfg.below, None, 0, cfg.min_samples, cfg.window,
                            since.isoformat(), now.isoformat(), str(feedback_path))
    if checked is None:
        rep.reason = (f"no feedback yet: {feedback_path} does not exist; append ground truth for a sample of "
                      f"predictions (timestamp, label, predicted) to enable the performance trigger")
        return rep
    rep.received, rep.quarantined, rep.quarantine_reasons = checked.received, checked.quarantined.height, checked.reasons
    win = checked.accepted.filter((pl.col("timestamp") > since) & (pl.col("timestamp") <= now))
    rep.samples = win.height
    q = f" ({rep.quarantined} feedback rows quarantined: {rep.quarantine_reasons})" if rep.quarantined else ""
    for (camera,), part in win.group_by(["camera"], maintain_order=True):
        cam = camera or "unknown"
        rep.per_camera[cam] = {"samples": part.height,
                               "value": score(part["label"].to_list(), part["predicted"].to_list(), cfg.metric)}
    if win.height < cfg.min_samples:
        rep.status = "not_enough_data"
        rep.reason = (f"not enough feedback: {win.height} samples in the last {cfg.window}, fewer than "
                      f"min_samples {cfg.min_samples}; the {cfg.metric} is not judged{q}")
        if win.height:
            rep.value = score(win["label"].to_list(), win["predicted"].to_list(), cfg.metric)
        return rep
    rep.value = score(win["label"].to_list(), win["predicted"].to_list(), cfg.metric)
    if rep.value < cfg.below:
        rep.status, rep.fired = "fired", True
        rep.reason = (f"{cfg.metric} {rep.value:.4f} over the last {cfg.window} ({win.height} samples) is below "
                      f"the target {cfg.below:g}{q}")
    else:
        rep.status = "ok"
        rep.reason = (f"{cfg.metric} {rep.value:.4f} over the last {cfg.window} ({win.height} samples) meets "
                      f"the target {cfg.below:g}{q}")
    return rep
