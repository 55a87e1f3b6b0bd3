"""Image classification: timm models, in-memory image sets, cross-entropy, torchmetrics.

The task adapter contract
-------------------------
``conveyor.model.train`` and ``conveyor.model.evaluate`` hold the generic loops; everything that depends on
the task lives in an adapter module that ``conveyor.kinds.get(task)`` returns. A detection or
segmentation adapter provides the same names with its own meaning of "targets" and "outputs":

Constants
    ``TASK``             the task name written into checkpoints.
    ``PRIMARY_METRIC``   the key of :func:`epoch_metrics` that picks the best epoch (higher is better).
    ``PARITY_ATOL``      the largest ONNX-vs-torch difference (as :func:`onnx_parity` measures it) allowed.
    ``ONNX_INPUT_NAMES`` / ``ONNX_OUTPUT_NAMES`` / ``ONNX_DYNAMIC_AXES``  names used by the ONNX export.

Model
    ``build_model(model_name, num_classes, model_kwargs) -> nn.Module``  (randomly initialised;
    an unknown name raises ``ValueError`` that names ``train.model``).
    ``normalization(model) -> (mean, std)``  per-channel values stored in the checkpoint.

Data
    ``load_split(split_path, classes, split, image_size) -> ImageSet``  decodes the rows of one
    split once, sorted by ``id``, into memory.
    ``make_dataset(image_set) -> torch Dataset`` and ``collate(samples) -> batch`` for the DataLoader.
    ``make_augment(augment_spec, image_size) -> callable | None``  train-time augmentation driven by
    an explicit ``torch.Generator``.

Training and prediction
    ``make_criterion(train_spec)``; ``training_loss(model, batch, *, criterion, augment, generator,
    norm, device) -> scalar tensor``; ``predict(model, image_set, *, norm, device) -> outputs``.

Metrics
    ``epoch_metrics(outputs, image_set, classes, criterion) -> dict[str, float]`` (cheap, per epoch);
    ``evaluate_outputs(outputs, image_set, classes) -> TaskMetrics`` (full evaluation).

Deployment (ONNX)
    ``deploy_module(model, meta) -> nn.Module`` the graph that is exported: preprocessing included,
    so the ONNX file takes what a client has (here: float32 RGB in [0, 1], N x 3 x H x W);
    ``example_input(meta, batch)``; ``deploy_inputs(image_set)``; ``onnx_parity(torch_out, ort_out)``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

TASK = "classification"
PRIMARY_METRIC = "f1"
# Largest absolute difference between torch and onnxruntime softmax probabilities.
PARITY_ATOL = 1e-4
ONNX_INPUT_NAMES = ["images"]
ONNX_OUTPUT_NAMES = ["logits"]
ONNX_DYNAMIC_AXES = {"images": {0: "batch"}, "logits": {0: "batch"}}
ONNX_INPUT_DESCRIPTION = "float32 RGB, N x 3 x H x W, values in [0, 1]; normalisation is inside the graph"

# Fixed resampling filter for decoding: the same image always gives the same tensor.
RESIZE_FILTER = "bilinear"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_REQUIRED_COLUMNS = ("id", "path", "label", "split")


# ---- model ------------------------------------------------------------------------------------
def unknown_model_message(name: str, field_name: str = "train.model") -> str:
    import timm

    all_models = timm.list_models()
    close = difflib.get_close_matches(name.lower(), all_models, n=5, cutoff=0.6)
    stem = name.lower().split(".", 1)[0].rstrip("0123456789_")
    if len(stem) >= 3:
        for candidate in timm.list_models(f"*{stem}*"):
            if len(close) >= 8:
                break
            if candidate not in close:
                close.append(candidate)
    hint = f"; did you mean: {', '.join(close)}" if close else "; see timm.list_models()"
    return f"{field_name}: unknown timm model {name!r}{hint}"


def build_model(model_name: str, num_classes: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised timm model (never downloads weights)."""
    if num_classes < 2:
        raise ValueError(f"classification needs at least 2 classes, got {num_classes}")
    return build_timm_model(model_name, num_classes, model_kwargs)


