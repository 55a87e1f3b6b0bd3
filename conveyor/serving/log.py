"""The service's append-only tables: the prediction log and the quarantine of rejected requests.

Rows are buffered in memory and written by a background thread as Parquet segments, never by
rewriting a file: when ``max_rows`` rows wait, when the oldest has waited ``max_age_s``, and at
``close`` (a clean shutdown loses no row). A write that fails keeps its rows for the next try.

* The prediction log (``LOG_SCHEMA``): ``monitoring/<name>/predictions/<YYYY-MM-DD>/<segment>.parquet``,
  the columns of ``conveyor.monitoring.feedback.PREDICTION_LOG_SCHEMA`` plus the service's. Read it with
  ``conveyor.monitoring.feedback.read_prediction_log``. Each segment is also profiled into the monitor's
  ``predictions`` stream (answered rows with status ok) and ``images`` stream (answered rows).
* Rejected requests (``QUARANTINE_SCHEMA``): ``monitoring/<name>/quarantine/requests-<YYYY-MM-DD>-<segment>.parquet``;
  read them with :func:`read_quarantine`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import polars as pl

from conveyor.monitoring import monitor
from conveyor.monitoring import profiles
from conveyor.monitoring.feedback import PREDICTION_LOG_SCHEMA
from conveyor.core.io import write_parquet_atomic
from conveyor.core.workspace import Workspace

logger = logging.getLogger("conveyor.serving.log")

IMAGE_STATS = ("brightness", "contrast", "saturation", "hue", "sharpness")

LOG_SCHEMA: dict[str, pl.DataType] = {
    **PREDICTION_LOG_SCHEMA,
    "model_version": pl.Int64(), "role": pl.String(), "latency_ms": pl.Float64(), "status": pl.String(),
    "error": pl.String(), "request_key": pl.String(),
    **{s: pl.Float64() for s in IMAGE_STATS}, "width": pl.Int64(), "height": pl.Int64(),
    "capture": pl.String(),  # the kept image, relative to monitoring/<name>/captures (None: not kept)
}
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(), "timestamp": pl.Datetime("us", "UTC"), "reason": pl.String(),
    "detail": pl.String(), "size": pl.Int64(), "content_type": pl.String(), "camera": pl.String(),
}


def quarantine_dir(ws: Workspace, name: str) -> Path:
    return monitor.monitoring_dir(ws, name) / "quarantine"


def read_quarantine(ws: Workspace, name: str) -> pl.DataFrame:
    """Every rejected request so far (all ``requests-*.parquet`` segments)."""
    files = sorted(quarantine_dir(ws, name).glob("requests-*.parquet"))
    if not files:
        return pl.DataFrame(schema=QUARANTINE_SCHEMA)
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


def _segment_name() -> str:
    return f"{datetime.now(timezone.utc):%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


class SegmentBuffer:
    """Rows kept in memory per day and written as one segment per day by a background thread: when
    ``max_rows`` rows wait, when the oldest waited ``max_age_s``, and at :meth:`close`. A failed
    write keeps its rows for the next try."""

    MAX_PENDING_FACTOR = 100  # past this many times max_rows waiting (writes keep failing), drop the oldest

    def __init__(self, write: Callable[[str, list[dict]], None], max_rows: int, max_age_s: float, what: str):
        self._write, self.max_rows, self.max_age_s, self.what = write, max(1, int(max_rows)), float(max_age_s), what
        self._rows: dict[str, list[dict]] = {}
        self._n = 0
        self._oldest: float | None = None
        self._retry_at = 0.0
        self._cond = threading.Condition()
        self._flush_lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return self._n

    def add(self, day: str, row: dict) -> None:
        with self._cond:
            self._rows.setdefault(day, []).append(row)
            self._n += 1
            if self._oldest is None:
                self._oldest = time.monotonic()
            if self._n == 1 or self._n >= self.max_rows:
                self._cond.notify()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"conveyor-{self.what}", daemon=True)
            self._thread.start()

    def _due_in(self) -> float | None:
        """Seconds until a flush is due (<= 0: now), None while nothing waits."""
        if self._oldest is None:
            return None
        now = time.monotonic()
        due = now if self._n >= self.max_rows else self._oldest + self.max_age_s
        return max(due, self._retry_at) - now

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    wait = self._due_in()
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(timeout=wait)
                if self._closed:
                    return
            self.flush()

    def flush(self) -> int:
        """Write what waits now; returns the rows written."""
        with self._flush_lock:
            with self._cond:
                batch, self._rows, self._n, self._oldest = self._rows, {}, 0, None
            written = 0
            for day, rows in batch.items():
                try:
                    self._write(day, rows)
                    written += len(rows)
                except Exception:  # noqa: BLE001 - keep the rows, try again later
                    logger.exception("writing %d %s rows failed; kept for the next try", len(rows), self.what)
                    self._put_back(day, rows)
            return written

    def _put_back(self, day: str, rows: list[dict]) -> None:
        with self._cond:
            self._rows[day] = rows + self._rows.get(day, [])
            self._n += len(rows)
            self._oldest = self._oldest or time.monotonic()
            self._retry_at = time.monotonic() + self.max_age_s
            excess = self._n - self.MAX_PENDING_FACTOR * self.max_rows
            if excess > 0:
                self._rows[day] = self._rows[day][excess:]
                self._n -= excess
                logger.error("dropped the %d oldest %s rows: writes keep failing", excess, self.what)

    def close(self) -> None:
        """Stop the thread and write every row that waits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()


