"""The label and review stage: auto-labels, the human review queue, reviewed labels and feedback.

It runs between ingest and curate and turns the labelled source plus everything else conveyor
knows into the manifest the cycle trains on (``label_source`` says where each label came from):

* ``human``: the labelled source (``data.source``), as ingested;
* ``review``: labels a person gave in the review queue (``conveyor review import``), which also
  correct labels of the source;
* ``feedback``: production feedback (``labeling.feedback``): true labels for served predictions,
  joined by request id with the prediction log and the image the service kept; the wrong answers
  of the last window first, classes balanced as the spec asks (classification; for detection and
  segmentation a feedback row names one object, so those images go to the review queue first);
* ``machine``: images without labels that the champion labels with at least
  ``labeling.auto_label_threshold`` confidence. Machine labels train, never evaluate: the split
  keeps them out of val and test, and a data contract checks it.

The images without labels (the pool, :mod:`conveyor.labels.pool`) are ``labeling.unlabeled`` and,
with ``labeling.production``, the images the inference service kept (``deploy.capture``). Both are
ingested like the source (same decode safety and quarantine, ``accepted + quarantined == received``).
Pool images of excluded cameras or scenes, and near-duplicates of labelled ones, are left out
(:mod:`conveyor.data.curate`'s rules). The champion scores the pool through the one ONNX scorer
(:class:`conveyor.serving.model.LoadedModel`); what a score, a machine label or a pre-annotation
is comes from the task kind. The rest that the champion is not sure enough
about are ranked by :func:`conveyor.labels.hardcases.select_hard_cases` (uncertainty, disagreement with
the latest challenger, new or rare classes, diversity; ``labeling.budget`` and ``labeling.mix``)
and written as the review queue: Label Studio tasks with the champion's predictions as
pre-annotations, its labelling config, and a CSV (:mod:`conveyor.labels.labelstudio`).

``import_review`` reads the reviewed export back (Label Studio JSON export or the CSV), validates
it, quarantines what is wrong with the reason, stores the accepted labels and publishes a new
label version (:mod:`conveyor.labels.versions`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from conveyor import kinds
from conveyor.core.io import atomic_write_bytes, atomic_write_json, stable_hash, write_parquet_atomic
from conveyor.core.spec import Spec, parse_duration_s
from conveyor.core.workspace import Workspace
from conveyor.data.curate import drop_private, near_duplicates_of
from conveyor.data.ingest import annotation_digest, rows_digest
from conveyor.labels import hardcases, labelstudio
from conveyor.labels import versions as labels
from conveyor.labels.pool import ingest_pool, production_log, production_manifest

LABEL_SOURCES = ("human", "review", "feedback", "machine")  # most trusted first
TRUSTED_SOURCES = ("human", "review", "feedback")  # may be evaluated on; machine labels train only
REVIEW_SCHEMA = {"content_hash": pl.String(), "id": pl.String(), "label": pl.String(), "boxes": pl.String(),
                 "labels": pl.String(),
                 "mask_path": pl.String(), "mask_hash": pl.String(), "reviewer": pl.String(),
                 "import_id": pl.String(), "imported_at": pl.String()}


class ReviewError(ValueError):
    """A review file or request that cannot be handled as a whole (the message says why)."""


@dataclass(frozen=True)
class ModelRef:
    """A registry version whose ONNX file scores the pool."""

    version: int
    path: str
    model_hash: str


@dataclass(frozen=True)
class LabelStageResult:
    manifest_path: str
    labeled_version: str
    rows: int
    by_source: dict[str, int]
    pool: dict[str, Any]
    auto_labeled: int
    queued: int
    queue: dict[str, str] | None
    feedback: dict[str, Any]
    reviewed: int
    summary_path: str
    selection: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- where things live --------------------------------------------------------------------------
def review_dir(ws: Workspace, name: str) -> Path:
    return ws.subdir("review", name)


def reviews_dir(ws: Workspace, name: str) -> Path:
    return labels.labels_dir(ws, name, "reviews")


def masks_dir(ws: Workspace, name: str) -> Path:
    return labels.labels_dir(ws, name, "masks")


def feedback_path(spec: Spec) -> Path:
    fb = spec.labeling.feedback.source
    if fb is None:
        fb = spec.triggers.performance.feedback if spec.triggers.performance is not None else "feedback.csv"
    return spec.resolve_path(fb)


# ---- reviewed labels ------------------------------------------------------------------------------
def reviewed_labels(ws: Workspace, name: str) -> pl.DataFrame:
    """Every reviewed label so far, the latest per image (imports in the order they were made)."""
    index = labels.read_log(reviews_dir(ws, name) / "index.jsonl")
    frames = [pl.read_parquet(p) for e in index if (p := reviews_dir(ws, name) / f"{e['import_id']}.parquet").is_file()]
    if not frames:
        return pl.DataFrame(schema=REVIEW_SCHEMA)
    df = pl.concat(frames, how="vertical_relaxed").with_row_index("_order")
    return df.sort("_order").unique("content_hash", keep="last", maintain_order=True).drop("_order")


def write_mask(ws: Workspace, name: str, mask: np.ndarray) -> tuple[str, str]:
    """A label mask as a PNG under ``labels/<name>/masks/`` (content-addressed): (path, sha256)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask.astype(np.uint8)), "L").save(buf, format="PNG", optimize=False)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path = masks_dir(ws, name) / f"{digest}.png"
    if not path.is_file():
        atomic_write_bytes(path, data)
    return str(path), digest


