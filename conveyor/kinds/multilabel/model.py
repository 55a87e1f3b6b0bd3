"""Multi-label image classification (attribute tagging): timm models, sigmoid outputs, BCE loss.

Implements the task-adapter contract documented in :mod:`conveyor.kinds.classification.model`, with:

- targets: multi-hot float32 (N, K), one column per class of ``data.classes``; an image without
  labels (all zeros) is a valid negative.
- outputs: logits float32 (N, K); ``sigmoid(logit) >= THRESHOLD`` predicts the label.
- split table: the ``labels`` column (a list of class names per image).
- metrics (:func:`evaluate_outputs`, torchmetrics): ``f1_micro``, ``f1_macro``, ``precision``
  and ``recall`` (macro), ``exact_match`` (all labels of an image right), ``map`` (mean average
  precision over the labels with positives), ``ece`` (mean over labels of the binary calibration
  error, 15 bins, L1), and per label ``precision[l]``, ``recall[l]``, ``f1[l]``, ``ap[l]``, ``ece[l]``.

The model, the in-memory image set, the augmentation, the training step and the ONNX wrapper
(normalisation inside the graph) are classification's; the loss, the targets, the metrics and
the parity measure (sigmoid probabilities instead of softmax) are this module's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from conveyor.kinds.classification.model import (  # noqa: F401 - shared parts of the contract
    Augment,
    DeployModel,
    ImageSet,
    batched_outputs,
    collate,
    decode_images,
    deploy_inputs,
    deploy_module,
    describe_onnx,
    example_input,
    make_augment,
    make_dataset,
    normalization,
    normalize,
    predict,
    training_loss,
    build_timm_model,
    unknown_model_message,
)

TASK = "multilabel"
PRIMARY_METRIC = "f1_macro"
# Largest absolute difference between torch and onnxruntime sigmoid probabilities.
PARITY_ATOL = 1e-4
ONNX_INPUT_NAMES = ["images"]
ONNX_OUTPUT_NAMES = ["logits"]
ONNX_DYNAMIC_AXES = {"images": {0: "batch"}, "logits": {0: "batch"}}
ONNX_INPUT_DESCRIPTION = "float32 RGB, N x 3 x H x W, values in [0, 1]; normalisation is inside the graph"
ONNX_OUTPUT_DESCRIPTION = "logits, N x num_labels (sigmoid per label for probabilities; >= 0.5 predicts it)"

#: Probability from which a label counts as predicted.
THRESHOLD = 0.5
#: Bins of the per-label calibration error and reliability curves.
ECE_BINS = 15
_REQUIRED_COLUMNS = ("id", "path", "labels", "split")


# ---- model ------------------------------------------------------------------------------------
def build_model(model_name: str, num_classes: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised timm model with one logit per label (never downloads weights)."""
    if num_classes < 1:
        raise ValueError(f"multilabel needs at least 1 label, got {num_classes}")
    return build_timm_model(model_name, num_classes, model_kwargs)


# ---- data -------------------------------------------------------------------------------------
def multi_hot(labels: Sequence[Sequence[str] | None], classes: Sequence[str]) -> torch.Tensor:
    """float32 (N, K): 1 where the image carries the label. Unknown names raise ValueError."""
    index = {c: i for i, c in enumerate(classes)}
    out = torch.zeros((len(labels), len(classes)), dtype=torch.float32)
    for r, names in enumerate(labels):
        for name in names or ():
            if name not in index:
                raise ValueError(f"label {name!r} is not in the class list {list(classes)}")
            out[r, index[name]] = 1.0
    return out


def read_split_rows(split_path: str | Path, classes: Sequence[str], split: str):
    """The rows of one split (id, path, labels, split) sorted by id, labels checked against ``classes``."""
    import polars as pl

    df = pl.read_parquet(split_path)
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"split table {split_path} lacks columns {missing} (multilabel needs {list(_REQUIRED_COLUMNS)})")
    if not isinstance(df.schema["labels"], pl.List):
        raise ValueError(f"split table {split_path}: column 'labels' is {df.schema['labels']}, not a list of names")
    rows = df.filter(pl.col("split") == split).select(list(_REQUIRED_COLUMNS)).sort("id")
    if rows["id"].n_unique() != rows.height:
        raise ValueError(f"split table {split_path}: ids are not unique in split {split!r}")
    present = set(rows.select(pl.col("labels").explode().drop_nulls()).to_series().to_list())
    unknown = sorted(present - set(classes))
    if unknown:
        raise ValueError(f"split table {split_path}: split {split!r} has labels not in the class list: "
                         f"{unknown[:10]}; classes: {list(classes)}")
    return rows