def build_timm_model(model_name: str, num_outputs: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised timm model with ``num_outputs`` logits; ``model_kwargs`` go to timm,
    less the arguments conveyor sets itself."""
    import timm

    if not timm.is_model(model_name):
        raise ValueError(unknown_model_message(model_name))
    kwargs = dict(model_kwargs or {})
    for reserved in ("pretrained", "num_classes"):
        if reserved in kwargs:
            raise ValueError(f"train.model_kwargs: {reserved!r} is set by conveyor and may not be given")
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=num_outputs, **kwargs)
    except TypeError as err:
        raise ValueError(f"train.model_kwargs: {model_name} does not accept these arguments: {err}") from None


def normalization(model: nn.Module) -> tuple[list[float], list[float]]:
    """Per-channel mean and std: the model's own preprocessing config, else ImageNet's."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean") or _IMAGENET_MEAN)
    std = tuple(cfg.get("std") or _IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    return [float(m) for m in mean], [float(s) for s in std]


# ---- data -------------------------------------------------------------------------------------
@dataclass
class ImageSet:
    """One split, decoded: ``images`` uint8 (N, 3, S, S) RGB, ``targets`` int64 (N,), rows sorted by id."""

    split: str
    ids: list[str]
    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


class _ImageSetDataset(torch.utils.data.Dataset):
    def __init__(self, image_set: ImageSet):
        self.images = image_set.images
        self.targets = image_set.targets

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]

    def __getitems__(self, indices: list[int]):
        # Batched fetch (DataLoader calls this when present): one gather instead of N stacks.
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images.index_select(0, idx), self.targets.index_select(0, idx)


def make_dataset(image_set: ImageSet) -> torch.utils.data.Dataset:
    return _ImageSetDataset(image_set)