# ---- scoring -------------------------------------------------------------------------------------
def _load(ref: ModelRef | None, threads: int = 1):
    """The registry version's ONNX scorer, None without a version or when it cannot be loaded."""
    if ref is None:
        return None
    from conveyor.serving.model import LoadedModel, ModelLoadError

    try:
        return LoadedModel(ref.version, ref.path, threads)
    except ModelLoadError:
        return None


def _machine_labels(model, paths: list[str], threshold: float, spec: Spec) -> list[Any]:
    """The kind's machine label of each image at ``threshold`` (None: not sure enough, or the file
    cannot be read any more), from the model's raw outputs."""
    out: list[Any] = [None] * len(paths)
    for r in model.run_files(paths, spec.data.max_pixels):
        if r.outputs is not None:
            out[r.index] = model.kind.machine_label(r.outputs, model.classes, threshold, size=model.image_size,
                                                    width=r.width, height=r.height,
                                                    ignore_index=spec.data.ignore_index)
    return out


def model_refs(registry_root: str | Path, name: str) -> tuple[ModelRef | None, ModelRef | None]:
    """(the champion, the latest other registered version) with ONNX files, from the registry."""
    from conveyor.release.registry import Registry

    reg = Registry(registry_root)
    champ = reg.champion(name)

    def ref(v) -> ModelRef | None:
        f = v.file("model.onnx")
        return ModelRef(v.version, str(f), v.model_hash) if f.is_file() else None

    others = [v for v in reg.list(name) if champ is None or v.version != champ.version]
    latest = max(others, key=lambda v: v.version) if others else None
    return (ref(champ) if champ else None), (ref(latest) if latest and champ else None)


