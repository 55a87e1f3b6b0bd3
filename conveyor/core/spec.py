"""The pipeline spec: one typed, validated description of a continuous-training pipeline.

A spec is written in YAML and validated by pydantic. Defaults live here, in code. Relative
paths in a spec resolve against the folder of the spec file. ``Spec.resolved_yaml()`` is what
each run writes next to its outputs, and ``Spec.section_hash()`` gives content keys for caching.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Metrics every task kind's evaluation reports (latency and size), with the direction in which
# they improve. The kind's own metrics come from its ``metrics`` (conveyor.kinds.base.TaskKind).
GENERIC_METRICS: dict[str, str] = {
    "latency_p50_ms": "lower",
    "latency_p95_ms": "lower",
    "throughput_ips": "higher",
    "model_size_mb": "lower",
    "peak_memory_mb": "lower",
}


def metric_directions(task: str) -> dict[str, str]:
    """The metrics gate rules of a ``task`` spec may name (per-class ones are written
    ``name[class]``, e.g. ``recall[7]``), with the direction in which they improve."""
    from conveyor import kinds

    return {**kinds.get(task).metrics, **GENERIC_METRICS}


def per_class_metrics(task: str) -> frozenset[str]:
    """The metrics of ``task`` that gate rules may write per class."""
    from conveyor import kinds

    return frozenset(kinds.get(task).per_class_metrics)


class _AllMetrics(Mapping):
    """Metric name -> direction over every registered task kind, read when used (not at import)."""

    def _table(self) -> dict[str, str]:
        from conveyor import kinds

        table: dict[str, str] = {}
        for name in kinds.available():
            table.update(kinds.get(name).metrics)
        return {**table, **GENERIC_METRICS}

    def __getitem__(self, key: str) -> str:
        return self._table()[key]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


class _AllPerClass(AbstractSet):
    """The per-class metrics of every registered task kind, read when used."""

    def _names(self) -> frozenset[str]:
        from conveyor import kinds

        return frozenset().union(*(kinds.get(name).per_class_metrics for name in kinds.available()))

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


METRIC_DIRECTIONS: Mapping[str, str] = _AllMetrics()
"""Metrics of any task kind (see :func:`metric_directions` for one kind's)."""
PER_CLASS_METRICS: AbstractSet[str] = _AllPerClass()
"""Per-class metrics of any task kind (see :func:`per_class_metrics` for one kind's)."""

_RULE_RE = re.compile(
    r"^\s*(?P<metric>[a-z_0-9]+)(?:\[(?P<cls>[^\]]+)\])?\s*(?P<op>>=|<=|==|>|<)\s*(?P<value>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$"
)


class SpecError(ValueError):
    """A spec that cannot be loaded or validated. The message names the field."""


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(_Base):
    source: str = Field(description="An image folder (one sub-folder per class) or a CSV/Parquet/JSONL manifest.")
    format: str = Field(
        default="auto",
        description="How `source` is read: `folder` (one sub-folder per class), `manifest` (CSV, Parquet or JSONL), "
                    "or a task kind's own format such as `coco` or `yolo` (detection) and `masks` (segmentation); "
                    "`auto` picks `folder` for a directory and `manifest` for a file.",
    )
    annotations: str | None = Field(
        default=None,
        description="Detection: a COCO JSON file or a YOLO labels folder; segmentation: the masks folder.",
    )
    ignore_index: int = Field(default=255, ge=0, le=255, description="Mask value that marks unlabelled pixels.")
    classes: list[str] | None = Field(
        default=None, description="Allowed labels. If omitted, taken from the folder names or manifest labels."
    )
    min_side: int = Field(default=8, ge=1, description="Smallest accepted image side in pixels.")
    max_side: int = Field(default=8192, ge=1, description="Largest accepted image side in pixels.")
    max_pixels: int = Field(default=50_000_000, ge=1, description="Decompression-bomb limit (width x height).")
    max_file_mb: float = Field(
        default=64.0, gt=0,
        description="Largest accepted image file in MiB; a bigger file is quarantined as `too_large`.",
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from conveyor import kinds

        names = ["auto"]
        for task in kinds.available():
            names += [f for f in kinds.get(task).source_formats if f not in names]
        if v not in names:
            quoted = [repr(n) for n in names]
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": f"{', '.join(quoted[:-1])} or {quoted[-1]}"})
        return v

    @model_validator(mode="after")
    def _sides(self) -> "DataSpec":
        if self.min_side > self.max_side:
            raise ValueError(f"data.min_side ({self.min_side}) must be <= data.max_side ({self.max_side})")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("data.classes has repeated names")
        return self


class NearDuplicateSpec(_Base):
    enabled: bool = Field(
        default=True,
        description="Remove near-duplicates (images whose perceptual hashes are within `max_distance`).",
    )
    hash: Literal["phash", "dhash", "ahash", "whash"] = Field(
        default="phash",
        description="The perceptual hash (imagehash): `phash`, `dhash`, `ahash` or `whash`.",
    )
    hash_size: int = Field(
        default=8, ge=4, le=32,
        description="Side of the hash grid; the hash has `hash_size` squared bits.",
    )
    max_distance: int = Field(default=2, ge=0, description="Hamming distance at or below which two images are near-duplicates.")


class PrivacySpec(_Base):
    exclude_cameras: list[str] = Field(
        default_factory=list,
        description="Cameras whose images are dropped by curation (and never kept by the inference service).",
    )
    exclude_scenes: list[str] = Field(
        default_factory=list,
        description="Scenes whose images are dropped by curation (and never kept by the inference service).",
    )
    drop_missing_camera: bool = Field(default=False, description="Drop images that name no camera.")


class CurationSpec(_Base):
    exact_duplicates: Literal["drop", "keep"] = Field(
        default="drop",
        description="Images with the same content hash: `drop` keeps one of them, `keep` keeps them all.",
    )
    near_duplicates: NearDuplicateSpec = Field(
        default_factory=NearDuplicateSpec,
        description="Near-duplicate removal by perceptual hash.",
    )
    privacy: PrivacySpec = Field(
        default_factory=PrivacySpec,
        description="Cameras and scenes whose images never reach training.",
    )


class SplitSpec(_Base):
    ratios: dict[Literal["train", "val", "test"], float] = Field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15},
        description="Shares of train, val and test; they must sum to 1, and train and test must be above 0.",
    )
    group_by: Literal["camera", "scene", "time", "none"] = Field(
        default="camera",
        description="What no two splits may share: `camera`, `scene`, a `time` window, or `none` (image by image).",
    )
    time_window: str = Field(default="1d", description="Window for group_by: time, e.g. 6h, 1d, 7d.")
    frozen_eval: bool = Field(default=True, description="Keep val/test images fixed across cycles.")
    new_groups_to: Literal["train", "ratio"] = Field(
        default="train", description="Where images of groups never seen before go once the evaluation set is frozen."
    )
    min_per_class_eval: int = Field(default=1, ge=0, description="Minimum images of every class in val and test.")
    max_eval_loss: float = Field(
        default=0.05, ge=0.0, le=1.0,
        description="Largest share of the last cycle's evaluation images (val+test) that may be gone (deleted or "
                    "quarantined) before the data contracts fail.",
    )
    seed: int = Field(default=0, description="Seed of the deterministic hash order that assigns groups to splits.")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        missing = {"train", "val", "test"} - set(v)
        if missing:
            raise ValueError(f"split.ratios needs train, val and test; missing {sorted(missing)}")
        if any(r < 0 for r in v.values()):
            raise ValueError("split.ratios must be >= 0")
        total = sum(v.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split.ratios must sum to 1.0, got {total:g}")
        if v["train"] <= 0 or v["test"] <= 0:
            raise ValueError("split.ratios: train and test must be > 0")
        return v

    @field_validator("time_window")
    @classmethod
    def _window(cls, v: str) -> str:
        parse_duration_s(v)
        return v


class AugmentSpec(_Base):
    """Augmentations, applied to training images only."""

    random_crop_padding: int = Field(
        default=0, ge=0,
        description="Pad by this many pixels, then crop back to `image_size` at a random offset; 0: off.",
    )
    hflip: bool = Field(default=False, description="Flip images horizontally at random.")
    rotation_deg: float = Field(
        default=0.0, ge=0, le=180,
        description="Rotate by a random angle of up to this many degrees either way; 0: off.",
    )
    color_jitter: float = Field(
        default=0.0, ge=0, le=1,
        description="Strength of random colour changes (brightness, contrast, saturation), 0 to 1; 0: off.",
    )


class TrainSpec(_Base):
    model: str = Field(
        default="resnet10t",
        description="The model, from scratch (`pretrained=False`): a timm model name for classification, or a model "
                    "the task kind names (see the data sources page).",
    )
    image_size: int = Field(
        default=32, ge=8, le=2048,
        description="Side in pixels the images are resized to for training, evaluation and serving.",
    )
    epochs: int = Field(
        default=10, ge=1,
        description="Training epochs; the epoch with the best validation value of the kind's primary metric is kept.",
    )
    batch_size: int = Field(default=64, ge=1, description="Images per training step.")
    lr: float = Field(default=3e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(
        default=0.05, ge=0,
        description="Weight decay (not applied to biases and normalisation weights).",
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        default="adamw",
        description="`adamw`, or `sgd` (Nesterov momentum 0.9).",
    )
    scheduler: Literal["onecycle", "cosine", "none"] = Field(
        default="onecycle",
        description="Learning-rate schedule: `onecycle`, `cosine` or `none` (constant).",
    )
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=1,
        description="Label smoothing of the cross-entropy loss (classification and segmentation).",
    )
    seed: int = Field(
        default=0,
        description="Seed of initialisation, data order and augmentation; same seed and data give the same weights "
                    "on CPU.",
    )
    num_threads: int = Field(default=2, ge=1, description="torch threads used for training.")
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu",
        description="`cpu`, `cuda` (an error when no CUDA device is available) or `auto` (CUDA when available).",
    )
    augment: AugmentSpec = Field(
        default_factory=AugmentSpec,
        description="Augmentations, applied to training images only.",
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra arguments for the model constructor (e.g. `size` for detection models, `depth` and "
                    "`width` for the segmentation `unet`).",
    )


class GateRule(_Base):
    metric: str
    cls: str | None = None
    op: Literal[">=", "<=", ">", "<", "=="]
    threshold: float

    @property
    def key(self) -> str:
        return f"{self.metric}[{self.cls}]" if self.cls is not None else self.metric

    def __str__(self) -> str:
        return f"{self.key} {self.op} {self.threshold:g}"


def parse_rule(text: str, task: str | None = None) -> GateRule:
    """A gate rule ``metric[class] OP number``; the metric must be one that ``task`` reports (any
    task kind's when None)."""
    m = _RULE_RE.match(text)
    if not m:
        raise ValueError(f"gate rule {text!r} is not of the form 'metric OP number' (OP one of >=, <=, >, <, ==)")
    metric = m["metric"]
    known = METRIC_DIRECTIONS if task is None else metric_directions(task)
    per_class = PER_CLASS_METRICS if task is None else per_class_metrics(task)
    for_task = "" if task is None else f" for task {task!r}"
    if metric not in known:
        raise ValueError(f"gate rule {text!r}: unknown metric {metric!r}{for_task}; allowed: {', '.join(sorted(known))}")
    if m["cls"] is not None and metric not in per_class:
        raise ValueError(f"gate rule {text!r}: {metric} has no per-class form{for_task}; per-class metrics: {sorted(per_class)}")
    return GateRule(metric=metric, cls=m["cls"], op=m["op"], threshold=float(m["value"]))


# Metrics of the serving runtime: timed on a shared machine, so they gate by absolute rules only.
# A champion comparison on them would let clock noise decide between two models.
RUNTIME_METRICS = frozenset(GENERIC_METRICS)


class ChampionSpec(_Base):
    """The challenger must beat or tie the champion on each metric, within ``tolerance``.

    ``metrics`` defaults to the quality metrics that ``gates.rules`` name (not the runtime ones).
    """

    metrics: list[str] = Field(
        default_factory=list,
        description="Metrics on which the challenger must beat or tie the champion, both measured on the same frozen"
                    " test split; default: the quality metrics the gate rules name (runtime metrics such as latency "
                    "gate by absolute rules only).",
    )
    tolerance: float = Field(
        default=0.0, ge=0,
        description="How much worse than the champion a challenger may be on each metric and still pass.",
    )

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            base = name.split("[", 1)[0]
            if base not in METRIC_DIRECTIONS:
                raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(sorted(METRIC_DIRECTIONS))}")
        return v