class PredictionLog:
    """The prediction log (``LOG_SCHEMA``): one Parquet segment per flush and day, profiled on write."""

    def __init__(self, ws: Workspace, name: str, max_rows: int = 200, max_age_s: float = 5.0):
        self.dir = monitor.prediction_log_dir(ws, name)
        self.store = monitor.profile_store(ws, name)
        self.buffer = SegmentBuffer(self._write, max_rows, max_age_s, "prediction log")

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.add(f"{row['timestamp']:%Y-%m-%d}", row)

    def _write(self, day: str, rows: list[dict]) -> None:
        df = pl.DataFrame(rows, schema=LOG_SCHEMA)
        path = write_parquet_atomic(df, self.dir / day / f"{_segment_name()}.parquet")
        self._profile(df, path)

    def _profile(self, df: pl.DataFrame, source: Path) -> None:
        """The answered rows into the ``predictions`` (successful ones) and ``images`` streams; shadow
        copies are left out of both (their image is the answered one; their model is not serving)."""
        try:
            answered = df.filter(pl.col("role") != "shadow")
            ok = answered.filter(pl.col("status") == "ok")
            at = df["timestamp"].max()
            if ok.height:
                self.store.write_batch("predictions", profiles.prediction_table(ok), at=at, source=str(source))
            if answered.height:
                images = answered.select(*IMAGE_STATS, "width", "height", "camera")
                self.store.write_batch("images", profiles.image_table(images), at=at, source=str(source))
        except Exception:  # noqa: BLE001 - the rows are in the log; profiles are derived from it
            logger.exception("profiling %d logged predictions failed (they are in %s)", df.height, source)


class RequestQuarantine:
    """Rejected requests (``QUARANTINE_SCHEMA``) as ``quarantine/requests-<day>-<segment>.parquet``."""

    def __init__(self, ws: Workspace, name: str, max_rows: int = 200, max_age_s: float = 5.0):
        self.dir = quarantine_dir(ws, name)
        self.buffer = SegmentBuffer(self._write, max_rows, max_age_s, "request quarantine")

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.add(f"{row['timestamp']:%Y-%m-%d}", row)

    def _write(self, day: str, rows: list[dict]) -> None:
        write_parquet_atomic(pl.DataFrame(rows, schema=QUARANTINE_SCHEMA),
                             self.dir / f"requests-{day}-{_segment_name()}.parquet")