# ---- the stage ------------------------------------------------------------------------------------
def label_stage(spec: Spec, ws: Workspace, manifest_path: str | Path, dataset_version: str, classes: list[str],
                champion: ModelRef | None = None, challenger: ModelRef | None = None,
                now: datetime | None = None, progress: bool = False) -> LabelStageResult:
    """Build the training manifest (source + reviewed + feedback + machine labels) and the review queue."""
    now = now or datetime.now(timezone.utc)
    lab = spec.labeling
    name = spec.name
    kind = kinds.get(spec.task)
    manifest = pl.read_parquet(manifest_path)
    if "label_source" not in manifest.columns:
        manifest = manifest.with_columns(pl.lit("human").alias("label_source"))
    known_hashes = set(manifest["content_hash"].to_list())

    # 1. the pool: images without labels, ingested like the source
    pool_info: dict[str, Any] = {}
    pools: list[pl.DataFrame] = []
    if lab.unlabeled:
        src = spec.resolve_path(lab.unlabeled)
        if src.exists():
            df, pool_info["unlabeled"] = ingest_pool(spec, ws, src, "unlabeled")
            pools.append(df)
        else:  # nothing has arrived yet: an empty pool, said so in the summary
            pool_info["unlabeled"] = {"source": str(src), "status": "missing", "received": 0, "accepted": 0,
                                      "quarantined": 0, "quarantine_reasons": {}}
    log = production_log(ws, name) if lab.production or lab.feedback.enabled else pl.DataFrame()
    capture_hash: dict[str, str] = {}
    if lab.production and log.height:
        mpath = production_manifest(ws, name, log)
        if mpath is not None:
            df, pool_info["production"] = ingest_pool(spec, ws, mpath, "production")
            capture_hash = dict(zip(df["rel_path"].to_list(), df["content_hash"].to_list()))
            pools.append(df)
    pool = (pl.concat(pools, how="diagonal_relaxed").unique("content_hash", keep="first", maintain_order=True)
            if pools else manifest.clear())
    in_source = pool.filter(pl.col("content_hash").is_in(list(known_hashes)))
    pool = pool.filter(~pl.col("content_hash").is_in(list(known_hashes)))
    pool_info["already_labeled"] = in_source.height
    # nobody reviews, and nothing trains on, an excluded camera or scene
    pool, pool_info["privacy_excluded"] = drop_private(pool, spec)

    # 2. reviewed labels (they also correct labels of the source)
    reviewed = reviewed_labels(ws, name)
    rev_by_hash = {r["content_hash"]: r for r in reviewed.iter_rows(named=True)}
    manifest = _apply_reviews(kind, manifest, rev_by_hash, classes)
    pool_reviewed = _apply_reviews(kind, pool.filter(pl.col("content_hash").is_in(list(rev_by_hash))), rev_by_hash,
                                   classes)
    pool = pool.filter(~pl.col("content_hash").is_in(list(rev_by_hash)))

    # 3. production feedback
    fb_rows, fb_info, fb_error_hashes = _feedback(spec, ws, log, pool, capture_hash, classes, now)
    pool = pool.filter(~pl.col("content_hash").is_in(fb_rows["content_hash"].to_list() if fb_rows.height else []))

    labeled = pl.concat([manifest, pool_reviewed, fb_rows], how="diagonal_relaxed")

    # 4. near-duplicates of labelled images are neither auto-labelled nor reviewed
    nd = spec.curation.near_duplicates
    if nd.enabled and pool.height and labeled.height:
        near = near_duplicates_of(pool, labeled, nd.max_distance)
        pool_info["near_duplicate_of_labeled"] = len(near)
        if near:
            keep = [i not in near for i in range(pool.height)]
            pool = pool.filter(pl.Series(keep))

    # 5. score the rest with the champion (and the latest challenger), auto-label the sure ones
    machine, scored = _score_pool(spec, ws, pool, champion, challenger, classes, progress)
    pool_info["candidates"] = pool.height

    # 6. the review queue: wrong production answers (detection, segmentation), suspected label
    #    errors of labelled images, then the hard cases among the images nobody labelled
    queue_paths, selection = None, None
    rest = scored.filter(~pl.col("content_hash").is_in(machine["content_hash"].to_list() if machine.height else []))
    suspects = _suspects(spec, ws, manifest, champion, progress) if lab.budget > 0 else manifest.clear()
    pool_info["suspected_label_errors"] = suspects.height
    if lab.budget > 0 and (rest.height or suspects.height):
        first = rest.filter(pl.col("content_hash").is_in(list(fb_error_hashes))).head(lab.budget).with_columns(
            pl.lit("feedback_error").alias("reason"), pl.lit(1.0).alias("score"))
        quota = min(lab.budget - first.height, math.ceil(lab.budget * lab.mix.label_errors))  # a share > 0 is >= 1
        errors = suspects.head(max(0, quota)).with_columns(pl.lit("label_error").alias("reason"),
                                                           pl.col("confidence").alias("score"))
        counts = kind.class_counts(labeled)
        rare = hardcases.rare_classes(counts, classes, lab.rare_share)
        mix = lab.mix.model_dump(exclude={"label_errors"})
        if sum(mix.values()) <= 0:  # label errors only: what they leave goes to uncertainty
            mix = {"uncertainty": 1.0}
        selection = hardcases.select_hard_cases(
            rest.filter(~pl.col("content_hash").is_in(list(fb_error_hashes))),
            budget=max(0, lab.budget - first.height - errors.height), mix=mix, measure=lab.uncertainty, rare=rare,
            max_distance=nd.max_distance, seed=spec.split.seed)
        chosen = pl.concat([first, errors, selection.selected.drop("priority")], how="diagonal_relaxed")
        chosen = chosen.with_columns(pl.int_range(1, pl.len() + 1).alias("priority"))
        if chosen.height:
            queue_paths = _write_queue(spec, ws, chosen, classes, champion, now)

    labeled = pl.concat([labeled, machine], how="diagonal_relaxed")
    labeled = _conform(labeled, manifest)
    version = _labeled_version(labeled, dataset_version)
    out = ws.subdir("labeled", version)
    path = write_parquet_atomic(labeled, out / "manifest.parquet")
    _write_known(ws, name, labeled, scored, in_source, classes, spec.task)
    by_source = {s: int((labeled["label_source"] == s).sum()) for s in LABEL_SOURCES}
    summary = {"labeled_version": version, "dataset_version": dataset_version, "rows": labeled.height,
               "by_source": by_source, "pool": pool_info, "auto_labeled": machine.height,
               "auto_label_threshold": lab.auto_label_threshold, "champion": champion.version if champion else None,
               "challenger": challenger.version if challenger else None,
               "queued": 0 if queue_paths is None else queue_paths["count"], "queue": queue_paths,
               "selection": selection.to_dict() if selection is not None else {}, "feedback": fb_info,
               "reviewed": len(rev_by_hash)}
    spath = atomic_write_json(out / "labels.json", summary)
    return LabelStageResult(str(path), version, labeled.height, by_source, pool_info, machine.height,
                            summary["queued"], queue_paths, fb_info, len(rev_by_hash), str(spath),
                            summary["selection"])


