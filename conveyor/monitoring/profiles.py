"""whylogs profiles of what a pipeline sees: incoming images and production predictions.

Two streams are profiled:

* ``images``: one row per incoming image, with the statistics ingest already computes while it
  decodes (brightness, contrast, saturation, hue, sharpness, width, height), the camera, the label
  when the image has one, and for detection the boxes per image and their relative size. Nothing
  is decoded again here: whylogs' per-image ``log_image`` is about 100x slower than profiling
  this table.
* ``predictions``: one row per production prediction (``conveyor observe --predictions`` and
  the inference service): confidence, predicted class, and for detection / segmentation the
  predicted objects or foreground share.

Each batch is written once, as one whylogs profile per camera, into
``<workspace>/monitoring/<pipeline>/profiles/<stream>/<YYYY-MM-DD>/<batch id>/`` with a
``batch.json`` that is written last (a batch without it is incomplete and ignored). Rolling
windows are merges of the batches whose time falls in the window.

The baseline is the profile of the champion's training data (``images``) and of its predictions
on the frozen evaluation split (``predictions``), written when a model version is registered.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from conveyor import kinds
from conveyor.core.spec import IMAGE_FEATURES, PREDICTION_FEATURES
from conveyor.core.io import atomic_write_json
from conveyor.core.timeutil import as_utc, utcnow

STREAMS = ("images", "predictions")
UNKNOWN_CAMERA = "unknown"
BASELINE_DIR = "baseline"
BASELINE_INDEX = "index.json"
BATCH_META = "batch.json"
OVERALL = "overall.bin"  # each batch: one profile of all its rows, and one per camera
BATCH_KEYS = "keys.parquet"  # each image batch: the content hashes of its images

_IMAGE_NUMERIC = [f for f, kind in IMAGE_FEATURES.items() if kind == "numeric"]
_PREDICTION_NUMERIC = [f for f, kind in PREDICTION_FEATURES.items() if kind == "numeric"]


def _why():
    os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")
    import whylogs

    return whylogs


# ---- tables -----------------------------------------------------------------------------------
def image_table(manifest: pl.DataFrame, task: str | None = None) -> pl.DataFrame:
    """The ``images`` stream table of a manifest (or curated / split) frame: one row per image.

    The task kind adds its own features (:meth:`~conveyor.kinds.base.TaskKind.profile_columns`,
    e.g. objects per image for detection); ``task`` None asks every registered kind, each of which
    adds features only for frames that carry its annotations."""
    cols: list[pl.Expr] = []
    for name in ("brightness", "contrast", "saturation", "hue", "sharpness"):
        if name in manifest.columns:
            cols.append(pl.col(name).cast(pl.Float64))
    for name in ("width", "height"):
        if name in manifest.columns:
            cols.append(pl.col(name).cast(pl.Float64))
    if "label" in manifest.columns:
        cols.append(pl.col("label").cast(pl.String))
    cols.append(_camera_expr(manifest))
    for name in [task] if task is not None else kinds.available():
        cols.extend(kinds.get(name).profile_columns(manifest))
    return manifest.select(cols)


def _camera_expr(df: pl.DataFrame) -> pl.Expr:
    if "camera" in df.columns:
        return pl.col("camera").cast(pl.String).fill_null(UNKNOWN_CAMERA).alias("camera")
    return pl.lit(UNKNOWN_CAMERA).alias("camera")


def prediction_table(predictions: pl.DataFrame) -> pl.DataFrame:
    """The ``predictions`` stream table: the prediction features present, plus the camera."""
    cols: list[pl.Expr] = [pl.col(c).cast(pl.Float64) for c in _PREDICTION_NUMERIC if c in predictions.columns]
    if "predicted" in predictions.columns:
        cols.append(pl.col("predicted").cast(pl.String))
    cols.append(_camera_expr(predictions))
    return predictions.select(cols)


_SCHEMA = None


def _schema():
    """Only the metrics the drift tests read: the KLL distribution (with its count) for numbers,
    frequent items (exact counts for the few values of class and camera columns) for strings.
    whylogs' default set (counts, types, cardinality, ints, ...) makes each profile about four
    times as slow to read and three times as slow to write."""
    global _SCHEMA
    if _SCHEMA is None:
        from whylogs.core.datatypes import Fractional, Integral, String
        from whylogs.core.metrics import StandardMetric
        from whylogs.core.resolvers import MetricSpec, ResolverSpec
        from whylogs.core.schema import DeclarativeSchema

        num = [MetricSpec(StandardMetric.distribution.value)]
        cat = [MetricSpec(StandardMetric.frequent_items.value)]
        _SCHEMA = DeclarativeSchema([ResolverSpec(column_type=Fractional, metrics=num),
                                     ResolverSpec(column_type=Integral, metrics=num),
                                     ResolverSpec(column_type=String, metrics=cat)])
    return _SCHEMA


def profile_view(table: pl.DataFrame):
    """A whylogs ``DatasetProfileView`` of a table (polars -> pandas, one ``why.log`` call)."""
    why = _why()
    return why.log(pandas=table.to_pandas(), schema=_schema()).view()


def read_view(path: str | Path):
    from whylogs.core import DatasetProfileView

    return DatasetProfileView.deserialize(Path(path).read_bytes())


def write_view(view, path: str | Path) -> None:
    Path(path).write_bytes(view.serialize())


# ---- the store --------------------------------------------------------------------------------
@dataclass
class Batch:
    stream: str
    batch_id: str
    at: str  # ISO 8601 UTC
    rows: int
    source: str
    cameras: dict[str, int] = field(default_factory=dict)  # camera -> rows
    files: dict[str, str] = field(default_factory=dict)  # camera -> profile file name
    keyed: bool = False  # the batch lists its images' content hashes (BATCH_KEYS)
    path: str = ""

    def keys(self) -> frozenset[str]:
        """The content hashes of the batch's images (empty for a batch written without them)."""
        if not self.keyed:
            return frozenset()
        return frozenset(pl.read_parquet(Path(self.path) / BATCH_KEYS, columns=["content_hash"])["content_hash"].to_list())

    @property
    def time(self) -> datetime:
        return datetime.fromisoformat(self.at)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Window:
    """The merged profile of the batches in ``[since, until]`` (overall and per camera)."""

    stream: str
    since: datetime
    until: datetime
    batches: list[Batch]
    view: Any  # DatasetProfileView | None
    rows: int
    cameras: dict[str, Any]  # camera -> merged DatasetProfileView
    camera_rows: dict[str, int]
    # batches left out because they hold (or came before) the images the champion was trained on
    excluded: list[Batch] = field(default_factory=list)