class GatesSpec(_Base):
    rules: list[str] = Field(
        default_factory=lambda: ["f1 >= 0.92", "ece <= 0.03", "latency_p95_ms <= 25"],
        description="Absolute rules `metric OP number` (OP one of `>=`, `<=`, `>`, `<`, `==`), e.g. `f1 >= 0.92`, "
                    "`latency_p95_ms <= 25`, `recall[cat] >= 0.8`; a metric that was not measured fails its rule.",
    )
    champion: ChampionSpec = Field(
        default_factory=ChampionSpec,
        description="Rules relative to the current champion.",
    )
    require_approval: bool = Field(
        default=False,
        description="A challenger that passes the gate waits for a reviewer (`conveyor approve` / `conveyor reject`) "
                    "before it is promoted or its rollout starts.")
    slices: list[str] = Field(
        default_factory=list,
        description="Manifest columns (e.g. `camera`, `scene`) whose values each gate as a slice of the test split: "
                    "the absolute rules apply to every slice with at least `min_slice_size` images, and the champion "
                    "comparison rejects a slice where the paired bootstrap interval of challenger minus champion lies "
                    "entirely beyond `champion.tolerance`. Smaller slices are reported as too small to judge.")
    min_slice_size: int = Field(
        default=30, ge=1,
        description="Test images a slice needs before the gate judges it; smaller slices never block.")
    bootstrap_resamples: int = Field(
        default=1000, ge=100,
        description="Paired bootstrap resamples of the test images for the champion comparison's 95% intervals.")
    bootstrap_seed: int = Field(default=0, description="Seed of the paired bootstrap (the intervals are reproducible).")

    @field_validator("rules")
    @classmethod
    def _parse(cls, v: list[str]) -> list[str]:
        for r in v:
            parse_rule(r)
        return v

    @model_validator(mode="after")
    def _needs_a_rule(self) -> "GatesSpec":
        """A gate without an absolute rule would promote anything; the champion comparison
        defaults to the rules' quality metrics."""
        rules = self.parsed_rules()
        if not rules:
            raise ValueError("gates.rules is empty: give at least one absolute rule (e.g. 'f1 >= 0.9'); "
                             "a gate with no rule would promote any model")
        if "metrics" not in self.champion.model_fields_set:
            self.champion.metrics = list(dict.fromkeys(r.key for r in rules if r.metric not in RUNTIME_METRICS))
            self.champion.model_fields_set.discard("metrics")  # still a default: derived, not given
        return self

    def parsed_rules(self) -> list[GateRule]:
        return [parse_rule(r) for r in self.rules]