def _suspects(spec: Spec, ws: Workspace, manifest: pl.DataFrame, champion: ModelRef | None,
              progress: bool) -> pl.DataFrame:
    """Source images (classification) whose label the champion contradicts with at least
    ``labeling.suspect_confidence``, surest first, with ``current_label`` and the champion's
    ``predicted`` / ``confidence``. Labels a person reviewed are not second-guessed."""
    lab = spec.labeling
    model = _load(champion, spec.train.num_threads) if kinds.get(spec.task).finds_label_errors \
        and lab.mix.label_errors > 0 else None
    rows = manifest.filter(pl.col("label_source") == "human") if model is not None else manifest.clear()
    if rows.height == 0:
        return rows.with_columns(pl.lit(None, pl.String).alias("current_label"),
                                 pl.lit(None, pl.String).alias("predicted"), pl.lit(None, pl.Float64).alias("confidence"))
    scores = _scores(spec, ws, rows, champion, model, progress).select("content_hash", "predicted", "confidence")
    out = rows.join(scores, on="content_hash", how="inner").filter(
        (pl.col("predicted") != pl.col("label")) & (pl.col("confidence") >= lab.suspect_confidence))
    return out.with_columns(pl.col("label").alias("current_label")).sort(["confidence", "id"],
                                                                         descending=[True, False])


def _apply_reviews(kind: kinds.TaskKind, df: pl.DataFrame, rev: dict[str, dict], classes: list[str]) -> pl.DataFrame:
    """Rows whose image was reviewed take the reviewed label (source ``review``)."""
    if not rev or df.height == 0:
        return df
    hit = df["content_hash"].is_in(list(rev))
    if not hit.any():
        return df
    keep, changed = df.filter(~hit), df.filter(hit)
    r = [rev[h] for h in changed["content_hash"].to_list()]
    cols = [pl.Series("label_source", ["review"] * len(r), dtype=pl.String), *kind.review_columns(r, classes)]
    changed = changed.with_columns(cols)
    return pl.concat([keep, changed], how="diagonal_relaxed")


