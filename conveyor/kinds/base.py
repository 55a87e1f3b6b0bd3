"""The task-kind plug-in: everything that depends on what a model predicts.

A task kind (classification, detection, segmentation, multi-label ...) is a :class:`TaskKind`
subclass registered by name (see :mod:`conveyor.kinds`). The generic stages (ingest, curate,
split, contracts, train, evaluate, review, serving, monitoring, reports) ask the kind for what
differs and never branch on the task name themselves.

Heavy parts load lazily: :attr:`TaskKind.training` imports the torch module of the kind
(models, data sets, losses, metrics, ONNX export) only when training or evaluation asks for it,
so serving and the data plane stay free of torch.

The hooks, by concern (each kind overrides what it needs; the defaults suit single-label
image classification where one exists):

Spec and gates
    ``metrics`` (name -> "higher"/"lower"), ``per_class_metrics``, ``default_gate_metrics``,
    :meth:`validate_spec`, :meth:`check_classes`.
Data
    ``source_formats``, :meth:`collect`, ``annotation_columns``, :meth:`annotation_digest`,
    :meth:`class_frame`, ``contract_suites``, ``coverage_suite``, :meth:`contract_frames`,
    :meth:`profile_columns`.
Labels and review
    ``label_field``, :meth:`label_digest`, :meth:`labelstudio_config`,
    :meth:`labelstudio_prediction`, :meth:`labelstudio_parse`, :meth:`label_key`, ``csv_columns``,
    :meth:`csv_parse`, :meth:`machine_label`, ``feedback_trains``, ``finds_label_errors``.
Scoring and serving (numpy only)
    ``onnx_outputs``, ``batchable``, :meth:`decode_prediction`, :meth:`score`,
    :meth:`prediction_classes`.
Reports
    :meth:`report_sections` returning :class:`ReportSection` records.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Hashable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import polars as pl

    from conveyor.core.spec import Spec
    from conveyor.data.records import Collection
    from conveyor.labels.hardcases import Scored
    from conveyor.reporting.rundata import RunData
    from conveyor.serving.prediction import Prediction


@dataclass(frozen=True)
class ReportSection:
    """One section of the gate report that a task kind contributes.

    The notebook shows ``title`` as a heading, then ``markdown`` (if any), ``table`` (a pandas
    DataFrame, if any) and ``figure`` (a matplotlib Figure, if any), in that order. An empty ``title``
    continues the section before it (no heading).
    """

    title: str
    markdown: str | None = None
    table: Any = None
    figure: Any = None


class TaskKind:
    """Base class of a task kind. Subclasses set the class attributes and override the hooks."""

    #: The name used in specs (``task: <name>``), checkpoints and the registry.
    name: ClassVar[str]
    #: The metric of :meth:`training`'s ``epoch_metrics`` that picks the best epoch (higher is better).
    primary_metric: ClassVar[str]
    #: The module with the torch side of the kind (see :mod:`conveyor.kinds.classification.model`).
    training_module: ClassVar[str]

    @cached_property
    def training(self) -> ModuleType:
        """The torch adapter module: model building, data, losses, metrics and ONNX export."""
        return importlib.import_module(self.training_module)

    def __repr__(self) -> str:
        return f"<task kind {self.name}>"

    # ---- Spec and gates ------------------------------------------------------------------------

    #: Metrics the kind's evaluation reports, name -> "higher" | "lower" (the direction in which
    #: they improve). Latency and size metrics are generic (:data:`conveyor.core.spec.GENERIC_METRICS`).
    metrics: ClassVar[dict[str, str]] = {
        "accuracy": "higher", "f1": "higher", "precision": "higher", "recall": "higher", "ece": "lower",
    }
    #: Metrics that gate rules may also write per class, ``name[class]``.
    per_class_metrics: ClassVar[frozenset[str]] = frozenset({"recall", "precision", "f1"})
    #: Metrics the champion comparison uses when a spec names none.
    default_gate_metrics: ClassVar[tuple[str, ...]] = ("f1",)

    def validate_spec(self, spec: "Spec") -> None:
        """Kind-specific checks of a spec; raise ``ValueError`` naming the field. The default
        checks that the kind reads ``data.format``."""
        fmt = spec.data.format
        if fmt != "auto" and fmt not in self.source_formats:
            raise ValueError(f"data.format: task {self.name!r} reads {', '.join(self.source_formats)} "
                             f"(or auto), not {fmt!r}")

    def check_classes(self, classes: Sequence[str]) -> list[str]:
        """The class names as strings; ``ValueError`` when the list does not suit the kind."""
        names = [str(c) for c in classes]
        if not names:
            raise ValueError("classes is empty")
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise ValueError(f"classes repeat: {dup}")
        return names

    # ---- Data ----------------------------------------------------------------------------------

    #: ``data.format`` values the kind reads (``auto`` resolves to ``folder`` or ``manifest``).
    source_formats: ClassVar[tuple[str, ...]] = ("folder", "manifest")
    #: Manifest columns that carry annotations beyond ``label``.
    annotation_columns: ClassVar[tuple[str, ...]] = ()
    #: Kind-specific GX suites (JSON files in ``conveyor/data/suites``): the ones that replace the
    #: ``manifest`` / ``split_frame`` suites, derived-frame suites and :attr:`coverage_suite`.
    contract_suites: ClassVar[tuple[str, ...]] = ("manifest", "split_frame", "split_class_coverage")
    #: The suite that checks the per-(eval split, class) counts of :meth:`class_frame`.
    coverage_suite: ClassVar[str] = "split_class_coverage"

    def collect(self, spec: "Spec", src: "Path", fmt: str) -> "Collection":
        """List the source ``src`` of ``data.format`` ``fmt`` (resolved, never ``auto``) into a
        :class:`~conveyor.data.records.Collection`. The default reads folder and manifest sources."""
        from conveyor.data import sources
        from conveyor.data.records import IngestError

        if fmt not in self.source_formats:
            raise IngestError(f"data.format {fmt!r} is not a source of task {self.name!r}; "
                              f"it reads {', '.join(self.source_formats)}")
        return sources.collect_generic(spec, src, fmt)

    def annotation_digest(self, frame: "pl.DataFrame") -> str:
        """A hash of the annotations of the rows (beyond ``label``); "" when the frame has none."""
        return ""

    def class_frame(self, frame: "pl.DataFrame") -> "pl.DataFrame":
        """Columns ``split`` and ``cls``: one row per class occurrence of a row (here its label)."""
        import polars as pl

        return frame.select("split", pl.col("label").alias("cls"))

    def contract_frames(self, manifest: "pl.DataFrame", split: "pl.DataFrame | None",
                        spec: "Spec | None") -> "dict[str, pl.DataFrame | pd.DataFrame]":
        """Suite name -> the frame it validates, in the order to run. ``split`` None: the manifest
        suites (first the one that checks the manifest rows); else the split suites (first the
        one that checks the split rows). The class-coverage suite is not among them: it runs on
        the counts of :meth:`class_frame`. ``spec`` may be None (validation from parameters only)."""
        if split is None:
            return {"manifest": manifest}
        return {"split_frame": split}

    def profile_columns(self, manifest: "pl.DataFrame") -> "list[pl.Expr]":
        """Extra per-image features of the monitoring ``images`` stream."""
        return []
    # ---- Labels and review (numpy / polars; the kind's ``labelstudio_module``) ------------------------
    #: The module with the kind's Label Studio, review-CSV and label-storage functions.
    labelstudio_module: ClassVar[str]
    #: The field a label lives in: "label" | "boxes" | "mask" | "labels".
    label_field: ClassVar[str]
    #: The manifest columns :meth:`label_digest` reads (they also tell a manifest's kind apart).
    label_columns: ClassVar[tuple[str, ...]]
    #: Extra columns of the review CSV (after ``label``), e.g. detection's ``("boxes",)``.
    csv_columns: ClassVar[tuple[str, ...]] = ()
    #: Production feedback rows become training rows (True) or send their images to review (False).
    feedback_trains: ClassVar[bool] = False
    #: Whether suspected label errors of labelled images are searched for the review queue.
    finds_label_errors: ClassVar[bool] = False
    #: Whether every logged prediction names a class (the prediction table's ``predicted`` is required).
    prediction_required: ClassVar[bool] = False

    @cached_property
    def labelstudio(self) -> ModuleType:
        """The kind's Label Studio / review module (see :mod:`conveyor.kinds.detection.labelstudio`)."""
        return importlib.import_module(self.labelstudio_module)

    def labelstudio_classes(self, classes: Sequence[str]) -> list[str]:
        """The class names a review project of this kind uses, checked (ValueError says why)."""
        return self.labelstudio.check_classes(classes)

    def labelstudio_config(self, classes: Sequence[str]) -> str:
        """The Label Studio labelling config (XML)."""
        return self.labelstudio.config(classes)

    def labelstudio_prediction(self, item: Mapping, classes: Sequence[str]) -> list[dict] | None:
        """The pre-annotation result list of one queue item (None: no prediction)."""
        return self.labelstudio.prediction(item, classes)

    def labelstudio_parse(self, ctx: Any, result: list, info: Mapping, where: str) -> Any:
        """One exported annotation's result list to a label value (raises
        :class:`conveyor.labels.labelstudio.imports.Reject`)."""
        return self.labelstudio.parse(ctx, result, info, where)

    def label_key(self, value: Any) -> Hashable:
        """What two labels of one image are compared by."""
        return self.labelstudio.label_key(value)

    def csv_parse(self, ctx: Any, rec: Mapping, where: str) -> Any:
        """One filled row of the review CSV to a label value (raises ``Reject``)."""
        return self.labelstudio.csv_parse(ctx, rec, where)

    def csv_cells(self, item: Mapping, classes: Sequence[str]) -> dict[str, str]:
        """The ``predicted`` cell and the :attr:`csv_columns` cells of one queue item's CSV row."""
        return self.labelstudio.csv_cells(item, classes)

    def label_digest(self, reviewed: pl.DataFrame) -> list[str]:
        """One string per row, stored as the label in a label version (rows of a manifest or of
        the reviewed labels)."""
        return self.labelstudio.label_digest(reviewed)

    def review_record(self, value: Any, save_mask: Callable[[np.ndarray], tuple[str, str]]) -> dict[str, Any]:
        """A label value as columns of the stored reviewed labels (``label`` / ``boxes`` JSON /
        ``mask_path`` + ``mask_hash``); ``save_mask`` stores a mask and returns (path, sha256)."""
        return self.labelstudio.review_record(value, save_mask)

    def review_columns(self, records: Sequence[Mapping], classes: Sequence[str]) -> list[pl.Series]:
        """Manifest annotation columns for stored reviewed-label records (see :meth:`review_record`)."""
        return self.labelstudio.review_columns(records, classes)

    def class_counts(self, frame: pl.DataFrame) -> dict[str, int]:
        """How often each class occurs in the labels of a manifest's rows."""
        return self.labelstudio.class_counts(frame)

    def machine_label(self, outputs: Mapping[str, np.ndarray], classes: Sequence[str], threshold: float,
                      **ctx: Any) -> Any | None:
        """An auto-label from one image's raw ONNX outputs, or None when not sure enough. ``ctx``:
        ``size`` (model side), ``width`` / ``height`` (original pixels), ``ignore_index``."""
        return self.serving.machine_label(outputs, classes, threshold, **ctx)

    # ---- Scoring and serving (numpy only; the kind's ``serving_module``) ------------------------------
    #: The module with the kind's decoders and scores (numpy only, no torch).
    serving_module: ClassVar[str]
    #: Output names of the exported graph.
    onnx_outputs: ClassVar[tuple[str, ...]]
    #: Whether the ONNX graph takes N images per call.
    batchable: ClassVar[bool] = True

    @cached_property
    def serving(self) -> ModuleType:
        """The kind's numpy decoders (see :mod:`conveyor.kinds.classification.serving`)."""
        return importlib.import_module(self.serving_module)

    def decode_prediction(self, outputs: Mapping[str, np.ndarray], classes: list[str], size: int, width: int,
                          height: int) -> Prediction:
        """The service's answer and the prediction log's fields for one image's outputs."""
        return self.serving.decode(outputs, classes, size, width, height)

    def score(self, outputs: Mapping[str, np.ndarray], classes: Sequence[str]) -> Scored:
        """Hard-case measures of one image's outputs (with or without the batch axis)."""
        return self.serving.score(outputs, classes)

    def prediction_classes(self, classes: Sequence[str]) -> set[str]:
        """The names a logged prediction may carry."""
        return self.serving.prediction_classes(classes)
    # ---- Reports ------------------------------------------------------------------------------------
    def report_sections(self, run: "RunData") -> list[ReportSection]:
        """The kind's sections of the gate report (its quality figures and examples), drawn from ``run``
        (:class:`conveyor.reporting.rundata.RunData`). A kind without its own sections says so."""
        return [ReportSection("Model quality", markdown=f"No figures for task kind {self.name!r}.")]

    def class_count_unit(self) -> str:
        """What one class occurrence in the split's per-class counts is (images; detection: boxes)."""
        return "images"

    # ---- Slices (per-image records for sliced gates) --------------------------------------------------
    #: The metrics :meth:`slice_metrics` computes on any subset of the test images. A metric of the kind
    #: that is not listed has no per-image decomposition: sliced gates report it as "not sliceable".
    sliceable_metrics: ClassVar[frozenset[str]] = frozenset()

    def slice_metrics(self, predictions: "pl.DataFrame", classes: Sequence[str]) -> dict[str, float]:
        """The kind's metrics on a subset of its per-image prediction records (the rows the torch
        adapter's ``prediction_records`` wrote, one per image), keyed as the evaluation keys them.
        Only the :attr:`sliceable_metrics` (and their per-class forms) are computed; by default none."""
        return {}