def collate(batch):
    """Collate for :func:`make_dataset`; the dataset already returns whole batches."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return batch
    return torch.utils.data.default_collate(batch)


def read_split_rows(split_path: str | Path, classes: Sequence[str], split: str):
    """The rows of one split as a polars DataFrame sorted by id, labels checked against ``classes``."""
    import polars as pl

    df = pl.read_parquet(split_path)
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"split table {split_path} lacks columns {missing}; it has {df.columns}")
    rows = df.filter(pl.col("split") == split).select(list(_REQUIRED_COLUMNS)).sort("id")
    if rows["id"].n_unique() != rows.height:
        raise ValueError(f"split table {split_path}: ids are not unique in split {split!r}")
    known = set(classes)
    unknown = sorted(set(rows["label"].unique().to_list()) - known)
    if unknown:
        raise ValueError(
            f"split table {split_path}: split {split!r} has labels not in the class list: {unknown[:10]}"
            f"; classes: {list(classes)}"
        )
    return rows


def decode_image(path: str | Path, image_size: int) -> np.ndarray:
    """One image file as uint8 (S, S, 3) RGB: EXIF orientation applied, resized with a fixed filter.

    Colour modes are normalised by ``conveyor.data.imageio.to_rgb`` (transparency composited on white,
    16-bit scaled), the same rule ingest uses, so training sees the pixels ingest measured.
    """
    from PIL import Image, ImageOps

    from conveyor.data.imageio import to_rgb

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im = to_rgb(im)
        if im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), resample=Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def decode_images(ids: Sequence[str], paths: Sequence[str], split: str, image_size: int, *,
                  progress: bool = False) -> torch.Tensor:
    """Decode images once into a uint8 (N, 3, S, S) tensor; a file that fails names its id."""
    n = len(paths)
    arr = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    it: Any = enumerate(paths)
    if progress and n:
        from tqdm.auto import tqdm

        it = tqdm(it, total=n, desc=f"decode {split}", unit="img", leave=False)
    for i, p in it:
        try:
            arr[i] = decode_image(p, image_size)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot decode image {ids[i]!r} at {p}: {err}") from err
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def load_split(
    split_path: str | Path, classes: Sequence[str], split: str, image_size: int, *, progress: bool = False
) -> ImageSet:
    """Decode every image of ``split`` once into a uint8 tensor (datasets here fit in memory)."""
    rows = read_split_rows(split_path, classes, split)
    index = {c: i for i, c in enumerate(classes)}
    images = decode_images(rows["id"].to_list(), rows["path"].to_list(), split, image_size, progress=progress)
    targets = torch.tensor([index[lbl] for lbl in rows["label"].to_list()], dtype=torch.long)
    return ImageSet(split=split, ids=rows["id"].to_list(), images=images, targets=targets, classes=list(classes))


# ---- augmentation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Per-image train-time augmentation with torchvision.transforms.v2 functional ops on uint8 tensors.

    Every random parameter is drawn from the ``torch.Generator`` passed in (in a fixed order), so
    the augmentation never touches the global RNG and a seeded run is reproducible.
    """

    padding: int = 0
    hflip: bool = False
    rotation_deg: float = 0.0
    color_jitter: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.padding or self.hflip or self.rotation_deg or self.color_jitter)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torchvision.transforms.v2.functional as F

        n, _, h, w = images.shape
        if n == 0 or not self.active:
            return images
        g = generator
        p = self.padding
        if p:
            ox = torch.randint(0, 2 * p + 1, (n,), generator=g).tolist()
            oy = torch.randint(0, 2 * p + 1, (n,), generator=g).tolist()
            padded = F.pad(images, [p, p, p, p], fill=0)
        flips = (torch.rand(n, generator=g) < 0.5).tolist() if self.hflip else [False] * n
        angles = ((torch.rand(n, generator=g) * 2 - 1) * self.rotation_deg).tolist() if self.rotation_deg else None
        c = self.color_jitter
        factors = (1 + (torch.rand(n, 3, generator=g) * 2 - 1) * c).tolist() if c else None
        out = torch.empty_like(images)
        for i in range(n):
            x = padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] if p else images[i]
            if flips[i]:
                x = F.horizontal_flip(x)
            if angles is not None:
                x = F.rotate(x, angles[i], interpolation=F.InterpolationMode.BILINEAR, fill=0)
            if factors is not None:
                b, ct, s = factors[i]
                x = F.adjust_brightness(x, max(b, 0.0))
                x = F.adjust_contrast(x, max(ct, 0.0))
                x = F.adjust_saturation(x, max(s, 0.0))
            out[i] = x
        return out


def make_augment(augment_spec: Any, image_size: int) -> Augment | None:
    """The augmentation for ``spec.train.augment`` (None when nothing is switched on)."""
    aug = Augment(
        padding=int(augment_spec.random_crop_padding),
        hflip=bool(augment_spec.hflip),
        rotation_deg=float(augment_spec.rotation_deg),
        color_jitter=float(augment_spec.color_jitter),
    )
    return aug if aug.active else None


# ---- training and prediction -----------------------------------------------------------------
def normalize(images: torch.Tensor, norm: tuple[Sequence[float], Sequence[float]]) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] and standardised per channel."""
    mean = torch.tensor(norm[0], dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(norm[1], dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - mean).div_(std)


def make_criterion(train_spec: Any) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=float(getattr(train_spec, "label_smoothing", 0.0)))


def training_loss(
    model: nn.Module,
    batch,
    *,
    criterion: nn.Module,
    augment: Callable | None,
    generator: torch.Generator,
    norm: tuple[Sequence[float], Sequence[float]],
    device: torch.device | str,
) -> torch.Tensor:
    images, targets = batch
    if augment is not None:
        images = augment(images, generator)
    x = normalize(images.to(device, non_blocking=True), norm)
    return criterion(model(x), targets.to(device, non_blocking=True))


@torch.no_grad()
def batched_outputs(model: nn.Module, images: torch.Tensor, *, norm: tuple[Sequence[float], Sequence[float]],
                    device: torch.device | str, batch_size: int) -> list[torch.Tensor]:
    """The model's outputs (eval mode, float32, on the CPU) over uint8 ``images``, chunk by chunk."""
    model.eval()
    return [model(normalize(images[start : start + batch_size].to(device), norm)).float().cpu()
            for start in range(0, int(images.shape[0]), batch_size)]