def select_feedback(rows: pl.DataFrame, max_images: int, balance: str, window: str, now: datetime) -> pl.DataFrame:
    """Feedback rows to train on: the wrong answers of the last ``window`` first (newest first), then
    the rest (newest first); ``balance='equal'`` shares ``max_images`` out evenly over the true
    classes (a class with fewer rows leaves its share to the others). Adds ``error`` and ``priority``."""
    if rows.height == 0 or max_images <= 0:
        return rows.clear().with_columns(pl.lit(False).alias("error"), pl.lit(0, pl.Int64).alias("priority"))
    since = now - timedelta(seconds=parse_duration_s(window))
    rows = rows.with_columns((pl.col("label") != pl.col("predicted")).alias("error"))
    rows = rows.with_columns((pl.col("error") & (pl.col("timestamp") > since)).alias("_first"))
    ordered = rows.sort(["_first", "timestamp", "prediction_id"], descending=[True, True, False], nulls_last=True)
    if balance == "none":
        chosen = ordered.head(max_images)
    else:
        per_class: dict[str, list[int]] = {}
        for i, lab_ in enumerate(ordered["label"].to_list()):
            per_class.setdefault(lab_, []).append(i)
        take: list[int] = []
        queues = [per_class[k] for k in sorted(per_class)]
        pos = 0
        while len(take) < max_images and any(pos < len(q) for q in queues):
            for q in queues:
                if pos < len(q) and len(take) < max_images:
                    take.append(q[pos])
            pos += 1
        take.sort()
        chosen = ordered[take]
    return chosen.drop("_first").with_columns(pl.int_range(1, pl.len() + 1).alias("priority"))


def _feedback(spec: Spec, ws: Workspace, log: pl.DataFrame, pool: pl.DataFrame, capture_hash: dict[str, str],
              classes: list[str], now: datetime) -> tuple[pl.DataFrame, dict[str, Any], set[str]]:
    """Feedback rows joined to the kept images: training rows (classification) and, for detection and
    segmentation, the images of wrong answers for the review queue."""
    from conveyor.monitoring.feedback import FeedbackError, check_feedback

    cfg = spec.labeling.feedback
    path = feedback_path(spec)
    info: dict[str, Any] = {"path": str(path), "enabled": cfg.enabled}
    empty = pool.clear()
    if not cfg.enabled or not path.is_file():
        info["status"] = "disabled" if not cfg.enabled else "no_feedback"
        return empty, info, set()
    try:
        checked = check_feedback(path, classes, spec.task, log if log.height else None)
    except FeedbackError as err:
        info.update(status="unreadable", error=str(err))
        return empty, info, set()
    info.update(status="ok", received=checked.received, quarantined=checked.quarantined.height,
                quarantine_reasons=checked.reasons)
    if checked.quarantined.height:  # each bad row with its row number, field and reason
        info["quarantine_path"] = str(write_parquet_atomic(checked.quarantined,
                                                           review_dir(ws, spec.name) / "feedback_quarantine.parquet"))
    rows = checked.accepted.filter(pl.col("prediction_id").is_not_null())
    info["without_prediction_id"] = checked.accepted.height - rows.height
    cap = dict(zip(log["prediction_id"].to_list(), log["capture"].to_list())) if log.height else {}
    # (without labeling.production no kept image joins the pool, so feedback rows find no image)
    hashes = [capture_hash.get(cap.get(pid) or "") for pid in rows["prediction_id"].to_list()]
    rows = rows.with_columns(pl.Series("content_hash", hashes, dtype=pl.String))
    info["without_image"] = int(rows["content_hash"].is_null().sum())
    rows = rows.filter(pl.col("content_hash").is_not_null() & pl.col("content_hash").is_in(pool["content_hash"].to_list()))
    if not kinds.get(spec.task).feedback_trains:  # a row is one object: send the images of wrong answers to review
        errors = set(rows.filter(pl.col("label") != pl.col("predicted"))["content_hash"].to_list())
        info.update(for_review=len(errors), selected=0)
        return empty, info, errors
    rows = rows.sort("timestamp", descending=True).unique("content_hash", keep="first", maintain_order=True)
    chosen = select_feedback(rows, cfg.max_images, cfg.balance, cfg.window, now)
    info.update(joined=rows.height, selected=chosen.height, errors=int(chosen["error"].sum()) if chosen.height else 0,
                per_class={str(k): int(v) for k, v in chosen["label"].value_counts().sort("label").iter_rows()}
                if chosen.height else {})
    label_of = dict(zip(chosen["content_hash"].to_list(), chosen["label"].to_list()))
    out = pool.filter(pl.col("content_hash").is_in(list(label_of)))
    out = out.with_columns(pl.col("content_hash").replace_strict(label_of, return_dtype=pl.String).alias("label"),
                           pl.lit("feedback").alias("label_source"))
    return out, info, set()


