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

The images without labels (the pool) are ``labeling.unlabeled`` and, with ``labeling.production``,
the images the inference service kept (``deploy.capture``). Both are ingested like the source
(same decode safety and quarantine, ``accepted + quarantined == received``). Pool images that are
near-duplicates of labelled ones are left out. The rest that the champion is not sure enough
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
from typing import Any, Sequence

import numpy as np
import polars as pl

from conveyor.labels import hardcases
from conveyor.labels import versions as labels
from conveyor.labels import labelstudio
from conveyor.data.ingest import annotation_digest, ingest, rows_digest, source_fingerprint
from conveyor.core.spec import Spec, parse_duration_s
from conveyor.core.io import atomic_write_bytes, atomic_write_json, stable_hash, write_parquet_atomic
from conveyor.core.workspace import Workspace

LABEL_SOURCES = ("human", "review", "feedback", "machine")  # most trusted first
TRUSTED_SOURCES = ("human", "review", "feedback")  # may be evaluated on; machine labels train only
POOL_PREFIX = {"unlabeled": "unlabeled/", "production": "production/"}
REVIEW_SCHEMA = {"content_hash": pl.String(), "id": pl.String(), "label": pl.String(), "boxes": pl.String(),
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


def _boxes_struct(values: list[str | None]) -> pl.Series:
    from conveyor.kinds.detection.sources import BOX_STRUCT

    return pl.Series("boxes", [json.loads(v) if v is not None else None for v in values], dtype=pl.List(BOX_STRUCT))


def _mask_columns(paths: list[str | None], hashes: list[str | None], classes: Sequence[str]) -> list[pl.Series]:
    present = []
    from PIL import Image

    for p in paths:
        if p is None:
            present.append(None)
            continue
        with Image.open(p) as im:
            vals = np.unique(np.asarray(im))
        present.append([classes[int(v)] for v in vals if int(v) < len(classes)])
    return [pl.Series("mask_path", paths, dtype=pl.String), pl.Series("mask_hash", hashes, dtype=pl.String),
            pl.Series("mask_classes", present, dtype=pl.List(pl.String))]


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


# ---- the pool --------------------------------------------------------------------------------------
def _pool_spec(spec: Spec, source: Path) -> Spec:
    data = spec.data.model_copy(update={"source": str(source), "format": "auto", "annotations": None})
    return spec.model_copy(update={"data": data})


def _ingest_pool(spec: Spec, ws: Workspace, source: Path, kind: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Ingest a pool source, or reuse its version when the files' bytes are unchanged (the content
    fingerprint reads the bytes but decodes nothing)."""
    out = ws.root / "pool" / spec.name / kind
    pspec = _pool_spec(spec, source)
    key = stable_hash([source_fingerprint(pspec, unlabeled=True), pspec.section_hash("data", "curation")])
    index_path = out / "fingerprints.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    version = index.get(key)
    if version is None or not (out / version / "ingest.json").is_file():
        version = ingest(pspec, out, unlabeled=True).dataset_version
        index = {**{k: v for k, v in list(index.items())[-49:]}, key: version}  # the latest 50 sources
        atomic_write_json(index_path, index)
    summary = json.loads((out / version / "ingest.json").read_text())
    df = pl.read_parquet(out / version / "manifest.parquet")
    df = df.with_columns((pl.lit(POOL_PREFIX[kind]) + pl.col("id")).alias("id"), pl.lit(None, pl.String).alias("label"))
    info = {"source": str(source), **{k: summary[k] for k in ("received", "accepted", "quarantined",
                                                               "quarantine_reasons", "dataset_version")},
            "quarantine_path": str(out / version / "quarantine.parquet")}
    return df, info


def production_log(ws: Workspace, name: str) -> pl.DataFrame:
    """The answered rows of the prediction log (``capture``: the kept image, or null)."""
    from conveyor.release import live
    from conveyor.monitoring.feedback import answering_predictions

    log = answering_predictions(live.read_log(ws, name))
    if "capture" not in log.columns:  # tables added with `conveyor observe`
        log = log.with_columns(pl.lit(None, pl.String).alias("capture"))
    return log


def _production_manifest(ws: Workspace, name: str, log: pl.DataFrame) -> Path | None:
    """A manifest of the kept images (one row per image, the first request that sent it) inside the
    captures folder, so ingest reads them like any manifest source."""
    from conveyor.serving.runtime import captures_dir

    log = log.filter(pl.col("capture").is_not_null())
    if log.height == 0:
        return None
    rows = (log.sort("timestamp").unique("capture", keep="first", maintain_order=True)
            .select(pl.col("capture").alias("path"), "camera", pl.col("timestamp").alias("captured_at")))
    root = captures_dir(ws, name)
    path = root / "pool.parquet"
    if path.is_file():
        try:
            if pl.read_parquet(path).equals(rows):
                return path
        except Exception:  # noqa: BLE001 - rewritten below
            pass
    write_parquet_atomic(rows, path)
    return path


# ---- scoring -------------------------------------------------------------------------------------
def _load(ref: ModelRef | None, threads: int = 1):
    if ref is None:
        return None
    from conveyor.serving.runtime import LoadedModel, ModelLoadError

    try:
        return LoadedModel(ref.version, ref.path, threads)
    except ModelLoadError:
        return None


def _decode(path: str, max_pixels: int):
    """One image decoded as serving and training decode it (no statistics: ingest has them)."""
    from conveyor.data.imageio import open_image
    from conveyor.serving.runtime import DecodedRequest

    opened = open_image(Path(path).read_bytes(), max_pixels=max_pixels, name=path)
    return DecodedRequest(opened.image, {}, opened.format)


def _run_model(model, path: str, max_pixels: int) -> tuple[dict[str, np.ndarray], int, int]:
    """The model's raw outputs for one image."""
    req = _decode(path, max_pixels)
    outs = model.session.run(None, {model.input_name: req.input(model.image_size)})
    return dict(zip(model.output_names, outs)), req.width, req.height


SCORE_BATCH = 64


def _batched_outputs(model, paths: list[str], max_pixels: int):
    """``(index, outputs, width, height)`` per image, ``outputs`` None when the file cannot be read
    any more. Graphs with a batch axis (classification, segmentation) run ``SCORE_BATCH`` images
    per call; detection graphs take one image per call."""
    batch_axis = not isinstance(model.session.get_inputs()[0].shape[0], int) and model.task != "detection"
    step = SCORE_BATCH if batch_axis else 1
    for start in range(0, len(paths), step):
        chunk = []
        for i in range(start, min(start + step, len(paths))):
            try:
                chunk.append((i, _decode(paths[i], max_pixels)))
            except Exception:  # noqa: BLE001 - the file changed since ingest: left unscored
                yield i, None, 0, 0
        if not chunk:
            continue
        x = np.concatenate([r.input(model.image_size) for _, r in chunk])
        outs = dict(zip(model.output_names, model.session.run(None, {model.input_name: x})))
        for j, (i, r) in enumerate(chunk):
            one = outs if step == 1 else {k: v[j : j + 1] for k, v in outs.items()}
            yield i, one, r.width, r.height


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
            df, pool_info["unlabeled"] = _ingest_pool(spec, ws, src, "unlabeled")
            pools.append(df)
        else:  # nothing has arrived yet: an empty pool, said so in the summary
            pool_info["unlabeled"] = {"source": str(src), "status": "missing", "received": 0, "accepted": 0,
                                      "quarantined": 0, "quarantine_reasons": {}}
    log = production_log(ws, name) if lab.production or lab.feedback.enabled else pl.DataFrame()
    capture_hash: dict[str, str] = {}
    if lab.production and log.height:
        mpath = _production_manifest(ws, name, log)
        if mpath is not None:
            df, pool_info["production"] = _ingest_pool(spec, ws, mpath, "production")
            capture_hash = dict(zip(df["rel_path"].to_list(), df["content_hash"].to_list()))
            pools.append(df)
    pool = (pl.concat(pools, how="diagonal_relaxed").unique("content_hash", keep="first", maintain_order=True)
            if pools else manifest.clear())
    in_source = pool.filter(pl.col("content_hash").is_in(list(known_hashes)))
    pool = pool.filter(~pl.col("content_hash").is_in(list(known_hashes)))
    pool_info["already_labeled"] = in_source.height
    pv = spec.curation.privacy  # nobody reviews, and nothing trains on, an excluded camera or scene
    private = pl.col("camera").is_in(pv.exclude_cameras).fill_null(False) | pl.col("scene").is_in(
        pv.exclude_scenes).fill_null(False)
    if pv.drop_missing_camera:
        private = private | pl.col("camera").is_null()
    pool_info["privacy_excluded"] = int(pool.select(private.sum()).item()) if pool.height else 0
    pool = pool.filter(~private) if pool.height else pool

    # 2. reviewed labels (they also correct labels of the source)
    reviewed = reviewed_labels(ws, name)
    rev_by_hash = {r["content_hash"]: r for r in reviewed.iter_rows(named=True)}
    manifest = _apply_reviews(spec, manifest, rev_by_hash, classes)
    pool_reviewed = _apply_reviews(spec, pool.filter(pl.col("content_hash").is_in(list(rev_by_hash))), rev_by_hash,
                                   classes)
    pool = pool.filter(~pl.col("content_hash").is_in(list(rev_by_hash)))

    # 3. production feedback
    fb_rows, fb_info, fb_error_hashes = _feedback(spec, ws, log, pool, capture_hash, classes, now)
    pool = pool.filter(~pl.col("content_hash").is_in(fb_rows["content_hash"].to_list() if fb_rows.height else []))

    labeled = pl.concat([manifest, pool_reviewed, fb_rows], how="diagonal_relaxed")

    # 4. near-duplicates of labelled images are neither auto-labelled nor reviewed
    nd = spec.curation.near_duplicates
    if nd.enabled and pool.height and labeled.height:
        from conveyor.data.neardup import near_duplicate_pairs

        ph = pool["phash"].fill_null("").to_list()
        lph = labeled["phash"].fill_null("").to_list()
        idx = [i for i, h in enumerate(ph) if h]
        lidx = [h for h in lph if h]
        near = set()
        if idx and lidx and len({len(ph[i]) for i in idx} | {len(h) for h in lidx}) == 1:
            near = {idx[a] for a, _, _ in near_duplicate_pairs([ph[i] for i in idx], nd.max_distance, lidx)}
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
        counts = _class_counts(labeled, spec.task)
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
    model = _load(champion, spec.train.num_threads) if spec.task == "classification" and lab.mix.label_errors > 0 \
        else None
    rows = manifest.filter(pl.col("label_source") == "human") if model is not None else manifest.clear()
    if rows.height == 0:
        return rows.with_columns(pl.lit(None, pl.String).alias("current_label"),
                                 pl.lit(None, pl.String).alias("predicted"), pl.lit(None, pl.Float64).alias("confidence"))
    scores = _scores(spec, ws, rows, champion, model, progress).select("content_hash", "predicted", "confidence")
    out = rows.join(scores, on="content_hash", how="inner").filter(
        (pl.col("predicted") != pl.col("label")) & (pl.col("confidence") >= lab.suspect_confidence))
    return out.with_columns(pl.col("label").alias("current_label")).sort(["confidence", "id"],
                                                                         descending=[True, False])


def _class_counts(df: pl.DataFrame, task: str) -> dict[str, int]:
    if "boxes" in df.columns:
        cls = df.select(pl.col("boxes")).explode("boxes").drop_nulls("boxes").select(
            pl.col("boxes").struct.field("category").alias("c"))["c"]
    elif "mask_classes" in df.columns:
        cls = df.select(pl.col("mask_classes").alias("c")).explode("c").drop_nulls("c")["c"]
    else:
        cls = df["label"].drop_nulls()
    return {str(k): int(v) for k, v in cls.value_counts().iter_rows()}


def _apply_reviews(spec: Spec, df: pl.DataFrame, rev: dict[str, dict], classes: list[str]) -> pl.DataFrame:
    """Rows whose image was reviewed take the reviewed label (source ``review``)."""
    if not rev or df.height == 0:
        return df
    hit = df["content_hash"].is_in(list(rev))
    if not hit.any():
        return df
    keep, changed = df.filter(~hit), df.filter(hit)
    r = [rev[h] for h in changed["content_hash"].to_list()]
    cols = [pl.Series("label_source", ["review"] * len(r), dtype=pl.String)]
    if spec.task == "classification":
        cols.append(pl.Series("label", [x["label"] for x in r], dtype=pl.String))
    elif spec.task == "detection":
        cols.append(_boxes_struct([x["boxes"] for x in r]))
    else:
        cols.extend(_mask_columns([x["mask_path"] for x in r], [x["mask_hash"] for x in r], classes))
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
    if spec.task != "classification":  # a row is one object: send the images of wrong answers to review
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
                "entropy": pl.Float64(), "boxes": pl.String()}