@torch.no_grad()
def predict(
    model: nn.Module,
    image_set: ImageSet,
    *,
    norm: tuple[Sequence[float], Sequence[float]],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits (N, C), float32 on the CPU. Puts the model in eval mode."""
    chunks = batched_outputs(model, image_set.images, norm=norm, device=device, batch_size=batch_size)
    if not chunks:
        return torch.zeros((0, len(image_set.classes)), dtype=torch.float32)
    return torch.cat(chunks)


def predict_proba(
    model: nn.Module, images: torch.Tensor, meta: dict[str, Any], *, batch_size: int = 256
) -> torch.Tensor:
    """Class probabilities for uint8 RGB images (N, 3, S, S) using a checkpoint's metadata."""
    image_set = ImageSet("adhoc", [str(i) for i in range(len(images))], images, torch.zeros(len(images)), list(meta["classes"]))
    device = next(model.parameters()).device
    return predict(model, image_set, norm=(meta["mean"], meta["std"]), device=device, batch_size=batch_size).softmax(1)


def prediction_records(outputs: torch.Tensor, image_set: ImageSet, classes: Sequence[str]) -> dict[str, list]:
    """Per image: the predicted class and its probability (the prediction stream's features), the
    true class and whether the prediction is right (for reliability diagrams and error review)."""
    if len(image_set) == 0:
        return {"id": [], "predicted": [], "confidence": [], "label": [], "correct": []}
    conf, idx = outputs.softmax(1).max(1)
    targets = image_set.targets.tolist()
    return {"id": list(image_set.ids), "predicted": [classes[int(i)] for i in idx], "confidence": conf.tolist(),
            "label": [classes[int(t)] for t in targets], "correct": [int(i) == int(t) for i, t in zip(idx, targets)]}


# ---- metrics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskMetrics:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]


def epoch_metrics(
    outputs: torch.Tensor, image_set: ImageSet, classes: Sequence[str], criterion: nn.Module | None = None
) -> dict[str, float]:
    """The cheap per-epoch validation numbers recorded in the training history."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    k = len(classes)
    y = image_set.targets
    out = {
        "f1": float(multiclass_f1_score(outputs, y, num_classes=k, average="macro")),
        "accuracy": float(multiclass_accuracy(outputs, y, num_classes=k, average="micro")),
    }
    if criterion is not None:
        out["loss"] = float(criterion(outputs, y))
    return out


def evaluate_outputs(outputs: torch.Tensor, image_set: ImageSet, classes: Sequence[str]) -> TaskMetrics:
    """Accuracy, macro F1/precision/recall, ECE (15 bins, L1), per-class scores and the confusion matrix.

    Macro averages skip classes that appear neither in the targets nor in the predictions
    (torchmetrics' rule); per-class scores of a class without support are 0.
    """
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    k = len(classes)
    y = image_set.targets
    probs = outputs.float().softmax(dim=1)
    metrics: dict[str, float] = {
        "accuracy": float(multiclass_accuracy(probs, y, num_classes=k, average="micro")),
        "f1": float(multiclass_f1_score(probs, y, num_classes=k, average="macro")),
        "precision": float(multiclass_precision(probs, y, num_classes=k, average="macro")),
        "recall": float(multiclass_recall(probs, y, num_classes=k, average="macro")),
        "ece": float(multiclass_calibration_error(probs, y, num_classes=k, n_bins=15, norm="l1")),
    }
    per = {
        "precision": multiclass_precision(probs, y, num_classes=k, average="none").tolist(),
        "recall": multiclass_recall(probs, y, num_classes=k, average="none").tolist(),
        "f1": multiclass_f1_score(probs, y, num_classes=k, average="none").tolist(),
    }
    support = torch.bincount(y, minlength=k).tolist()
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        per_class[name] = {m: float(per[m][i]) for m in ("precision", "recall", "f1")}
        per_class[name]["support"] = float(support[i])
        for m in ("precision", "recall", "f1"):
            metrics[f"{m}[{name}]"] = float(per[m][i])
    cm = multiclass_confusion_matrix(probs, y, num_classes=k).tolist()
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise ValueError(f"metric {key} is not finite ({value}); the model output is broken")
    return TaskMetrics(metrics=metrics, per_class=per_class, confusion_matrix=[[int(v) for v in row] for row in cm])


def record_metrics(records: pl.DataFrame, classes: Sequence[str], n_bins: int = 15) -> dict[str, float]:
    """:func:`evaluate_outputs`'s metrics (accuracy, macro F1/precision/recall, ECE and the per-class
    scores) from per-image prediction records (:func:`prediction_records`: ``predicted``, ``label``,
    ``confidence``, ``correct``), for any subset of the images, e.g. one camera's or a bootstrap
    resample. The same definitions as torchmetrics' (macro averages skip classes absent from both
    labels and predictions; ECE bins the top-label confidence), in numpy: the paired bootstrap of
    the gate calls this thousands of times."""
    if records.height == 0:
        return {}
    k = len(classes)
    index = {c: i for i, c in enumerate(classes)}
    pred = np.fromiter((index[c] for c in records["predicted"].to_list()), dtype=np.int64, count=records.height)
    y = np.fromiter((index[c] for c in records["label"].to_list()), dtype=np.int64, count=records.height)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    present = (tp + fp + fn) > 0

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    per = {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}
    conf = records["confidence"].to_numpy().astype(float)
    hit = records["correct"].to_numpy().astype(float)
    bins = np.clip(np.searchsorted(np.linspace(0, 1, n_bins + 1), conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=hit, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins))
    out = {"accuracy": float(tp.sum() / len(y)),
           **{m: float(v[present].mean()) if present.any() else 0.0 for m, v in per.items()},
           "ece": float(gap[count > 0].sum() / len(y))}
    for m in ("precision", "recall", "f1"):
        for name, v in zip(classes, per[m]):
            out[f"{m}[{name}]"] = float(v)
    return out


# ---- deployment (ONNX) ------------------------------------------------------------------------
class DeployModel(nn.Module):
    """The exported graph: float32 RGB in [0, 1] -> normalise -> model -> logits."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def deploy_module(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    return DeployModel(model, meta["mean"], meta["std"]).eval()