class RolloutAlerts(_Base):
    """Limits on the challenger's live metrics during a rollout; one breach rolls it back."""

    max_error_rate: float = Field(default=0.02, ge=0, le=1, description="Share of challenger answers that are errors.")
    max_latency_p95_ms: float | None = Field(default=None, gt=0, description="Challenger p95 latency; None: no limit.")
    max_latency_ratio: float | None = Field(
        default=1.5, gt=0, description="Challenger p95 latency / champion p95 latency; None: no limit.")
    max_confidence_drop: float | None = Field(
        default=0.1, ge=0, le=1, description="Champion mean confidence minus the challenger's; None: no limit.")
    max_disagreement: float | None = Field(
        default=0.2, ge=0, le=1,
        description="Shadow only: share of requests where the challenger's class differs from the champion's.")
    min_feedback_precision: float | None = Field(
        default=None, gt=0, le=1,
        description="Precision of the challenger on labelled feedback (joined by prediction_id); None: not checked.")
    min_feedback: int = Field(default=20, ge=1, description="Labelled rows needed before the feedback precision counts.")
    min_requests: int = Field(
        default=20, ge=1,
        description="Challenger answers needed to judge; fewer at the end of the window rolls back.")


class DeploySpec(_Base):
    strategy: Literal["replace", "shadow", "canary", "blue_green"] = Field(
        default="replace",
        description="`replace` moves the champion alias at once; `shadow`, `canary` and `blue_green` start a rollout"
                    " that promotes or rolls back on live metrics.",
    )
    traffic: float = Field(default=1.0, gt=0, le=1, description="Share of traffic for the challenger (canary).")
    duration: str = Field(default="1h", description="How long a shadow or canary phase lasts, e.g. 30m, 1h.")
    alerts: RolloutAlerts = Field(
        default_factory=RolloutAlerts,
        description="Limits on the challenger's live metrics during a rollout.",
    )
    sticky_header: str | None = Field(
        default="X-Request-Key", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        description="Canary: requests with the same value of this header go to the same model; None: random.")
    check_every: str = Field(default="10s", description="How often a running rollout's live metrics are checked.")
    max_duration: str | None = Field(
        default=None,
        description="How long a rollout may run when its alerts lack the evidence to judge the challenger "
                    "(too few answers, no latencies or feedback to compare): it is extended past `duration` up to "
                    "this, then rolled back for not enough evidence. Default: three times `duration`.")
    bake: str = Field(
        default="10m",
        description="blue_green: how long the challenger serves all traffic, under the same alerts, before it "
                    "is promoted.")
    capture: float = Field(
        default=1.0, ge=0, le=1,
        description="Share of answered requests whose image the service keeps (content-addressed) so that "
                    "feedback and hard cases can reach training; 0: none.")

    @field_validator("duration", "check_every", "bake")
    @classmethod
    def _dur(cls, v: str, info) -> str:
        if parse_duration_s(v) <= 0:
            raise ValueError(f"deploy.{info.field_name} {v!r} must be longer than 0")
        return v

    @model_validator(mode="after")
    def _max_duration(self) -> "DeploySpec":
        if self.max_duration is not None and parse_duration_s(self.max_duration) < parse_duration_s(self.duration):
            raise ValueError(f"deploy.max_duration {self.max_duration!r} is shorter than deploy.duration "
                             f"{self.duration!r}")
        return self

    @property
    def max_duration_s(self) -> float:
        """The longest a rollout runs before it is rolled back for lack of evidence."""
        if self.max_duration is not None:
            return parse_duration_s(self.max_duration)
        return 3 * parse_duration_s(self.duration)


