"""What the gate report reads from a run folder, loaded once into a typed record.

:meth:`RunData.load` reads the run folder a cycle left behind (``summary.json``, ``run.json``,
``spec.yaml``, ``contracts.json``) and the files the summary names (the challenger's and the
champion's ``metrics.json``, ``predictions.parquet``, the split table, the registered version).
Every part may be missing: the report says so instead of failing. The report notebook draws the
generic sections from it and hands it to the task kind for the kind's sections
(:meth:`conveyor.kinds.base.TaskKind.report_sections`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import polars as pl
import yaml

from conveyor import kinds
from conveyor.core.summary import RunSummary



def read_json(path: str | Path | None) -> Any:
    """The JSON document at ``path``; None when there is no path or no file."""
    p = Path(path) if path else None
    if p is None or not p.is_file():
        return None
    return json.loads(p.read_text())


def read_table(path: str | Path | None) -> pl.DataFrame | None:
    """The Parquet table at ``path``; None when there is no path or no file."""
    p = Path(path) if path else None
    if p is None or not p.is_file():
        return None
    return pl.read_parquet(p)


@dataclass(frozen=True)
class RunData:
    """A run folder's outputs, as the gate report draws them."""

    run_dir: Path
    workspace: Path
    summary: RunSummary | None  # None: the cycle stopped before writing summary.json
    run_info: dict[str, Any]  # run.json
    spec: dict[str, Any]  # the resolved spec (spec.yaml) as a document
    task: str
    name: str
    model_dir: Path | None
    version_record: dict[str, Any] | None  # the registered version's version.json
    challenger: dict[str, Any] | None  # the challenger's metrics.json
    champion: dict[str, Any] | None  # the champion's metrics.json, evaluated on the same frozen set
    metrics: dict[str, Any]  # the challenger's flat metrics
    champion_metrics: dict[str, Any]
    predictions: pl.DataFrame | None  # the challenger's predictions.parquet on the test split
    split_rows: pl.DataFrame | None  # the split table (id, path, split, annotations ...)
    classes: list[str]  # class order: rows and columns of the confusion matrix
    contracts: dict[str, Any] | None  # contracts.json
    max_examples: int = 8  # images per example gallery
    evaluation: dict[str, Any] = field(default_factory=dict)  # the summary's evaluation paths

    @classmethod
    def load(cls, run_dir: str | Path, workspace: str | Path | None = None, max_examples: int = 8) -> "RunData":
        run = Path(run_dir).expanduser().resolve()
        if not run.is_dir():
            raise FileNotFoundError(f"run folder {run} does not exist")
        summary = RunSummary.load(run / "summary.json") if (run / "summary.json").is_file() else None
        run_info = read_json(run / "run.json") or {}
        spec = (yaml.safe_load((run / "spec.yaml").read_text()) if (run / "spec.yaml").is_file() else None) or {}
        ws = Path(workspace or (summary.workspace if summary else None) or run.parent.parent)
        task = (summary.task if summary else None) or spec.get("task") or kinds.LEGACY_TASK
        name = (summary.spec if summary else None) or run_info.get("spec") or spec.get("name") or "?"
        model_dir = Path(summary.model_dir) if summary and summary.model_dir else None
        evaluation = summary.evaluation.model_dump() if summary and summary.evaluation else {}
        challenger = (read_json(evaluation.get("metrics_path"))
                      or (read_json(model_dir / "metrics.json") if model_dir else None))
        champion = read_json(evaluation.get("champion_metrics_path"))
        predictions = read_table(evaluation.get("predictions_path") or (challenger or {}).get("predictions_path"))
        split_rows = read_table(summary.split.path if summary and summary.split else None)
        # class order (confusion matrix rows); metrics.json's per_class is written with sorted keys
        classes = list((challenger or {}).get("classes") or (spec.get("data") or {}).get("classes") or [])
        if not classes or set(classes) != set((challenger or {}).get("per_class") or classes):
            classes = list(((challenger or {}).get("per_class") or {}).keys())
        metrics = (summary.metrics if summary else None) or (challenger or {}).get("metrics") or {}
        champion_metrics = (summary.champion_metrics if summary else None) or (champion or {}).get("metrics") or {}
        return cls(run_dir=run, workspace=ws, summary=summary, run_info=run_info, spec=spec, task=task, name=name,
                   model_dir=model_dir, version_record=read_json(model_dir / "version.json") if model_dir else None,
                   challenger=challenger, champion=champion, metrics=metrics, champion_metrics=champion_metrics,
                   predictions=predictions, split_rows=split_rows, classes=classes,
                   contracts=read_json(run / "contracts.json"), max_examples=max_examples, evaluation=evaluation)

    # ---- what the sections share ------------------------------------------------------------------
    @property
    def per_class(self) -> dict[str, dict[str, Any]]:
        """The challenger's per-class metrics."""
        return (self.challenger or {}).get("per_class") or {}

    @property
    def champion_per_class(self) -> dict[str, dict[str, Any]]:
        return (self.champion or {}).get("per_class") or {}

    @property
    def class_names(self) -> list[str]:
        """The classes that have per-class metrics, in class order."""
        return [c for c in self.classes if c in self.per_class] or list(self.per_class)

    @property
    def champion_label(self) -> str:
        """How figures name the champion: "champion v<n>"."""
        version = (self.champion or {}).get("version") or (self.summary.champion_version if self.summary else None)
        return f"champion v{version or ''}".strip()

    def split_rows_by_id(self, ids: Iterable[str], columns: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """The split table's rows of ``ids`` by id: ``id``, ``path`` and those of ``columns`` the table has
        (a kind's annotations, image size); {} without a split table."""
        if self.split_rows is None or "path" not in self.split_rows.columns:
            return {}
        cols = [c for c in ("id", "path", *columns) if c in self.split_rows.columns]
        rows = self.split_rows.filter(pl.col("id").is_in(list(ids))).select(cols).to_dicts()
        return {r["id"]: r for r in rows}
