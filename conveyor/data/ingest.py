"""The ingest stage: a source folder or manifest in, a validated manifest of images out.

Every received item (each file below a class folder, each row of a manifest) ends up either in
``manifest.parquet`` (accepted) or in ``quarantine.parquet`` with a reason code, a field and a
human message; ``accepted + quarantined == received`` always. Per-item problems never raise;
only a source that cannot be read at all (missing, empty, unreadable, missing columns) raises
:class:`IngestError`.

Sources are listed by :mod:`conveyor.data.sources` (folder and manifest) or by the spec's task
kind (COCO, YOLO, mask pairs ...), into the typed records of :mod:`conveyor.data.records`.

Each image is read once: the bytes give ``content_hash`` (sha256), one safe decode
(:mod:`conveyor.data.imageio`) gives size, mode, format, the statistics and the perceptual hash
(computed in bulk, per batch of images, with numpy). Chunks of images decode in a thread pool
and their results are merged in submission order, so the output is deterministic. The first
chunk decides the number of threads: several (up to 4, at most the CPU count) when images are
big (PIL releases the GIL while it decodes), one when they are small (then the Python around
each decode dominates and threads only fight over the GIL). ``CONVEYOR_INGEST_THREADS`` sets it.

Outputs go to ``out_root/<dataset_version>/`` (``manifest.parquet``, ``quarantine.parquet``,
``ingest.json``), written into a temporary folder and renamed into place; an existing version
folder is kept as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image

from conveyor.core.io import publish_version, sha256_bytes
from conveyor.core.spec import Spec
from conveyor.data import collection, imageio, sources
from conveyor.data.digest import annotation_digest, rows_digest
from conveyor.data.fingerprint import source_fingerprint
from conveyor.data.records import (
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    REASONS,
    Accepted,
    Annotated,
    IngestError,
    Item,
    Quarantined,
    quarantine_frame,
)
from conveyor.data.sources import (
    MANIFEST_SUFFIXES,
    META_COLUMNS,
    SIDECAR_NAMES,
    column_values,
    parse_timestamp,
    read_table,
    text_or_none,
)

__all__ = [
    "MANIFEST_SCHEMA", "MANIFEST_SUFFIXES", "META_COLUMNS", "QUARANTINE_SCHEMA", "REASONS", "SIDECAR_NAMES",
    "IngestError", "IngestResult", "annotation_digest", "column_values", "ingest", "parse_timestamp",
    "read_table", "rows_digest", "source_fingerprint", "text_or_none",
]

_VERSION_SCHEMA = 1  # bump when the manifest's columns or statistics change meaning
_CHUNK = 64  # images per decoding task
_FEATURE_BATCH = 1024  # images per bulk statistics task (bigger groups of equal shape, fewer numpy calls)
_BATCH_PIXELS = 16_000_000  # ... or fewer, so the float temporaries stay small
_PARALLEL_MIN_PIXELS = 256 * 256  # mean image size from which decoding runs in several threads


@dataclass(frozen=True)
class IngestResult:
    dataset_version: str
    manifest_path: str
    quarantine_path: str
    received: int
    accepted: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    classes: list[str]
    # sources with annotations beside the images (detection: box counts and box quarantine reasons)
    annotations: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Decoded:
    """One item read and decoded in a worker thread (``prep``: input of the bulk statistics)."""

    accepted: Accepted
    prep: Any


# ---- decoding -----------------------------------------------------------------------------------

def _single_threaded_blas():
    """The statistics do many small matrix products: a multi-threaded BLAS only spins its threads
    against the decoding threads there. Limit it to one thread while ingest runs (restored after)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _workers(mean_pixels: float) -> int:
    """Decoding threads. PIL releases the GIL while it decodes, so threads pay off for big images
    (up to the cores); for small ones the Python around each decode dominates, and more threads
    only fight over the GIL: one thread then. ``CONVEYOR_INGEST_THREADS`` overrides."""
    env = os.environ.get("CONVEYOR_INGEST_THREADS")
    if env:
        return max(1, int(env))
    if mean_pixels < _PARALLEL_MIN_PIXELS:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def _decode_chunk(items: list[Item], *, root: str, max_bytes: int, max_pixels: int, min_side: int,
                  max_side: int, hash_fn: str, hash_size: int) -> list[_Decoded | Quarantined]:
    """Read, hash and decode a chunk of items (in a worker thread): per item a
    :class:`_Decoded` or a quarantine row."""
    out: list[_Decoded | Quarantined] = []
    for it in items:
        try:
            data, path = sources.read_item(it, root, max_bytes)
            opened = imageio.open_image(data, max_pixels=max_pixels, min_side=min_side, max_side=max_side,
                                        name=it.rel_path or it.path)
        except sources.ItemError as err:
            out.append(it.quarantine(err.reason, err.field, err.detail))
            continue
        except imageio.DecodeError as err:
            out.append(it.quarantine(err.reason, "path", err.detail))
            continue
        try:
            prep = imageio.prepare_features(opened.image, hash_fn, hash_size)
        finally:
            opened.image.close()
        if path != (it.real_path or it.norm_path or ""):  # a symlinked file: the manifest names the file read
            it = it.replace(real_path=path)
        acc = Accepted(it, sha256_bytes(data), len(data), opened.mode, opened.format, opened.width, opened.height)
        out.append(_Decoded(acc, prep))
    return out