def example_input(meta: dict[str, Any], batch: int = 1) -> torch.Tensor:
    s = int(meta["image_size"])
    return torch.rand((batch, 3, s, s), generator=torch.Generator().manual_seed(0))


def deploy_inputs(image_set: ImageSet) -> torch.Tensor:
    """What a client sends the deployed model for these images: float32 in [0, 1]."""
    return image_set.images.float() / 255.0


def onnx_parity(torch_out: np.ndarray, ort_out: np.ndarray) -> float:
    """Largest absolute difference between the softmax probabilities of the two backends."""
    if torch_out.shape != ort_out.shape:
        return float("inf")
    if torch_out.size == 0:
        return 0.0
    pt = torch.from_numpy(np.asarray(torch_out, dtype=np.float64)).softmax(1)
    po = torch.from_numpy(np.asarray(ort_out, dtype=np.float64)).softmax(1)
    diff = (pt - po).abs().max()
    return float(diff) if torch.isfinite(diff) else float("inf")


def describe_onnx(task: str, meta: dict[str, Any], inputs: str, output: str) -> dict[str, str]:
    """Key/value strings stored in the ONNX file so a server needs nothing else (every task kind)."""
    import json

    return {
        "conveyor.task": task,
        "conveyor.classes": json.dumps(list(meta["classes"])),
        "conveyor.image_size": str(int(meta["image_size"])),
        "conveyor.model_name": str(meta["model_name"]),
        "conveyor.input": inputs,
        "conveyor.output": output,
        "conveyor.dataset_version": str(meta.get("dataset_version", "")),
    }


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    return describe_onnx(TASK, meta, ONNX_INPUT_DESCRIPTION, "logits, N x num_classes (softmax for probabilities)")
