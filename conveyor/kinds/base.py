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
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import pandas as pd
    import polars as pl

    from conveyor.core.spec import Spec
    from conveyor.data.records import Collection


@dataclass(frozen=True)
class ReportSection:
    """One section of the gate report that a task kind contributes.

    The notebook shows ``title`` as a heading, then ``markdown`` (if any), ``table`` (a pandas
    DataFrame, if any) and ``figure`` (a matplotlib Figure, if any), in that order.
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