# ---- ingest ---------------------------------------------------------------------------------------


def ingest(spec: Spec, out_root: Path, progress: bool = False, unlabeled: bool = False) -> IngestResult:
    """Validate and describe every image of ``spec.data.source``; write the dataset version.

    ``unlabeled``: the source is a folder (any depth) or a manifest of images without labels
    (the ``label`` column stays empty); everything else, quarantine included, is the same."""
    d = spec.data
    nd = spec.curation.near_duplicates
    try:
        imageio.check_hash_settings(nd.hash, nd.hash_size)
    except ValueError as err:
        raise IngestError(f"curation.near_duplicates: {err}") from None
    col = collection.collect(spec, unlabeled)
    root = col.root
    quarantined: list[Quarantined] = list(col.quarantined)
    max_bytes = int(d.max_file_mb * 2**20)
    opts = dict(root=root, max_bytes=max_bytes, max_pixels=d.max_pixels, min_side=d.min_side,
                max_side=d.max_side, hash_fn=nd.hash, hash_size=nd.hash_size)

    accepted: list[Accepted] = []
    feature_futures: list[Future] = []
    batch_prep: list[Any] = []
    batch_pixels = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(col.candidates), desc="ingest", unit="img")
    chunks = iter([col.candidates[i : i + _CHUNK] for i in range(0, len(col.candidates), _CHUNK)])
    pending: deque[Future] = deque()
    pool: ThreadPoolExecutor | None = None
    try:
        with warnings.catch_warnings(), _single_threaded_blas():
            # PIL warns between MAX_IMAGE_PIXELS and twice that: an error here, i.e. a quarantine.
            # The filter list is process-wide, so the decoding threads see it too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)

            def take(results: list[_Decoded | Quarantined]) -> None:
                nonlocal batch_prep, batch_pixels
                for r in results:
                    if isinstance(r, Quarantined):
                        quarantined.append(r)
                        continue
                    accepted.append(r.accepted)
                    batch_prep.append(r.prep)
                    batch_pixels += r.prep.size[0] * r.prep.size[1]
                    if len(batch_prep) >= _FEATURE_BATCH or batch_pixels >= _BATCH_PIXELS:
                        feature_futures.append(submit(imageio.features_from_prepared, batch_prep, nd.hash, nd.hash_size))
                        batch_prep, batch_pixels = [], 0
                if bar is not None:
                    bar.update(len(results))

            def submit(fn, *args) -> Future:
                if pool is None:
                    fut: Future = Future()
                    fut.set_result(fn(*args))
                    return fut
                return pool.submit(fn, *args)

            # The first chunk decodes here; its image sizes decide the threads for the rest.
            first = next(chunks, None)
            if first is not None:
                results = _decode_chunk(first, **opts)
                sizes = [r.accepted.width * r.accepted.height for r in results if isinstance(r, _Decoded)]
                workers = _workers(sum(sizes) / len(sizes) if sizes else 0.0)
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="conveyor-ingest")
                take(results)

                def fill() -> None:
                    while len(pending) < 2 * workers:
                        chunk = next(chunks, None)
                        if chunk is None:
                            return
                        pending.append(pool.submit(_decode_chunk, chunk, **opts))

                fill()
                while pending:  # results in submission order: deterministic
                    results = pending.popleft().result()
                    fill()
                    take(results)
            if batch_prep:
                feature_futures.append(submit(imageio.features_from_prepared, batch_prep, nd.hash, nd.hash_size))
            features = [f for fut in feature_futures for f in fut.result()]
    finally:
        for fut in pending:
            fut.cancel()
        if pool is not None:
            pool.shutdown(wait=True)
        if bar is not None:
            bar.close()

    annotated: Annotated | None = None
    if col.finisher is not None:  # annotations beside the images: checked against the decoded images
        keep, keep_f = [], []
        for a, f in zip(accepted, features):
            bad = col.finisher.check(a)
            if bad is not None:
                quarantined.append(bad)
                continue
            keep.append(a)
            keep_f.append(f)
        accepted, features = keep, keep_f
        annotated = col.finisher.finish(_manifest_frame(accepted, features))
        manifest = annotated.manifest
    else:
        manifest = _manifest_frame(accepted, features)
    qdf = quarantine_frame(quarantined)
    version = _dataset_version(manifest, qdf, root, spec, annotated, unlabeled=unlabeled)
    reasons = dict(sorted(Counter(q.reason for q in quarantined).items()))
    classes = list(d.classes) if d.classes is not None else sorted(set(manifest.get_column("label").drop_nulls().to_list()))
    if annotated is not None and annotated.classes is not None:
        classes = list(annotated.classes)
    annotations = annotated.summary if annotated is not None and annotated.summary is not None else None
    received = col.received
    if manifest.height + qdf.height != received:  # a bug, never a data problem
        raise AssertionError(f"ingest lost items: {manifest.height} + {qdf.height} != {received}")
    summary = {
        "dataset_version": version,
        "source": str(spec.source_path),
        "data_root": root,
        "format": col.format,
        "received": received,
        "accepted": manifest.height,
        "quarantined": qdf.height,
        "quarantine_reasons": reasons,
        "classes": classes,
        "hash": nd.hash,
        "hash_size": nd.hash_size,
    }
    if annotations is not None:
        summary["annotations"] = annotations
    frames = {"manifest.parquet": manifest, "quarantine.parquet": qdf, **(annotated.frames if annotated else {})}
    final = publish_version(Path(out_root), version, frames, "ingest.json", summary)
    return IngestResult(
        dataset_version=version,
        manifest_path=str(final / "manifest.parquet"),
        quarantine_path=str(final / "quarantine.parquet"),
        received=received,
        accepted=manifest.height,
        quarantined=qdf.height,
        quarantine_reasons=reasons,
        classes=classes,
        annotations=annotations or {},
    )


