"""The multi-label task kind: one image, any number of labels from a fixed set (attribute tagging).

Data come as a manifest (``data.format: manifest``) with ``path`` and ``labels`` (see
:mod:`conveyor.kinds.multilabel.sources`); the manifest and the split carry ``labels`` as a list
of names per image (empty: a negative) and leave the single-class ``label`` null. The model
(:mod:`conveyor.kinds.multilabel.model`) has one sigmoid output per label; a label is predicted
from probability 0.5. Everything else lives in the package's modules, imported inside the hooks:
``sources`` (manifest reader), ``contracts`` (suite frames), ``labelstudio`` (review formats),
``serving`` (numpy decoding, uncertainty, machine labels) and ``report`` (gate report sections).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.kinds.base import ReportSection, TaskKind

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

# Gate metrics that are not the kind's (conveyor.core.spec keeps the latency and size figures).
_GENERIC_METRICS = ("latency_p50_ms", "latency_p95_ms", "throughput_ips", "model_size_mb", "peak_memory_mb")


class MultilabelKind(TaskKind):
    name = "multilabel"
    primary_metric = "f1_macro"
    training_module = "conveyor.kinds.multilabel.model"

    # ---- spec and gates ----------------------------------------------------------------------
    metrics: ClassVar[dict[str, str]] = {
        "f1_macro": "higher",
        "f1_micro": "higher",
        "precision": "higher",
        "recall": "higher",
        "f1": "higher",
        "exact_match": "higher",
        "map": "higher",
        "ap": "higher",
        "ece": "lower",
    }
    per_class_metrics: ClassVar[frozenset[str]] = frozenset({"precision", "recall", "f1", "ap", "ece"})
    default_gate_metrics: ClassVar[tuple[str, ...]] = ("f1_macro", "map", "ece")

    def validate_spec(self, spec) -> None:
        """``data.format`` is a manifest, ``data.classes`` names the labels, per-label gate rules name
        known labels; raises ValueError naming the field."""
        fmt = spec.data.format
        if fmt not in ("auto", *self.source_formats):
            raise ValueError(f"data.format: multilabel reads {', '.join(self.source_formats)}, not {fmt!r}")
        if not spec.data.classes:
            raise ValueError("data.classes: multilabel needs the list of labels (an image may carry any of them)")
        try:
            classes = self.check_classes(spec.data.classes)
        except ValueError as err:
            raise ValueError(f"data.classes: {err}") from None
        rules = [(str(r), r.metric, r.cls) for r in spec.gates.parsed_rules()]
        names = [(n, n.split("[", 1)[0], n[n.index("[") + 1 : -1] if "[" in n else None)
                 for n in spec.gates.champion.metrics]
        for where, items in (("gates.rules", rules), ("gates.champion.metrics", names)):
            for text, metric, cls in items:
                if metric not in self.metrics and metric not in _GENERIC_METRICS:
                    raise ValueError(f"{where}: {text!r}: multilabel does not report {metric!r}; it reports "
                                     f"{', '.join(sorted(self.metrics))} and the latency figures")
                if cls is not None and metric not in self.per_class_metrics:
                    raise ValueError(f"{where}: {text!r}: {metric} has no per-label form; per-label metrics: "
                                     f"{', '.join(sorted(self.per_class_metrics))}")
                if cls is not None and cls not in classes:
                    raise ValueError(f"{where}: {text!r}: {cls!r} is not one of data.classes {classes}")

    def check_classes(self, classes: Sequence[str]) -> list[str]:
        """The label names as a list: at least one, no repeats, no ``;`` (the CSV separator), no blanks."""
        from conveyor.kinds.multilabel.sources import SEPARATOR

        names = [str(c) for c in classes]
        if not names:
            raise ValueError("multilabel needs at least one label")
        repeated = sorted({c for c in names if names.count(c) > 1})
        if repeated:
            raise ValueError(f"labels repeat: {repeated}")
        bad = [c for c in names if not c.strip() or c != c.strip() or SEPARATOR in c]
        if bad:
            raise ValueError(f"label names {bad} are blank, padded with spaces or contain {SEPARATOR!r}")
        return names

    # ---- data --------------------------------------------------------------------------------
    source_formats: ClassVar[tuple[str, ...]] = ("manifest",)
    annotation_columns: ClassVar[tuple[str, ...]] = ("labels",)
    contract_suites: ClassVar[tuple[str, ...]] = (
        "multilabel_manifest", "multilabel_labels", "multilabel_split_frame", "multilabel_class_coverage")

    def collect(self, spec):
        """Read ``spec.data.source`` (a manifest) into a :class:`conveyor.kinds.multilabel.sources.Collection`."""
        from conveyor.data.ingest import IngestError
        from conveyor.kinds.multilabel import sources

        if spec.data.format not in ("auto", *self.source_formats):
            raise IngestError(f"data.format: multilabel reads a manifest, not {spec.data.format!r}")
        return sources.collect(spec.source_path, spec.data.classes)

    def annotation_digest(self, frame: "pl.DataFrame") -> str:
        """16 hex of sha256 over the rows' (id, labels) sorted by id ("" without a labels column)."""
        if "labels" not in frame.columns or "id" not in frame.columns:
            return ""
        rows = [(i, sorted(v or [])) for i, v in frame.sort("id").select("id", "labels").iter_rows()]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def class_frame(self, frame: "pl.DataFrame") -> "pl.DataFrame":
        """(``split``, ``cls``): one row per label an image carries (a negative contributes none)."""
        import polars as pl

        if "labels" not in frame.columns:
            return pl.DataFrame(schema={"split": pl.String, "cls": pl.String})
        split = pl.col("split").cast(pl.String) if "split" in frame.columns else pl.lit(None, dtype=pl.String)
        return (frame.select(split.alias("split"), pl.col("labels").alias("cls")).explode("cls")
                .filter(pl.col("cls").is_not_null()).with_columns(pl.col("cls").cast(pl.String)))

    def contract_frames(self, manifest: "pl.DataFrame", split: "pl.DataFrame | None", spec) -> dict[str, Any]:
        from conveyor.kinds.multilabel import contracts

        ratios = spec.split.ratios
        eval_splits = [s for s in contracts.EVAL_SPLITS if ratios.get(s, 0) > 0]
        return contracts.frames(manifest, split, list(spec.data.classes or []), eval_splits)

    def profile_columns(self, manifest: "pl.DataFrame") -> list["pl.Expr"]:
        """``labels_per_image``: how many labels each image carries (a monitoring feature)."""
        import polars as pl

        if "labels" not in manifest.columns:
            return []
        return [pl.col("labels").list.len().cast(pl.Float64).alias("labels_per_image")]

    # ---- labels and review ------------------------------------------------------------------
    label_field: ClassVar[str] = "labels"
    csv_columns: ClassVar[tuple[str, ...]] = ("labels",)
    feedback_trains: ClassVar[bool] = False
    finds_label_errors: ClassVar[bool] = False

    def label_digest(self, reviewed: "pl.DataFrame") -> list[str]:
        """Per row the label set as one string: the names joined by ``;`` (sorted; "" for none)."""
        from conveyor.kinds.multilabel.sources import format_labels

        return [format_labels(sorted(v or [])) for v in reviewed.get_column("labels").to_list()]

    def labelstudio_config(self, classes: Sequence[str]) -> str:
        from conveyor.kinds.multilabel import labelstudio

        return labelstudio.label_config(classes)

    def labelstudio_prediction(self, item: Mapping, classes: Sequence[str]) -> list[dict] | None:
        from conveyor.kinds.multilabel import labelstudio

        return labelstudio.prediction_result(item, classes)

    def labelstudio_parse(self, ctx, result: list, info: Mapping, where: str) -> list[str]:
        from conveyor.kinds.multilabel import labelstudio

        return labelstudio.parse_result(ctx.classes, result, where)

    def label_key(self, value) -> Hashable:
        return tuple(sorted(value or ()))

    def csv_parse(self, ctx, rec: Mapping, where: str) -> list[str]:
        from conveyor.kinds.multilabel import labelstudio

        return labelstudio.parse_csv(ctx.classes, rec, where)

    def machine_label(self, outputs: Mapping[str, "np.ndarray"], classes, threshold: float, **ctx) -> list[str] | None:
        """The predicted label set when every label is decided at least ``threshold`` surely, else None."""
        from conveyor.kinds.multilabel import serving

        return serving.machine_labels(outputs, classes, threshold)

    # ---- scoring and serving ----------------------------------------------------------------
    onnx_outputs: ClassVar[tuple[str, ...]] = ("logits",)
    batchable: ClassVar[bool] = True

    def decode_prediction(self, outputs: Mapping[str, "np.ndarray"], classes: list[str], size: int, width: int,
                          height: int):
        """``{"labels", "probabilities", "confidence", "threshold"}`` and the log's ``predicted``
        (labels joined by ``;``), ``confidence`` and ``predicted_count``."""
        from conveyor.kinds.multilabel import serving
        from conveyor.serving.runtime import Prediction

        answer = serving.decode(outputs, classes)
        return Prediction(answer, serving.log_features(answer))

    def score(self, outputs: Mapping[str, "np.ndarray"], classes: Sequence[str]):
        """Uncertainty of the least sure per-label decision (see :mod:`conveyor.kinds.multilabel.serving`)."""
        from conveyor.kinds.multilabel import serving
        from conveyor.labels.hardcases import Scored

        p = serving.probabilities(outputs, classes)
        labels = serving.predicted(p, classes)
        top = max(labels, key=lambda c: p[list(classes).index(c)]) if labels else None
        lc, margin, entropy = serving.measures(p)
        return Scored(top, tuple(labels), serving.sureness(p), lc, margin, entropy)

    def prediction_classes(self, classes: Sequence[str]) -> set[str]:
        return {str(c) for c in classes}

    # ---- reports ------------------------------------------------------------------------------
    def report_sections(self, run) -> list[ReportSection]:
        """Per-label precision/recall/F1/AP/ECE table and per-label reliability diagrams; reads
        ``run.metrics`` (flat name -> value, or a whole metrics.json), ``run.predictions`` (the predictions frame) and ``run.classes``."""
        from conveyor.kinds.multilabel import report

        metrics = run.metrics
        if isinstance(metrics, Mapping) and isinstance(metrics.get("metrics"), Mapping):  # a whole metrics.json
            metrics = metrics["metrics"]
        return report.sections(metrics, getattr(run, "predictions", None), run.classes)
