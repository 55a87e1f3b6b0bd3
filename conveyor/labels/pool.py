"""The unlabelled pool: images without labels that the review stage scores, auto-labels or queues.

The pool is ``labeling.unlabeled`` and, with ``labeling.production``, the images the inference
service kept (``deploy.capture``). Both are ingested like the source (same decode safety and
quarantine, ``accepted + quarantined == received``); a source whose files' bytes are unchanged
reuses its version (the content fingerprint reads the bytes but decodes nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from conveyor.core.io import atomic_write_json, stable_hash, write_parquet_atomic
from conveyor.core.spec import Spec
from conveyor.core.workspace import Workspace
from conveyor.data.ingest import ingest, source_fingerprint

POOL_PREFIX = {"unlabeled": "unlabeled/", "production": "production/"}


def pool_spec(spec: Spec, source: Path) -> Spec:
    """The spec with ``data.source`` pointed at a pool source (format auto, no annotations)."""
    data = spec.data.model_copy(update={"source": str(source), "format": "auto", "annotations": None})
    return spec.model_copy(update={"data": data})


def ingest_pool(spec: Spec, ws: Workspace, source: Path, kind: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Ingest a pool source (``kind``: ``unlabeled`` or ``production``), or reuse its version when the
    files' bytes are unchanged; returns (its rows, ids prefixed by the kind and no label; a summary)."""
    out = ws.root / "pool" / spec.name / kind
    pspec = pool_spec(spec, source)
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
    from conveyor.monitoring.feedback import answering_predictions
    from conveyor.release import live

    log = answering_predictions(live.read_log(ws, name))
    if "capture" not in log.columns:  # tables added with `conveyor observe`
        log = log.with_columns(pl.lit(None, pl.String).alias("capture"))
    return log


def production_manifest(ws: Workspace, name: str, log: pl.DataFrame) -> Path | None:
    """A manifest of the kept images (one row per image, the first request that sent it) inside the
    captures folder, so ingest reads them like any manifest source."""
    from conveyor.serving.captures import captures_dir

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
