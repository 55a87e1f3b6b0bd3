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

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from conveyor.kinds.base import ReportSection, TaskKind

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import polars as pl

    from conveyor.core.spec import Spec
    from conveyor.data.records import Collection
    from conveyor.reporting.rundata import RunData


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
        from conveyor.core.spec import GENERIC_METRICS

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
                if metric not in self.metrics and metric not in GENERIC_METRICS:
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
    coverage_suite: ClassVar[str] = "multilabel_class_coverage"

    def collect(self, spec: "Spec", src: "Path", fmt: str) -> "Collection":
        """Read the manifest ``src`` into a :class:`~conveyor.data.records.Collection` whose finisher
        adds the ``labels`` list column (see :mod:`conveyor.kinds.multilabel.sources`)."""
        from conveyor.data.records import IngestError
        from conveyor.kinds.multilabel import sources

        if fmt not in self.source_formats:
            raise IngestError(f"data.format: multilabel reads a manifest, not {fmt!r}")
        return sources.collect_for_ingest(spec, src)

    def annotation_digest(self, frame: "pl.DataFrame") -> str:
        """16 hex of sha256 over the rows' (id, labels) sorted by id ("" without a labels column)."""
        from conveyor.data.digest import json_rows_digest

        return json_rows_digest(frame, ("labels",))

    def class_frame(self, frame: "pl.DataFrame") -> "pl.DataFrame":
        """(``split``, ``cls``): one row per label an image carries (a negative contributes none)."""
        import polars as pl

        if "labels" not in frame.columns:
            return pl.DataFrame(schema={"split": pl.String, "cls": pl.String})
        split = pl.col("split").cast(pl.String) if "split" in frame.columns else pl.lit(None, dtype=pl.String)
        return (frame.select(split.alias("split"), pl.col("labels").alias("cls")).explode("cls")
                .filter(pl.col("cls").is_not_null()).with_columns(pl.col("cls").cast(pl.String)))

    def contract_frames(self, manifest: "pl.DataFrame", split: "pl.DataFrame | None",
                        spec: "Spec | None") -> "dict[str, pl.DataFrame]":
        from conveyor.kinds.multilabel import contracts

        return contracts.contract_frames(manifest, split)

    def profile_columns(self, manifest: "pl.DataFrame") -> list["pl.Expr"]:
        """``labels_per_image``: how many labels each image carries (a monitoring feature)."""
        import polars as pl

        if "labels" not in manifest.columns:
            return []
        return [pl.col("labels").list.len().cast(pl.Float64).alias("labels_per_image")]

    # ---- labels and review (conveyor.kinds.multilabel.labelstudio) ------------------------------
    labelstudio_module: ClassVar[str] = "conveyor.kinds.multilabel.labelstudio"
    label_field: ClassVar[str] = "labels"
    label_columns: ClassVar[tuple[str, ...]] = ("labels",)
    csv_columns: ClassVar[tuple[str, ...]] = ("labels",)
    feedback_trains: ClassVar[bool] = False
    finds_label_errors: ClassVar[bool] = False
    prediction_required: ClassVar[bool] = False

    # ---- scoring and serving (conveyor.kinds.multilabel.serving) ----------------------------------
    #: ``decode_prediction``: ``{"labels", "probabilities", "confidence", "threshold"}`` and the log's
    #: ``predicted`` (labels joined by ``;``), ``confidence`` and ``predicted_count``.
    serving_module: ClassVar[str] = "conveyor.kinds.multilabel.serving"
    onnx_outputs: ClassVar[tuple[str, ...]] = ("logits",)
    batchable: ClassVar[bool] = True

    # ---- reports ------------------------------------------------------------------------------
    def report_sections(self, run: "RunData") -> list[ReportSection]:
        """Per-label precision/recall/F1/AP/ECE table and per-label reliability diagrams."""
        from conveyor.kinds.multilabel import report

        return report.sections(run.metrics, run.predictions, run.classes)