SCORE_SCHEMA = {"content_hash": pl.String(), "predicted": pl.String(), "pred_classes": pl.List(pl.String()),
                "confidence": pl.Float64(), "least_confidence": pl.Float64(), "margin": pl.Float64(),
                "entropy": pl.Float64()}


def _scores(spec: Spec, ws: Workspace, pool: pl.DataFrame, ref: ModelRef, model, progress: bool) -> pl.DataFrame:
    """One model's scores of the pool images (``SCORE_SCHEMA``), kept per model hash under
    ``pool/<name>/scores/`` so that each image is run once per model. An image that cannot be read
    any more is left out."""
    path = ws.root / "pool" / spec.name / "scores" / f"{ref.model_hash}.parquet"
    cached = (pl.read_parquet(path).select(list(SCORE_SCHEMA)) if path.is_file()
              else pl.DataFrame(schema=SCORE_SCHEMA))
    todo = pool.filter(~pl.col("content_hash").is_in(cached["content_hash"].to_list()))
    rows: list[dict[str, Any]] = []
    hashes = todo["content_hash"].to_list()
    it = model.run_files(todo["path"].to_list(), spec.data.max_pixels)
    if progress and hashes:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(hashes), desc=f"score pool (v{ref.version})", unit="img")
    for r in it:
        if r.outputs is None:
            continue
        sc = model.kind.score(r.outputs, model.classes)
        rows.append({"content_hash": hashes[r.index], "predicted": sc.predicted, "pred_classes": list(sc.classes),
                     "confidence": sc.confidence, "least_confidence": sc.least_confidence, "margin": sc.margin,
                     "entropy": sc.entropy})
    if rows:
        cached = pl.concat([cached, pl.DataFrame(rows, schema=SCORE_SCHEMA)])
        write_parquet_atomic(cached, path)
    return cached.filter(pl.col("content_hash").is_in(pool["content_hash"].to_list()))