def _manifest_frame(accepted: list[Accepted], features: list[imageio.ImageFeatures]) -> pl.DataFrame:
    items = [a.item for a in accepted]
    cols: dict[str, list[Any]] = {
        "id": [it.rel_path for it in items],
        "path": [it.real_path for it in items],
        "rel_path": [it.rel_path for it in items],
        "label": [it.label for it in items],
        "camera": [it.camera for it in items],
        "scene": [it.scene for it in items],
        "captured_at": [None if it.captured_at is None else it.captured_at.replace(tzinfo=None) for it in items],
        "content_hash": [a.content_hash for a in accepted],
        "phash": [f.phash for f in features],
        "width": [a.width for a in accepted],
        "height": [a.height for a in accepted],
        "mode": [a.mode for a in accepted],
        "format": [a.format for a in accepted],
        "file_size": [a.file_size for a in accepted],
        "brightness": [f.brightness for f in features],
        "contrast": [f.contrast for f in features],
        "saturation": [f.saturation for f in features],
        "sharpness": [f.sharpness for f in features],
        "hue": [f.hue for f in features],
    }
    schema = dict(MANIFEST_SCHEMA)
    schema["captured_at"] = pl.Datetime("us")
    df = pl.DataFrame(cols, schema=schema)
    df = df.with_columns(pl.col("captured_at").dt.replace_time_zone("UTC"))
    return df.sort("id")


# ---- versioning -----------------------------------------------------------------------------------


def _dataset_version(manifest: pl.DataFrame, qdf: pl.DataFrame, root: str, spec: Spec,
                     annotated: Annotated | None = None, unlabeled: bool = False) -> str:
    """16 hex of sha256 over the sorted accepted (id, content_hash, label, camera, scene,
    captured_at), the sorted quarantine (path, reason), the data root and the hash settings
    (the manifest stores absolute paths and perceptual hashes, so those belong to the version).
    ``annotated``: annotations kept beside the images (a kind's columns hashed with the accepted
    rows, e.g. mask hashes, and a digest hashed after the quarantine, e.g. boxes)."""
    h = hashlib.sha256()
    settings = {
        "schema": _VERSION_SCHEMA,
        "root": root,
        "hash": spec.curation.near_duplicates.hash,
        "hash_size": spec.curation.near_duplicates.hash_size,
    }
    if unlabeled:
        settings["unlabeled"] = True
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(b"\0accepted\0")
    rows_digest(h, manifest.sort("id"), ["id", "content_hash", "label", "camera", "scene", "captured_at"])
    if annotated is not None and annotated.version_rows is not None:  # e.g. a changed mask is a new version
        tag, cols = annotated.version_rows
        h.update(b"\0" + tag.encode() + b"\0")
        rows_digest(h, manifest.sort("id"), list(cols))
    h.update(b"\0quarantine\0")
    rows_digest(h, qdf.select("path", "reason").sort(["path", "reason"]), ["path", "reason"])
    if annotated is not None and annotated.digest:  # e.g. any changed box is a new version
        h.update(b"\0annotations\0" + annotated.digest.encode())
    return h.hexdigest()[:16]