# Features the monitor profiles. Image-stream features come from incoming images (ingest and
# `conveyor observe --images`); prediction-stream features from the production prediction log.
IMAGE_FEATURES: dict[str, str] = {
    "brightness": "numeric", "contrast": "numeric", "saturation": "numeric", "hue": "numeric",
    "sharpness": "numeric", "width": "numeric", "height": "numeric",
    "objects": "numeric", "object_size": "numeric",  # detection: boxes per image, relative box side
    "labels_per_image": "numeric",  # multi-label: labels an image carries
    "label": "categorical", "camera": "categorical",
}
PREDICTION_FEATURES: dict[str, str] = {
    "confidence": "numeric", "predicted": "categorical",
    "predicted_objects": "numeric", "predicted_object_size": "numeric",  # detection
    "predicted_foreground": "numeric",  # segmentation: share of pixels not predicted as background
    "predicted_count": "numeric",  # multi-label: how many labels a prediction names
}
DRIFT_FEATURES: dict[str, str] = {**IMAGE_FEATURES, **PREDICTION_FEATURES}


class ScheduleTrigger(_Base):
    cron: str = Field(
        description="Five-field cron expression (minute hour day month weekday) of the cycle deployment's schedule.",
    )
    timezone: str = Field(
        default="UTC",
        description="IANA time zone the cron expression is read in, e.g. `UTC`, `Europe/Berlin`.",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        fields = v.split()
        if len(fields) != 5:
            raise ValueError(f"triggers.schedule.cron {v!r} must have 5 fields (minute hour day month weekday)")
        from datetime import datetime, timezone

        from cronsim import CronSim, CronSimError

        try:
            CronSim(v, datetime.now(timezone.utc))
        except CronSimError as err:
            raise ValueError(f"triggers.schedule.cron {v!r} is not a valid cron expression: {err}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"triggers.schedule.timezone {v!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return v


def _duration(v: str) -> str:
    parse_duration_s(v)
    return v


class DriftTrigger(_Base):
    features: list[str] = Field(
        default_factory=lambda: ["brightness", "contrast"], min_length=1,
        description="Image and prediction features to test for drift (see the monitoring page for the list).",
    )
    window: str = Field(default="7d", description="Rolling window of incoming batches compared with the baseline.")
    test: Literal["ks", "hellinger"] = Field(
        default="ks", description="Statistical test on numeric features (categorical ones use chi-square).")
    pvalue: float = Field(default=0.05, gt=0, lt=1, description="ks / chi-square: drift when the p-value is below this.")
    hellinger: float = Field(default=0.15, gt=0, le=1, description="hellinger: drift when the distance is above this.")
    min_relative_change: float = Field(
        default=0.15, ge=0,
        description="Practical margin: numeric features must also shift their mean by more than this fraction "
                    "(0.15 = 15%); categorical ones must move this much probability mass (total variation).")
    min_samples: int = Field(default=30, ge=1, description="Fewer rows than this in the window is reported as "
                                                           "not enough data, never as no drift.")
    per_camera: bool = Field(default=True, description="Also test each camera's window on its own.")

    _w = field_validator("window")(classmethod(lambda cls, v: _duration(v)))

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        unknown = [f for f in v if f not in DRIFT_FEATURES]
        if unknown:
            raise ValueError(f"unknown drift feature(s) {unknown}; known: {sorted(DRIFT_FEATURES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"drift features repeat: {v}")
        return v


class PerformanceTrigger(_Base):
    metric: Literal["f1", "precision", "recall", "accuracy"] = Field(
        default="f1",
        description="Rolling metric over the feedback window: `f1`, `precision`, `recall` (macro over the classes "
                    "present) or `accuracy`.",
    )
    below: float = Field(gt=0, le=1, description="The trigger fires when the rolling metric is below this value.")
    window: str = Field(default="7d", description="Rolling window of feedback rows, e.g. `7d`.")
    min_samples: int = Field(
        default=50, ge=1,
        description="Fewer feedback rows than this in the window is reported as not enough data, never as a pass.",
    )
    feedback: str = Field(
        default="feedback.csv",
        description="Ground truth arriving for a sample of predictions: a CSV/Parquet/JSONL table the user appends "
                    "to, with columns timestamp, label and predicted (or prediction_id, joined with the prediction "
                    "log), optionally camera. Relative to the spec's folder.")

    _w = field_validator("window")(classmethod(lambda cls, v: _duration(v)))


class TriggersSpec(_Base):
    schedule: ScheduleTrigger | None = Field(
        default=None,
        description="Start cycles on a cron schedule; none by default.",
    )
    drift: DriftTrigger | None = Field(
        default=None,
        description="Start a cycle when incoming images or predictions drift from the champion's baseline; off by "
                    "default.",
    )
    performance: PerformanceTrigger | None = Field(
        default=None,
        description="Start a cycle when the rolling metric on production feedback falls below a target; off by "
                    "default.",
    )
    webhook: bool = Field(default=False, description="Accept signed webhook calls (`conveyor webhook`).")
    cooldown: str = Field(
        default="6h", description="A fired trigger starts no cycle while one runs or within this long of the last "
                                  "start. Manual runs are exempt from the cool-down.")
    monitor_every: str = Field(default="1h", description="How often the monitor deployment evaluates the triggers.")

    _d = field_validator("cooldown", "monitor_every")(classmethod(lambda cls, v: _duration(v)))


STRATEGIES = ("uncertainty", "disagreement", "rare", "diversity")


class HardCaseMix(_Base):
    """Shares of the review budget per strategy; an unfilled share passes to the next strategy.
    Without a mix in the spec the defaults hold; a mix in the spec names every share it wants."""

    uncertainty: float = Field(default=0.4, ge=0, le=1, description="Images the champion is least sure about.")
    disagreement: float = Field(default=0.2, ge=0, le=1,
                                description="Images where the champion and the latest challenger disagree.")
    rare: float = Field(default=0.15, ge=0, le=1, description="Images predicted as a new or rare class.")
    diversity: float = Field(default=0.15, ge=0, le=1,
                             description="A spread of the rest (near-duplicates collapsed), so the queue is not "
                                         "all one corner of the data.")
    label_errors: float = Field(
        default=0.1, ge=0, le=1,
        description="Labelled images whose label the champion contradicts with at least "
                    "labeling.suspect_confidence (suspected label errors; classification).")

    @model_validator(mode="before")
    @classmethod
    def _given_only(cls, data: Any) -> Any:
        """A mix written in a spec is the whole mix: strategies it leaves out get no share."""
        if isinstance(data, dict) and data:
            return {k: data.get(k, 0.0) for k in cls.model_fields} | data
        return data

    @model_validator(mode="after")
    def _sum(self) -> "HardCaseMix":
        total = self.uncertainty + self.disagreement + self.rare + self.diversity + self.label_errors
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"labeling.mix must sum to 1.0, got {total:g}")
        return self


class FeedbackLabelsSpec(_Base):
    """Production feedback (true labels for served predictions) as training data of the next cycle."""

    enabled: bool = Field(
        default=True,
        description="Use production feedback (true labels for served predictions) in the next cycle.",
    )
    source: str | None = Field(
        default=None, description="The feedback table (timestamp, label, prediction_id); default: "
                                  "triggers.performance.feedback, else feedback.csv beside the spec.")
    window: str = Field(default="7d", description="The wrong answers (false positives and negatives) of this last "
                                                  "window come first.")
    max_images: int = Field(default=1000, ge=0, description="Feedback images added to training per cycle at most.")
    balance: Literal["none", "equal"] = Field(
        default="equal", description="equal: the images are shared out evenly over the true classes; none: newest "
                                     "first.")

    _w = field_validator("window")(classmethod(lambda cls, v: _duration(v)))


class LabelingSpec(_Base):
    """The label and review loop: auto-labels, the review queue, production images and feedback."""

    unlabeled: str | None = Field(
        default=None, description="A folder (any depth, optional metadata sidecar) or a manifest (path, camera, "
                                  "scene, captured_at) of images without labels.")
    production: bool = Field(
        default=True, description="Also take the images the inference service captured (deploy.capture).")
    auto_label_threshold: float | None = Field(
        default=0.98, gt=0, le=1,
        description="Images the champion labels with at least this confidence get a machine label (training "
                    "only, never val/test); None: no auto-labels.")
    uncertainty: Literal["least_confidence", "margin", "entropy"] = Field(
        default="margin",
        description="How the uncertainty share ranks images: `least_confidence`, `margin` or `entropy`.",
    )
    budget: int = Field(default=100, ge=0, description="Images sent to human review per cycle.")
    mix: HardCaseMix = Field(
        default_factory=HardCaseMix,
        description="Shares of the review budget per hard-case strategy.",
    )
    suspect_confidence: float = Field(
        default=0.9, gt=0, le=1,
        description="A labelled image is a suspected label error when the champion predicts another class with "
                    "at least this confidence.")
    rare_share: float = Field(
        default=0.05, ge=0, lt=1,
        description="A class with less than this share of the labelled training data (or none) is rare.")
    image_url: str | None = Field(
        default=None, description="Prefix for the image URLs in the Label Studio export (e.g. "
                                  "/data/local-files/?d=); default: the local file path.")
    feedback: FeedbackLabelsSpec = Field(
        default_factory=FeedbackLabelsSpec,
        description="Production feedback as training data or review candidates.",
    )


class Spec(_Base):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="The pipeline's name: registry entries, workspace folders, Prefect deployments and events are "
                    "keyed by it.",
    )
    task: str = Field(
        description="The task kind (`classification`, `detection`, `segmentation`, or another registered kind).",
    )
    description: str = Field(default="", description="Free text; added to the Prefect deployments' description.")
    workspace: str | None = Field(default=None, description="Where runs write their state; default: ./workspace beside the spec.")
    data: DataSpec = Field(description="The labelled source and the checks every image passes.")
    curation: CurationSpec = Field(default_factory=CurationSpec, description="Duplicates and privacy rules.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="How images are assigned to train, val and test.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="The model and its training.")
    gates: GatesSpec = Field(
        default_factory=GatesSpec,
        description="What a challenger must reach before it is registered as passing and promoted.",
    )
    deploy: DeploySpec = Field(
        default_factory=DeploySpec,
        description="How a passing challenger replaces the champion.",
    )
    triggers: TriggersSpec = Field(
        default_factory=TriggersSpec,
        description="What starts a cycle besides a manual run.",
    )
    labeling: LabelingSpec = Field(
        default_factory=LabelingSpec,
        description="The label and review loop: auto-labels, the review queue, production images and feedback.",
    )

    # Set by load_spec: the folder relative paths resolve against. Not part of the hash.
    base_dir: str | None = Field(default=None, exclude=True)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from conveyor import kinds

        names = kinds.available()
        if v not in names:
            quoted = [repr(n) for n in names]
            expected = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return v

    @model_validator(mode="after")
    def _task_checks(self) -> "Spec":
        """The task kind's own checks, and the gate metrics the spec names against the kind's
        metrics (rules and champion metrics left at their defaults are not checked)."""
        from conveyor import kinds

        kind = kinds.get(self.task)
        kind.validate_spec(self)
        if "rules" in self.gates.model_fields_set:
            for rule in self.gates.rules:
                parse_rule(rule, self.task)
        known = metric_directions(self.task)
        for name in self.gates.champion.metrics:
            if name.split("[", 1)[0] not in METRIC_DIRECTIONS:
                raise ValueError(f"gates.champion.metrics: unknown metric {name!r}")
            if "metrics" in self.gates.champion.model_fields_set and name.split("[", 1)[0] not in known:
                raise ValueError(f"gates.champion.metrics: unknown metric {name!r} for task {self.task!r}; "
                                 f"allowed: {', '.join(sorted(known))}")
        return self

    # ---- paths -------------------------------------------------------------------------
    def resolve_path(self, p: str) -> Path:
        path = Path(p).expanduser()
        if not path.is_absolute() and self.base_dir:
            path = Path(self.base_dir) / path
        return path.resolve()

    @property
    def source_path(self) -> Path:
        return self.resolve_path(self.data.source)

    def workspace_path(self, override: str | Path | None = None) -> Path:
        if override is not None:
            return Path(override).expanduser().resolve()
        if self.workspace:
            return self.resolve_path(self.workspace)
        return self.resolve_path("workspace")

    # ---- serialisation and hashing ---------------------------------------------------------
    def resolved_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d["data"]["source"] = str(self.source_path)
        if d.get("workspace"):
            d["workspace"] = str(self.resolve_path(d["workspace"]))
        return d

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False)

    def section_hash(self, *sections: str) -> str:
        """Content hash of the named sections (all of them when none are named)."""
        d = self.resolved_dict()
        if sections:
            d = {k: d[k] for k in sections}
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def spec_hash(self) -> str:
        return self.section_hash()


def parse_duration_s(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not m:
        raise ValueError(f"duration {text!r} must be a number followed by s, m, h, d or w (e.g. 30m, 1d)")
    return float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m[2]]


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid spec {origin}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']}"
        elif e["type"] == "extra_forbidden":
            msg = "is not a known field"
        elif e["type"] == "missing":
            msg = "is required"
        got = e.get("input")
        got_s = "" if e["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {loc}: {msg}{got_s}")
    return "\n".join(lines)


def spec_from_dict(data: dict[str, Any], base_dir: str | Path | None = None, origin: str = "<dict>") -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"invalid spec {origin}: the top level must be a mapping, got {type(data).__name__}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, origin)) from None
    spec.base_dir = str(Path(base_dir).resolve()) if base_dir is not None else str(Path.cwd())
    return spec


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"invalid spec {path}: not valid YAML: {err}") from None
    return spec_from_dict(data, base_dir=path.parent, origin=str(path))
