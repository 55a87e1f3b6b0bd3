"""The run summary: what one cycle did, as a typed, versioned record.

The cycle flow builds a :class:`RunSummary` and writes it as ``<run folder>/summary.json``; the gate
report, the publish task and the cycle's events read the record, and ``conveyor run --json`` prints it.
There is one JSON form, :meth:`RunSummary.to_json`: the keys and values the cycle has always written
(tests and scripts read them by name) plus ``schema_version``.

A cycle that a trigger started while another one ran, or within the cool-down, stops before any stage
and writes a short summary: the run's identity, ``decision: skipped`` and ``skipped_because``. Its JSON
form holds those keys only (:data:`SKIPPED_KEYS`); a completed cycle's has every key but
``skipped_because``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_serializer

from conveyor.core.io import atomic_write_json

SCHEMA_VERSION = 1

#: Fields of a gate outcome that only sliced gates and champion intervals set; written only when set.
SLICED_FIELDS = ("status", "slice", "n", "delta", "ci_low", "ci_high")

#: The keys of a skipped cycle's summary (besides ``schema_version``).
SKIPPED_KEYS = ("run_id", "spec", "task", "trigger", "reason", "workspace", "run_dir", "decision", "skipped_because")


class _Record(BaseModel):
    # metrics may be NaN (json writes NaN, as the summary always had); "model_*" are field names here
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants", protected_namespaces=())


class RuleResult(_Record):
    """One gate rule's outcome (``conveyor.release.gate.RuleOutcome.to_dict()``)."""

    rule: str
    kind: str  # "absolute" | "champion"
    metric: str
    op: str
    threshold: float | None
    value: float | None
    passed: bool
    reason: str
    champion_value: float | None = None
    status: str = ""  # "pass" | "fail" | "too small to judge" | "not sliceable"; "" before sliced gates
    slice: str | None = None  # e.g. "camera cam-03"; None: the whole test split
    n: int | None = None
    delta: float | None = None  # challenger minus champion
    ci_low: float | None = None  # paired bootstrap 95% interval of delta
    ci_high: float | None = None

    @model_serializer(mode="wrap")
    def _sliced_fields_when_set(self, handler) -> dict[str, Any]:
        """The slice and interval fields only where the gate set them (the form outcomes always had)."""
        data = handler(self)
        for key in SLICED_FIELDS:
            if data.get(key) in (None, ""):
                data.pop(key, None)
        return data

    @property
    def result(self) -> str:
        """"pass", "fail", "too small to judge" or "not sliceable"."""
        return self.status or ("pass" if self.passed else "fail")

    @property
    def interval(self) -> str | None:
        """The 95% interval of challenger minus champion, as text; None without one."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return f"{self.delta:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"


class ReviewCounts(_Record):
    """The label and review loop of the cycle (``conveyor.labels.stage.LabelStageResult``)."""

    auto_labeled: int = 0
    queued: int = 0
    queue: dict[str, Any] | None = None
    pool: dict[str, Any] = {}
    feedback: dict[str, Any] = {}
    reviewed: int = 0
    selection: dict[str, Any] = {}


class DatasetCounts(_Record):
    """Where the images came from and what ingest and curation kept."""

    label_version: str | None = None
    labeled_version: str | None = None
    label_sources: dict[str, int] | None = None
    review: ReviewCounts | None = None
    received: int
    accepted: int
    quarantined: int
    quarantine_reasons: dict[str, int] = {}
    quarantine_path: str | None = None
    curated: int
    removed_reasons: dict[str, int] = {}
    removed_path: str | None = None
    annotations: dict[str, Any] | None = None  # detection: box counts and box quarantine reasons


class SplitSizes(_Record):
    split_version: str
    group_by: Any = None
    counts: dict[str, int]
    held_out_machine: int = 0
    groups: dict[str, int] = {}
    per_class: dict[str, dict[str, int]] = {}
    path: str | None = None


class EvaluationFiles(_Record):
    metrics_path: str | None = None
    predictions_path: str | None = None
    champion_metrics_path: str | None = None


class TrainingRun(_Record):
    checkpoint: str
    seconds: float
    epochs: int
    best_epoch: int
    tracking: dict[str, Any] | None = None  # the experiment-tracking run (conveyor.model.tracking)


class RunSummary(_Record):
    """What one cycle did. Fields in the order the summary has always listed them."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    spec: str
    task: str
    trigger: str
    reason: str | None = None
    workspace: str
    run_dir: str
    dataset_version: str | None = None
    decision: str  # promoted | rejected | skipped | pending_approval
    gate_summary: str | None = None
    reasons: list[RuleResult] = []
    metrics: dict[str, Any] = {}
    champion_metrics: dict[str, Any] | None = None
    model_version: int | None = None
    model_dir: str | None = None
    champion_version: int | None = None
    promotion: str | None = None  # what happened to the champion, in words
    rollout: dict[str, Any] | None = None  # the started rollout's state (conveyor.release.policy.ReleaseResult)
    approval: dict[str, Any] | None = None  # the approval request (conveyor.release.approval.request)
    dataset: DatasetCounts | None = None
    split: SplitSizes | None = None
    evaluation: EvaluationFiles | None = None
    train: TrainingRun | None = None
    onnx_max_abs_diff: float | None = None
    latency: dict[str, Any] = {}
    report: str | None = None  # the HTML gate report, once rendered
    skipped_because: str | None = None  # set on a cycle that stopped before any stage

    @property
    def skipped(self) -> bool:
        """Whether the cycle stopped before any stage (another cycle ran, or the cool-down)."""
        return self.skipped_because is not None

    @model_serializer(mode="wrap")
    def _one_form(self, handler) -> dict[str, Any]:
        data = handler(self)
        if self.skipped_because is None:
            data.pop("skipped_because", None)
            return data
        return {k: data[k] for k in ("schema_version", *SKIPPED_KEYS)}

    def to_json(self) -> dict[str, Any]:
        """The JSON form: what ``summary.json`` holds."""
        return self.model_dump(mode="json")

    def write(self, path: str | Path) -> Path:
        """Write the JSON form to ``path`` (atomically)."""
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "RunSummary":
        """Read a ``summary.json`` (one written before ``schema_version`` existed is version 1)."""
        return cls.model_validate(json.loads(Path(path).read_text()))