def _slug(camera: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", camera)[:40].strip("._") or "camera"
    return f"{s}-{uuid.uuid5(uuid.NAMESPACE_URL, camera).hex[:8]}"


class ProfileStore:
    """Per-batch whylogs profiles of one pipeline, with rolling-window merges."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _stream_dir(self, stream: str) -> Path:
        if stream not in STREAMS:
            raise ValueError(f"unknown profile stream {stream!r}; known: {STREAMS}")
        return self.root / stream

    def write_batch(self, stream: str, table: pl.DataFrame, *, at: datetime | None = None, source: str = "",
                    batch_id: str | None = None, keys: pl.Series | list[str] | None = None) -> Batch | None:
        """Profile a table (one profile per camera) and publish it as one batch; None when empty.

        ``keys``, the content hash of each row's image, lets a drift window leave out the images a
        champion was trained on (see :meth:`window`)."""
        if table.height == 0:
            return None
        at = as_utc(at or utcnow())
        batch_id = batch_id or f"{at.strftime('%H%M%S')}-{uuid.uuid4().hex[:10]}"
        day = self._stream_dir(stream) / at.strftime("%Y-%m-%d")
        day.mkdir(parents=True, exist_ok=True)
        final = day / batch_id
        if (final / BATCH_META).is_file():
            raise FileExistsError(f"profile batch {final} exists")
        tmp = Path(tempfile.mkdtemp(dir=day, prefix=f".{batch_id}."))
        try:
            cameras: dict[str, int] = {}
            files: dict[str, str] = {}
            write_view(profile_view(table), tmp / OVERALL)
            for (camera,), part in table.group_by(["camera"], maintain_order=True):
                camera = str(camera)
                fname = f"{_slug(camera)}.bin"
                write_view(profile_view(part), tmp / fname)
                cameras[camera] = part.height
                files[camera] = fname
            if keys is not None:
                pl.DataFrame({"content_hash": pl.Series(list(keys), dtype=pl.String)}).write_parquet(tmp / BATCH_KEYS)
            batch = Batch(stream, batch_id, at.isoformat(), table.height, source, cameras, files, keys is not None)
            atomic_write_json(tmp / BATCH_META, batch.to_dict())
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        batch.path = str(final)
        return batch

    def batches(self, stream: str, since: datetime | None = None, until: datetime | None = None) -> list[Batch]:
        """Complete batches with ``since < at <= until``, oldest first (day folders outside are skipped)."""
        sdir = self._stream_dir(stream)
        if not sdir.is_dir():
            return []
        since = as_utc(since) if since else None
        until = as_utc(until) if until else None
        out: list[Batch] = []
        for day in sorted(p for p in sdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                d = datetime.strptime(day.name, "%Y-%m-%d").replace(tzinfo=timezone.utc)
            except ValueError:
                continue
            if since and d + timedelta(days=1) <= since or until and d > until:
                continue
            for bdir in sorted(day.iterdir()):
                meta = bdir / BATCH_META
                if bdir.name.startswith(".") or not meta.is_file():
                    continue
                b = Batch(**{k: v for k, v in json.loads(meta.read_text()).items() if k != "path"}, path=str(bdir))
                t = b.time
                if (since is None or t > since) and (until is None or t <= until):
                    out.append(b)
        return sorted(out, key=lambda b: b.at)

    def window(self, stream: str, since: datetime, until: datetime, cameras: bool = True,
               exclude: frozenset[str] | None = None) -> Window:
        """Merge the batches in the window: overall, and per camera unless ``cameras`` is False
        (then only each batch's overall profile is read, a tenth of the files with ten cameras).

        ``exclude`` is the content hashes of the images the champion was trained on: the window
        then holds only the batches that arrived after the last batch holding any of them, so the
        champion's own training data never dilutes the comparison with its baseline."""
        batches = self.batches(stream, since, until)
        excluded: list[Batch] = []
        if exclude:
            last = max((i for i, b in enumerate(batches) if b.keys() & exclude), default=None)
            if last is not None:
                excluded, batches = batches[: last + 1], batches[last + 1 :]
        cams: dict[str, Any] = {}
        cam_rows: dict[str, int] = {}
        overall = None
        for b in batches:
            if cameras:
                for camera, fname in b.files.items():
                    v = read_view(Path(b.path) / fname)
                    cams[camera] = v if camera not in cams else cams[camera].merge(v)
                    cam_rows[camera] = cam_rows.get(camera, 0) + int(b.cameras.get(camera, 0))
            else:
                v = read_view(Path(b.path) / OVERALL)
                overall = v if overall is None else overall.merge(v)
        if cameras:
            overall = merge_views(cams.values())
        return Window(stream, as_utc(since), as_utc(until), batches, overall, sum(b.rows for b in batches),
                      cams, cam_rows, excluded)


def merge_views(views: Iterable[Any]):
    out = None
    for v in views:
        out = v if out is None else out.merge(v)
    return out


# ---- baseline ---------------------------------------------------------------------------------
@dataclass
class Baseline:
    """A registered version's baseline for one stream: overall and per camera."""

    overall: Any  # DatasetProfileView
    cameras: dict[str, Any]
    rows: int
    camera_rows: dict[str, int]


def write_baseline(out_dir: str | Path, train_rows: pl.DataFrame, predictions: pl.DataFrame | None) -> dict[str, str]:
    """Profiles of the training images and of the model's evaluation predictions, overall and per
    camera (each camera's drift is tested against its own baseline). Returns ``relative name ->
    path`` of the files written under ``out_dir`` (``baseline/...``), ready to register."""
    out_dir = Path(out_dir)
    tables = {"images": image_table(train_rows)}
    if predictions is not None and predictions.height:
        tables["predictions"] = prediction_table(predictions)
    index: dict[str, Any] = {}
    written: dict[str, str] = {}
    for stream, table in tables.items():
        if table.height == 0:
            continue
        sdir = out_dir / BASELINE_DIR / stream
        sdir.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {"overall": f"{stream}/overall.bin", "rows": table.height, "cameras": {},
                                 "camera_rows": {}}
        write_view(profile_view(table), sdir / "overall.bin")
        for (camera,), part in table.group_by(["camera"], maintain_order=True):
            fname = f"{stream}/{_slug(str(camera))}.bin"
            write_view(profile_view(part), out_dir / BASELINE_DIR / fname)
            entry["cameras"][str(camera)] = fname
            entry["camera_rows"][str(camera)] = part.height
        index[stream] = entry
    atomic_write_json(out_dir / BASELINE_DIR / BASELINE_INDEX, index)
    for f in sorted((out_dir / BASELINE_DIR).rglob("*")):
        if f.is_file():
            written[f.relative_to(out_dir).as_posix()] = str(f)
    return written


def read_baseline(version_dir: str | Path, stream: str) -> Baseline | None:
    """The baseline of a registered version for a stream, or None when it has none."""
    root = Path(version_dir) / BASELINE_DIR
    index_path = root / BASELINE_INDEX
    if not index_path.is_file():
        return None
    entry = json.loads(index_path.read_text()).get(stream)
    if not entry:
        return None
    return Baseline(read_view(root / entry["overall"]),
                    {c: read_view(root / f) for c, f in entry["cameras"].items()},
                    int(entry["rows"]), {c: int(n) for c, n in entry["camera_rows"].items()})


# ---- column summaries used by the drift test ----------------------------------------------------
def column_rows(view: Any, column: str) -> int:
    """Values of a column in a profile: non-null numbers for numeric columns, the counted values
    for string columns."""
    col = view.get_columns().get(column) if view is not None else None
    if col is None:
        return 0
    dist = col.get_metric("distribution")
    if dist is not None and not dist.kll.value.is_empty():
        return int(dist.kll.value.get_n())
    return sum(column_counts(view, column).values())


def column_mean(view: Any, column: str) -> float | None:
    col = view.get_columns().get(column)
    dist = col.get_metric("distribution") if col is not None else None
    if dist is None or dist.kll.value.is_empty():
        return None
    m = float(dist.mean.value)
    return None if math.isnan(m) else m


def column_counts(view: Any, column: str) -> dict[str, int]:
    """Count of each value of a categorical column (whylogs frequent items: exact while the column
    has fewer distinct values than the sketch holds, which class and camera columns do)."""
    col = view.get_columns().get(column)
    fi = col.get_metric("frequent_items") if col is not None else None
    if fi is None:
        return {}
    return {str(i.value): int(i.est) for i in fi.to_summary_dict().get("frequent_strings", [])}