def _scores(spec: Spec, ws: Workspace, pool: pl.DataFrame, ref: ModelRef, model, progress: bool) -> pl.DataFrame:
    """One model's scores of the pool images (``SCORE_SCHEMA``), kept per model hash under
    ``pool/<name>/scores/`` so that each image is run once per model; ``boxes``: detection's
    machine boxes (JSON). An image that cannot be read any more is left out."""
    path = ws.root / "pool" / spec.name / "scores" / f"{ref.model_hash}.parquet"
    cached = pl.read_parquet(path) if path.is_file() else pl.DataFrame(schema=SCORE_SCHEMA)
    todo = pool.filter(~pl.col("content_hash").is_in(cached["content_hash"].to_list()))
    rows: list[dict[str, Any]] = []
    hashes = todo["content_hash"].to_list()
    it = _batched_outputs(model, todo["path"].to_list(), spec.data.max_pixels)
    if progress and hashes:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(hashes), desc=f"score pool (v{ref.version})", unit="img")
    for i, outs, w, hh in it:
        if outs is None:
            continue
        h = hashes[i]
        sc = hardcases.score_outputs(model.task, outs, model.classes)
        boxes = None
        if model.task == "detection":
            boxes = json.dumps(hardcases.machine_boxes(
                np.asarray(outs["boxes"]).reshape(-1, 4), np.asarray(outs["scores"]).reshape(-1),
                np.asarray(outs["labels"]).reshape(-1), model.classes, model.image_size, w, hh))
        rows.append({"content_hash": h, "predicted": sc.predicted, "pred_classes": list(sc.classes),
                     "confidence": sc.confidence, "least_confidence": sc.least_confidence, "margin": sc.margin,
                     "entropy": sc.entropy, "boxes": boxes})
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
    # detection: the champion's boxes (JSON) stay with the scores as the queue's pre-annotation
    scored = pool.join(scores.rename({"boxes": "predicted_boxes"}), on="content_hash", how="left")
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
    if spec.task == "classification":
        machine = machine.with_columns(pl.col("predicted").alias("label"))
    elif spec.task == "detection":
        machine = machine.with_columns(_boxes_struct(machine["boxes"].to_list()))  # the scores' JSON boxes
    else:  # the mask depends on the threshold (pixels below it are ignored): made from the outputs
        written = []
        for p in machine["path"].to_list():
            outs, w, h = _run_model(model, p, spec.data.max_pixels)
            written.append(write_mask(ws, spec.name, hardcases.machine_mask(outs["logits"], threshold,
                                                                             spec.data.ignore_index, w, h)))
        machine = machine.with_columns(_mask_columns([p for p, _ in written], [h for _, h in written], classes))
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
    Detection's boxes come with the scores; a segmentation mask is made from the champion's outputs."""
    model = _load(champion) if spec.task == "segmentation" else None
    items = []
    for r in chosen.sort("priority").iter_rows(named=True):
        item = {"id": r["id"], "content_hash": r["content_hash"], "image": _image_ref(spec, r["path"]),
                "width": r["width"], "height": r["height"], "camera": r.get("camera"), "reason": r.get("reason"),
                "score": r.get("score"), "confidence": r.get("confidence"), "predicted": r.get("predicted"),
                "current_label": r.get("current_label")}
        if r.get("predicted_boxes") is not None:
            item["boxes"] = json.loads(r["predicted_boxes"])
        if model is not None:
            try:
                outs, w, h = _run_model(model, r["path"], spec.data.max_pixels)
                item["mask"] = hardcases.machine_mask(outs["logits"], 0.0, spec.data.ignore_index, w, h)
            except Exception:  # noqa: BLE001 - the file changed since ingest: no pre-annotation for this one
                pass
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
    rows = []
    for a in checked.accepted:
        mask_path = mask_hash = None
        if a.mask is not None:
            mask_path, mask_hash = write_mask(ws, name, a.mask)
        rows.append({"content_hash": a.content_hash, "id": a.id, "label": a.label,
                     "boxes": json.dumps(a.boxes) if a.boxes is not None else None, "mask_path": mask_path,
                     "mask_hash": mask_hash, "reviewer": None if a.reviewer is None else str(a.reviewer),
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