def _score_pool(spec: Spec, ws: Workspace, pool: pl.DataFrame, champion: ModelRef | None,
                challenger: ModelRef | None, classes: list[str], progress: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(machine-labelled rows, the pool with the champion's scores and the challenger's prediction);
    without a champion nothing is scored."""
    threshold = spec.labeling.auto_label_threshold
    model = _load(champion, spec.train.num_threads) if pool.height else None
    if model is None:
        return pool.clear(), pool
    scores = _scores(spec, ws, pool, champion, model, progress)
    scored = pool.join(scores, on="content_hash", how="left")
    other = _load(challenger, spec.train.num_threads)
    if other is not None:
        theirs = _scores(spec, ws, pool, challenger, other, progress).select(
            "content_hash", pl.col("predicted").alias("challenger_predicted"))
        scored = scored.join(theirs, on="content_hash", how="left")
    else:
        scored = scored.with_columns(pl.lit(None, pl.String).alias("challenger_predicted"))
    if threshold is None:
        return pool.clear(), scored
    sure = scores.filter(pl.col("confidence") >= threshold)
    machine = pool.join(sure, on="content_hash", how="inner", suffix="_scored")
    if machine.height == 0:
        return pool.clear(), scored
    machine = machine.sort("id").with_columns(pl.lit("machine").alias("label_source"))
    # the kind's label at the threshold, from the champion's outputs (a mask ignores the pixels below it)
    values = _machine_labels(model, machine["path"].to_list(), threshold, spec)
    labelled = [v is not None for v in values]
    if not all(labelled):
        machine = machine.filter(pl.Series(labelled))
    records = [model.kind.review_record(v, lambda m: write_mask(ws, spec.name, m)) for v in values if v is not None]
    if machine.height:
        machine = machine.with_columns(model.kind.review_columns(records, classes))
    return machine, scored  # the score columns are dropped with the others the manifest lacks (_conform)


def _conform(df: pl.DataFrame, like: pl.DataFrame) -> pl.DataFrame:
    """The source manifest's columns first (its dtypes), then label_source; rows sorted by id."""
    cols = [c for c in like.columns if c in df.columns]
    for c in ("label_source",):
        if c not in cols:
            cols.append(c)
    df = df.select(cols)
    casts = [pl.col(c).cast(like.schema[c]) for c in cols if c in like.columns and df.schema[c] != like.schema[c]]
    if casts:
        df = df.with_columns(casts)
    return df.sort("id")


def _labeled_version(df: pl.DataFrame, dataset_version: str) -> str:
    h = hashlib.sha256(f"labeled\0{dataset_version}\0".encode())
    cols = [c for c in ("id", "content_hash", "path", "label", "label_source", "camera", "scene", "captured_at",
                        "mask_hash") if c in df.columns]
    rows_digest(h, df.sort("id"), cols)
    h.update((annotation_digest(df) or "").encode())
    return h.hexdigest()[:16]


def _write_known(ws: Workspace, name: str, labeled: pl.DataFrame, pool: pl.DataFrame, in_source: pl.DataFrame,
                 classes: list[str], task: str) -> None:
    """The images a review file may name (labelled, pool), and the class list, for ``import_review``."""
    cols = ["content_hash", "id", "path", "width", "height"]
    frames = [f.select(cols) for f in (labeled, pool, in_source) if f.height and all(c in f.columns for c in cols)]
    known = (pl.concat(frames, how="vertical_relaxed").unique("content_hash", keep="first", maintain_order=True)
             if frames else pl.DataFrame(schema={c: labeled.schema.get(c, pl.String) for c in cols}))
    rdir = review_dir(ws, name)
    write_parquet_atomic(known, rdir / "known.parquet")
    atomic_write_json(rdir / "classes.json", {"task": task, "classes": classes})


def _image_ref(spec: Spec, path: str) -> str:
    prefix = spec.labeling.image_url
    return f"{prefix}{path}" if prefix else path


def _write_queue(spec: Spec, ws: Workspace, chosen: pl.DataFrame, classes: list[str], champion: ModelRef | None,
                 now: datetime) -> dict[str, Any]:
    """The queue as Label Studio tasks (predictions as pre-annotations), its config and a CSV.
    The pre-annotation is the kind's machine label (at threshold 0) from the champion's outputs."""
    kind = kinds.get(spec.task)
    rows = list(chosen.sort("priority").iter_rows(named=True))
    model = _load(champion)
    pre = _machine_labels(model, [r["path"] for r in rows], 0.0, spec) if model is not None else [None] * len(rows)
    items = []
    for r, value in zip(rows, pre):
        item = {"id": r["id"], "content_hash": r["content_hash"], "image": _image_ref(spec, r["path"]),
                "width": r["width"], "height": r["height"], "camera": r.get("camera"), "reason": r.get("reason"),
                "score": r.get("score"), "confidence": r.get("confidence"), "predicted": r.get("predicted"),
                "current_label": r.get("current_label")}
        if value is not None:  # None: the file changed since ingest, no pre-annotation for this one
            item[kind.label_field] = value
        items.append(item)
    queue_id = stable_hash([(i["content_hash"], i["reason"]) for i in items] + [champion.version if champion else None])
    qdir = review_dir(ws, spec.name) / "queue" / queue_id
    paths = labelstudio.write_queue(qdir, items, spec.task, classes,
                                    f"v{champion.version}" if champion else "none", spec.data.ignore_index)
    info = {**paths, "dir": str(qdir), "queue_id": queue_id, "count": len(items), "created_at": now.isoformat()}
    atomic_write_json(review_dir(ws, spec.name) / "latest.json", info)
    return info


# ---- importing a reviewed export --------------------------------------------------------------------
@dataclass
class ImportResult:
    import_id: str
    file: str
    received: int
    accepted: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    quarantine_path: str
    label_version: str | None
    parent_version: str | None
    changed: int
    added: int
    already_imported: bool = False
    confirmed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_review(spec: Spec, ws: Workspace, file: str | Path) -> ImportResult:
    """Read a reviewed export (Label Studio JSON export or the queue CSV), quarantine what is wrong,
    store the accepted labels and publish the new label version."""
    file = Path(file)
    name = spec.name
    rdir = review_dir(ws, name)
    known_path, classes_path = rdir / "known.parquet", rdir / "classes.json"
    if not known_path.is_file() or not classes_path.is_file():
        raise ReviewError(f"{name} has no images to review yet: run a cycle (or `conveyor review queue`) first")
    meta = json.loads(classes_path.read_text())
    classes = list(meta["classes"])
    if not file.is_file():
        raise ReviewError(f"review file {file} does not exist")
    data = file.read_bytes()
    import_id = hashlib.sha256(data).hexdigest()[:16]
    known_df = pl.read_parquet(known_path)
    known = {r["content_hash"]: r for r in known_df.iter_rows(named=True)}
    try:
        checked = labelstudio.read_review(file, spec.task, classes, known)
    except labelstudio.ReviewFileError as err:
        raise ReviewError(str(err)) from None
    idir = rdir / "imports" / import_id
    qpath = write_parquet_atomic(checked.quarantined, idir / "quarantine.parquet")
    index_path = reviews_dir(ws, name) / "index.jsonl"
    done = {e["import_id"] for e in labels.read_log(index_path)}
    already = import_id in done
    now = datetime.now(timezone.utc).isoformat()
    kind = kinds.get(spec.task)
    rows = []
    for a in checked.accepted:
        stored = kind.review_record(a.value, lambda m: write_mask(ws, name, m))
        rows.append({"content_hash": a.content_hash, "id": a.id, **stored,
                     "reviewer": None if a.reviewer is None else str(a.reviewer),
                     "import_id": import_id, "imported_at": now})
    table = pl.DataFrame(rows, schema=REVIEW_SCHEMA)
    parent = labels.history(ws, name)[-1]["version"] if labels.history(ws, name) else None
    version, counts = parent, labels.ReviewCounts()
    if not already and table.height:
        write_parquet_atomic(table, reviews_dir(ws, name) / f"{import_id}.parquet")
        labels.append_log(index_path, {"import_id": import_id, "file": str(file), "imported_at": now,
                                       "accepted": table.height, "quarantined": checked.quarantined.height})
        lv, counts = labels.apply_reviews(ws, name, table, spec.task)
        version = lv.version
    result = ImportResult(import_id, str(file), checked.received, len(checked.accepted), checked.quarantined.height,
                          checked.reasons, str(qpath), version, parent, counts.changed, counts.added, already,
                          counts.confirmed)
    atomic_write_json(idir / "import.json", result.to_dict())
    return result


def status(ws: Workspace, name: str) -> dict[str, Any]:
    """The latest queue, the imports so far and the label versions."""
    rdir = review_dir(ws, name)
    latest = rdir / "latest.json"
    return {"queue": json.loads(latest.read_text()) if latest.is_file() else None,
            "imports": labels.read_log(reviews_dir(ws, name) / "index.jsonl"),
            "reviewed_images": reviewed_labels(ws, name).height,
            "label_versions": labels.history(ws, name)}