def load_split(
    split_path: str | Path, classes: Sequence[str], split: str, image_size: int, *, progress: bool = False
) -> ImageSet:
    """Decode every image of ``split`` once; ``targets`` are multi-hot float32 (N, K)."""
    rows = read_split_rows(split_path, classes, split)
    ids = rows["id"].to_list()
    images = decode_images(ids, rows["path"].to_list(), split, image_size, progress=progress)
    targets = multi_hot(rows["labels"].to_list(), classes)
    return ImageSet(split=split, ids=ids, images=images, targets=targets, classes=list(classes))


# ---- loss -------------------------------------------------------------------------------------
class MultilabelLoss(nn.Module):
    """Binary cross-entropy on the logits, mean over images and labels; ``label_smoothing`` pulls
    the targets towards 0.5 (a 1 becomes ``1 - s/2``, a 0 becomes ``s/2``)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = targets.to(logits.dtype)
        if self.label_smoothing:
            t = t * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        return nn.functional.binary_cross_entropy_with_logits(logits, t)


def make_criterion(train_spec: Any) -> nn.Module:
    return MultilabelLoss(float(getattr(train_spec, "label_smoothing", 0.0)))


def predict_proba(model: nn.Module, images: torch.Tensor, meta: dict[str, Any], *, batch_size: int = 256) -> torch.Tensor:
    """Per-label probabilities (N, K) for uint8 RGB images (N, 3, S, S) using a checkpoint's metadata."""
    k = len(meta["classes"])
    image_set = ImageSet("adhoc", [str(i) for i in range(len(images))], images, torch.zeros((len(images), k)),
                         list(meta["classes"]))
    device = next(model.parameters()).device
    return predict(model, image_set, norm=(meta["mean"], meta["std"]), device=device, batch_size=batch_size).sigmoid()


def predicted_labels(probs: Sequence[float], classes: Sequence[str], threshold: float = THRESHOLD) -> list[str]:
    """The labels whose probability reaches ``threshold``, in class order."""
    return [c for c, p in zip(classes, probs) if float(p) >= threshold]


def prediction_records(outputs: torch.Tensor, image_set: ImageSet, classes: Sequence[str]) -> dict[str, list]:
    """Per image: the predicted label set (``predicted``: names joined by ``;`` in class order,
    ``predicted_labels``: the list), ``confidence`` (the least sure of the per-label decisions,
    ``min max(p, 1 - p)``), the probability of every label, the true labels and whether the whole
    set is right. The report reads ``probabilities`` and ``labels`` for per-label reliability."""
    keys = ("id", "predicted", "predicted_labels", "predicted_count", "confidence", "probabilities", "labels",
            "correct")
    if len(image_set) == 0:
        return {k: [] for k in keys}
    probs = outputs.float().sigmoid()
    sure = torch.maximum(probs, 1.0 - probs).min(dim=1).values
    pred = probs >= THRESHOLD
    truth = image_set.targets >= 0.5
    predicted = [predicted_labels(row, classes) for row in probs.tolist()]
    return {
        "id": list(image_set.ids),
        "predicted": [";".join(p) for p in predicted],
        "predicted_labels": predicted,
        "predicted_count": [float(len(p)) for p in predicted],
        "confidence": sure.tolist(),
        "probabilities": probs.tolist(),
        "labels": [[c for c, t in zip(classes, row) if t] for row in truth.tolist()],
        "correct": (pred == truth).all(dim=1).tolist(),
    }


# ---- metrics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskMetrics:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]  # empty: a multi-label model has no single-class confusion matrix
    # "reliability": per label, the calibration bins (confidence, accuracy, count) of its yes/no decision
    curves: dict[str, Any] = field(default_factory=dict)


def epoch_metrics(
    outputs: torch.Tensor, image_set: ImageSet, classes: Sequence[str], criterion: nn.Module | None = None
) -> dict[str, float]:
    """The cheap per-epoch validation numbers: macro and micro F1 at the threshold, and the loss."""
    from torchmetrics.functional.classification import multilabel_f1_score

    k = len(classes)
    y = image_set.targets.long()
    probs = outputs.float().sigmoid()
    out = {
        "f1_macro": float(multilabel_f1_score(probs, y, num_labels=k, threshold=THRESHOLD, average="macro")),
        "f1_micro": float(multilabel_f1_score(probs, y, num_labels=k, threshold=THRESHOLD, average="micro")),
    }
    if criterion is not None:
        out["loss"] = float(criterion(outputs, image_set.targets))
    return out


def reliability_bins(probs: torch.Tensor, truth: torch.Tensor, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Calibration bins of one label, as torchmetrics' ``binary_calibration_error`` forms them: the
    probability ``p`` binned over [0, 1] in ``n_bins`` equal bins; per non-empty bin the mean ``p``
    (``confidence``), the share of images that carry the label (``accuracy``) and the ``count``.
    ``sum(count * |accuracy - confidence|) / N`` is the label's ECE."""
    p = probs.double().reshape(-1)
    t = (truth.reshape(-1) >= 0.5).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    idx = torch.clamp(torch.bucketize(p, edges, right=False) - 1, 0, n_bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        if n:
            out["confidence"].append(float(p[sel].mean()))
            out["accuracy"].append(float(t[sel].mean()))
            out["count"].append(n)
    return out


def evaluate_outputs(outputs: torch.Tensor, image_set: ImageSet, classes: Sequence[str]) -> TaskMetrics:
    """F1 (micro, macro), macro precision/recall, exact match, per-label precision/recall/F1/AP/ECE,
    mAP and mean ECE (see the module doc).

    Per-label scores of a label without positives and predictions are 0 (torchmetrics' rule); its
    ``ap`` is undefined, so it is left out of ``map`` and of the metrics (support 0 in ``per_class``).
    """
    from torchmetrics.functional.classification import (
        binary_average_precision,
        binary_calibration_error,
        multilabel_exact_match,
        multilabel_f1_score,
        multilabel_precision,
        multilabel_recall,
    )

    k = len(classes)
    y = image_set.targets.long()
    probs = outputs.float().sigmoid()
    kw = dict(num_labels=k, threshold=THRESHOLD)
    metrics: dict[str, float] = {
        "f1_micro": float(multilabel_f1_score(probs, y, average="micro", **kw)),
        "f1_macro": float(multilabel_f1_score(probs, y, average="macro", **kw)),
        "precision": float(multilabel_precision(probs, y, average="macro", **kw)),
        "recall": float(multilabel_recall(probs, y, average="macro", **kw)),
        "exact_match": float(multilabel_exact_match(probs, y, **kw)),
    }
    per = {
        "precision": multilabel_precision(probs, y, average="none", **kw).tolist(),
        "recall": multilabel_recall(probs, y, average="none", **kw).tolist(),
        "f1": multilabel_f1_score(probs, y, average="none", **kw).tolist(),
    }
    support = y.sum(dim=0).tolist()
    per_class: dict[str, dict[str, float]] = {}
    aps: list[float] = []
    eces: list[float] = []
    reliability: dict[str, dict[str, list]] = {}
    for i, name in enumerate(classes):
        pc = {m: float(per[m][i]) for m in ("precision", "recall", "f1")}
        pc["support"] = float(support[i])
        for m in ("precision", "recall", "f1"):
            metrics[f"{m}[{name}]"] = pc[m]
        col = probs[:, i].contiguous()
        ece = float(binary_calibration_error(col, y[:, i], n_bins=ECE_BINS, norm="l1"))
        pc["ece"] = ece
        metrics[f"ece[{name}]"] = ece
        eces.append(ece)
        if support[i] > 0:
            ap = float(binary_average_precision(col, y[:, i]))
            pc["ap"] = ap
            metrics[f"ap[{name}]"] = ap
            aps.append(ap)
        per_class[name] = pc
        reliability[name] = reliability_bins(col, y[:, i])
    metrics["map"] = float(np.mean(aps)) if aps else 0.0
    metrics["ece"] = float(np.mean(eces)) if eces else 0.0
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise ValueError(f"metric {key} is not finite ({value}); the model output is broken")
    return TaskMetrics(metrics=metrics, per_class=per_class, confusion_matrix=[],
                       curves={"reliability": reliability, "threshold": THRESHOLD})


# ---- deployment (ONNX) ------------------------------------------------------------------------
def onnx_parity(torch_out: np.ndarray, ort_out: np.ndarray) -> float:
    """Largest absolute difference between the per-label sigmoid probabilities of the two backends."""
    if torch_out.shape != ort_out.shape:
        return float("inf")
    if torch_out.size == 0:
        return 0.0
    pt = torch.from_numpy(np.asarray(torch_out, dtype=np.float64)).sigmoid()
    po = torch.from_numpy(np.asarray(ort_out, dtype=np.float64)).sigmoid()
    diff = (pt - po).abs().max()
    return float(diff) if torch.isfinite(diff) else float("inf")


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    out = describe_onnx(TASK, meta, ONNX_INPUT_DESCRIPTION, ONNX_OUTPUT_DESCRIPTION)
    out["conveyor.threshold"] = str(THRESHOLD)
    return out
