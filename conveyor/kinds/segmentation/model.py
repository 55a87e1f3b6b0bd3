"""Semantic segmentation: a small UNet or torchvision segmenters, image + mask sets, CE + Dice.

Implements the task-adapter contract documented in :mod:`conveyor.kinds.classification`, with:

- targets: per-pixel class indices, uint8 (N, S, S); pixels to ignore hold :data:`IGNORE` (255).
  A mask value ``>= len(classes)`` is read as "unlabelled": ingest quarantines every mask with
  values outside the class range other than ``data.ignore_index``, so only that value remains.
- outputs: logits float32 (N, C, S, S).
- metrics: ``miou``, ``iou[cls]``, ``boundary_iou`` (mean over classes), ``fn_rate[cls]`` (share of
  the class's labelled pixels predicted as another class, i.e. 1 - pixel recall), ``pixel_accuracy``;
  ``per_class`` adds ``boundary_iou``, ``precision`` and the pixel ``support`` of each class.

Models (``train.model``): ``unet`` (``model_kwargs``: ``depth`` 2-5, ``width`` channels of the first
level, doubled per level), and torchvision's ``lraspp_mobilenet_v3_large``,
``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50`` built with ``weights=None, weights_backbone=None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from conveyor.kinds.classification.model import (  # noqa: F401 - shared parts of the contract
    DeployModel,
    ImageSet,
    TaskMetrics,
    batched_outputs,
    collate,
    decode_image,
    deploy_module,
    describe_onnx,
    make_dataset,
    normalize,
    onnx_parity,
)

TASK = "segmentation"
PRIMARY_METRIC = "miou"
# Largest absolute difference between torch and onnxruntime per-pixel softmax probabilities.
PARITY_ATOL = 1e-3
ONNX_INPUT_NAMES = ["images"]
ONNX_OUTPUT_NAMES = ["logits"]
ONNX_DYNAMIC_AXES = {"images": {0: "batch"}, "logits": {0: "batch"}}
ONNX_INPUT_DESCRIPTION = "float32 RGB, N x 3 x H x W, values in [0, 1]; normalisation is inside the graph"

IGNORE = 255
# An instance (connected component) of a class counts as found when this share of it is predicted.
INSTANCE_COVERAGE = 0.5
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_REQUIRED_COLUMNS = ("id", "path", "mask_path", "split")
TORCHVISION_MODELS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50")
MODELS = ("unet",) + TORCHVISION_MODELS


# ---- model ------------------------------------------------------------------------------------
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A plain UNet (Ronneberger et al. 2015) with batch norm; transposed convolutions upsample.

    Inputs need sides divisible by ``2 ** (depth - 1)``.
    """

    def __init__(self, num_classes: int, depth: int = 4, width: int = 16):
        super().__init__()
        if not 2 <= depth <= 5:
            raise ValueError(f"train.model_kwargs.depth must be 2..5 for unet, got {depth}")
        if width < 4:
            raise ValueError(f"train.model_kwargs.width must be >= 4 for unet, got {width}")
        chans = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList([_block(3, chans[0])] + [_block(chans[i - 1], chans[i]) for i in range(1, depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2) for i in range(depth - 1, 0, -1)])
        self.dec = nn.ModuleList([_block(chans[i - 1] * 2, chans[i - 1]) for i in range(depth - 1, 0, -1)])
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class _OutOnly(nn.Module):
    """torchvision segmenters return ``{"out": logits, ...}``; keep the logits only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build_model(model_name: str, num_classes: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised segmenter (never downloads weights)."""
    if num_classes < 2:
        raise ValueError(f"segmentation needs at least 2 classes (background included), got {num_classes}")
    if num_classes > IGNORE:
        raise ValueError(f"segmentation supports at most {IGNORE} classes, got {num_classes}")
    kwargs = dict(model_kwargs or {})
    for reserved in ("weights", "weights_backbone", "num_classes", "pretrained"):
        if reserved in kwargs:
            raise ValueError(f"train.model_kwargs: {reserved!r} is set by conveyor and may not be given")
    if model_name == "unet":
        unknown = set(kwargs) - {"depth", "width"}
        if unknown:
            raise ValueError(f"train.model_kwargs: unet accepts depth and width, not {sorted(unknown)}")
        return UNet(num_classes, depth=int(kwargs.get("depth", 4)), width=int(kwargs.get("width", 16)))
    if model_name in TORCHVISION_MODELS:
        from torchvision.models import segmentation as tvseg

        try:
            net = getattr(tvseg, model_name)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        except TypeError as err:
            raise ValueError(f"train.model_kwargs: {model_name} does not accept these arguments: {err}") from None
        return _OutOnly(net)
    raise ValueError(f"train.model: unknown segmentation model {model_name!r}; available: {', '.join(MODELS)}")


def normalization(model: nn.Module) -> tuple[list[float], list[float]]:
    return list(_IMAGENET_MEAN), list(_IMAGENET_STD)


# ---- data -------------------------------------------------------------------------------------
# One split, decoded: ``images`` uint8 (N, 3, S, S), ``targets`` uint8 masks (N, S, S), sorted by
# id. The in-memory set, its dataset and collate are classification's, with masks as targets.
MaskSet = ImageSet


def decode_mask(path: str | Path, image_size: int, num_classes: int) -> np.ndarray:
    """A mask PNG as uint8 (S, S) class indices, resized with nearest neighbour; values
    ``>= num_classes`` (the unlabelled value) become :data:`IGNORE`."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"mask mode {im.mode!r} is not single-channel 8-bit (L or P)")
        if im.mode == "P":
            im = Image.fromarray(np.asarray(im, dtype=np.uint8), mode="L")  # palette indices, not colours
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), resample=Image.Resampling.NEAREST)
        arr = np.array(im, dtype=np.uint8)
    arr[arr >= num_classes] = IGNORE
    return arr


def load_split(
    split_path: str | Path, classes: Sequence[str], split: str, image_size: int, *, progress: bool = False
) -> MaskSet:
    """Decode every image and mask of ``split`` once into uint8 tensors."""
    import polars as pl

    df = pl.read_parquet(split_path)
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"split table {split_path} lacks columns {missing} (segmentation needs {list(_REQUIRED_COLUMNS)})")
    rows = df.filter(pl.col("split") == split).select(list(_REQUIRED_COLUMNS)).sort("id")
    if rows["id"].n_unique() != rows.height:
        raise ValueError(f"split table {split_path}: ids are not unique in split {split!r}")
    n, k = rows.height, len(classes)
    imgs = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=np.uint8)
    it: Any = enumerate(zip(rows["path"].to_list(), rows["mask_path"].to_list()))
    if progress and n:
        from tqdm.auto import tqdm

        it = tqdm(it, total=n, desc=f"decode {split}", unit="img", leave=False)
    for i, (p, mp) in it:
        try:
            imgs[i] = decode_image(p, image_size)
            masks[i] = decode_mask(mp, image_size, k)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot decode image/mask {rows['id'][i]!r} ({p}, {mp}): {err}") from err
    return MaskSet(
        split=split,
        ids=rows["id"].to_list(),
        images=torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(),
        targets=torch.from_numpy(masks),
        classes=list(classes),
    )


# ---- augmentation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Joint image/mask augmentation: horizontal and vertical flips and 90-degree turns (``hflip``),
    brightness/contrast jitter on the image only (``color_jitter``). Vectorised per batch; all
    randomness comes from the ``torch.Generator`` passed in."""

    flips: bool = False
    color_jitter: float = 0.0

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator):
        images, masks = batch
        n = images.shape[0]
        if n == 0:
            return images, masks
        g = generator
        if self.flips:
            hf = torch.rand(n, generator=g) < 0.5
            vf = torch.rand(n, generator=g) < 0.5
            images = torch.where(hf.view(-1, 1, 1, 1), images.flip(-1), images)
            masks = torch.where(hf.view(-1, 1, 1), masks.flip(-1), masks)
            images = torch.where(vf.view(-1, 1, 1, 1), images.flip(-2), images)
            masks = torch.where(vf.view(-1, 1, 1), masks.flip(-2), masks)
            if images.shape[-1] == images.shape[-2]:
                tr = torch.rand(n, generator=g) < 0.5
                images = torch.where(tr.view(-1, 1, 1, 1), images.transpose(-1, -2), images)
                masks = torch.where(tr.view(-1, 1, 1), masks.transpose(-1, -2), masks)
        if self.color_jitter:
            c = self.color_jitter
            b = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * c
            ct = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * c
            x = images.float()
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * ct + mean) * b
            images = x.clamp_(0, 255).round_().to(torch.uint8)
        return images.contiguous(), masks.contiguous()


def make_augment(augment_spec: Any, image_size: int) -> Augment | None:
    aug = Augment(flips=bool(augment_spec.hflip), color_jitter=float(augment_spec.color_jitter))
    return aug if (aug.flips or aug.color_jitter) else None


# ---- loss, training and prediction ------------------------------------------------------------
class SegLoss(nn.Module):
    """Cross-entropy plus soft Dice (mean over classes present in the batch), ignoring IGNORE pixels."""

    def __init__(self, dice_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.long()
        ce = F.cross_entropy(logits, targets, ignore_index=IGNORE, label_smoothing=self.label_smoothing)
        if not self.dice_weight:
            return ce
        k = logits.shape[1]
        valid = (targets != IGNORE).unsqueeze(1).float()
        probs = logits.float().softmax(1) * valid
        onehot = F.one_hot(targets.clamp(max=k - 1) * (targets != IGNORE), k).permute(0, 3, 1, 2).float() * valid
        inter = (probs * onehot).sum(dim=(0, 2, 3))
        denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        present = onehot.sum(dim=(0, 2, 3)) > 0
        dice = (2 * inter + 1.0) / (denom + 1.0)
        dice_loss = (1 - dice[present]).mean() if bool(present.any()) else logits.sum() * 0
        return ce + self.dice_weight * dice_loss


def make_criterion(train_spec: Any) -> nn.Module:
    return SegLoss(dice_weight=1.0, label_smoothing=float(getattr(train_spec, "label_smoothing", 0.0)))


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
    if augment is not None:
        batch = augment(batch, generator)
    images, masks = batch
    x = normalize(images.to(device, non_blocking=True), norm)
    return criterion(model(x), masks.to(device, non_blocking=True))


@torch.no_grad()
def predict(
    model: nn.Module,
    mask_set: MaskSet,
    *,
    norm: tuple[Sequence[float], Sequence[float]],
    device: torch.device | str = "cpu",
    batch_size: int = 32,
) -> torch.Tensor:
    """Logits (N, C, S, S), float32 on the CPU. Puts the model in eval mode."""
    chunks = batched_outputs(model, mask_set.images, norm=norm, device=device, batch_size=batch_size)
    if not chunks:
        s = mask_set.images.shape[-1] if mask_set.images.ndim == 4 else 0
        return torch.zeros((0, len(mask_set.classes), s, s), dtype=torch.float32)
    return torch.cat(chunks)


def prediction_records(outputs: torch.Tensor, mask_set: MaskSet, classes: Sequence[str]) -> dict[str, list]:
    """Per image: the mean per-pixel probability of the predicted class, the share of pixels
    predicted as something other than class 0 (the background), and the share of labelled pixels
    predicted right (``pixel_accuracy``, None for an image without labelled pixels)."""
    if outputs.shape[0] == 0:
        return {"id": [], "confidence": [], "predicted_foreground": [], "pixel_accuracy": []}
    conf, idx = outputs.softmax(1).max(1)
    targets = mask_set.targets.long()
    valid = (targets != IGNORE).flatten(1)
    right = ((idx == targets).flatten(1) & valid).sum(1)
    labelled = valid.sum(1)
    accuracy = [float(r) / float(n) if int(n) else None for r, n in zip(right.tolist(), labelled.tolist())]
    return {"id": list(mask_set.ids), "confidence": conf.flatten(1).mean(1).tolist(),
            "predicted_foreground": (idx != 0).float().flatten(1).mean(1).tolist(), "pixel_accuracy": accuracy}


# ---- metrics ----------------------------------------------------------------------------------
def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixel confusion matrix (rows: truth, columns: prediction), IGNORE pixels left out (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    return multiclass_confusion_matrix(
        preds.reshape(-1).long(), targets.reshape(-1).long(), num_classes=num_classes, ignore_index=IGNORE
    ).long()


def iou_from_confusion(cm: torch.Tensor) -> tuple[list[float | None], float]:
    """Per-class IoU (None for a class absent from both truth and prediction) and their mean."""
    tp = cm.diag().double()
    union = cm.sum(0).double() + cm.sum(1).double() - tp
    per = [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(cm.shape[0])]
    vals = [v for v in per if v is not None]
    return per, (float(np.mean(vals)) if vals else 0.0)


def boundary_band(mask: torch.Tensor, d: int) -> torch.Tensor:
    """Pixels of a boolean mask (N, H, W) within ``d`` pixels (chessboard distance) of its contour:
    ``mask`` minus its erosion by a (2d+1) square. The image edge is not a contour (an object that
    runs off the image has no boundary there), unlike the zero padding of Cheng et al.'s code."""
    if d <= 0:
        return mask.clone()
    m = mask.float().unsqueeze(1)
    padded = F.pad(m, (d, d, d, d), mode="replicate")
    eroded = -F.max_pool2d(-padded, kernel_size=2 * d + 1, stride=1)
    return mask & (eroded.squeeze(1) < 0.5)


def boundary_distance(height: int, width: int, fraction: float = 0.02) -> int:
    """The band width of boundary IoU: ``fraction`` of the image diagonal, at least 1 pixel."""
    return max(1, int(round(fraction * float(np.hypot(height, width)))))


def boundary_iou(
    preds: torch.Tensor, targets: torch.Tensor, num_classes: int, d: int | None = None, batch_size: int = 64
) -> list[float | None]:
    """Boundary IoU per class (Cheng et al. 2021), accumulated over the whole set:
    sum |G_d ∩ P_d| / sum |G_d ∪ P_d| with G_d, P_d the contour bands of truth and prediction,
    over labelled pixels only. None for a class with no boundary pixels in truth or prediction."""
    if d is None:
        d = boundary_distance(int(targets.shape[-2]), int(targets.shape[-1]))
    inter = torch.zeros(num_classes, dtype=torch.float64)
    union = torch.zeros(num_classes, dtype=torch.float64)
    for s in range(0, targets.shape[0], batch_size):
        t = targets[s : s + batch_size].long()
        p = preds[s : s + batch_size].long()
        valid = t != IGNORE
        for c in range(num_classes):
            gb = boundary_band(t == c, d) & valid
            pb = boundary_band(p == c, d) & valid
            inter[c] += float((gb & pb).sum())
            union[c] += float((gb | pb).sum())
    return [float(inter[c] / union[c]) if union[c] > 0 else None for c in range(num_classes)]


def instance_recall(preds: torch.Tensor, targets: torch.Tensor, num_classes: int,
                    coverage: float = INSTANCE_COVERAGE) -> tuple[list[int], list[int]]:
    """Per class, the ground-truth instances and how many of them the prediction found.

    An instance is a connected component (8-connected) of the class in one ground-truth mask; it
    is found when at least ``coverage`` of its pixels are predicted as the class. A model that
    misses every small defect while it finds the large ones scores well on pixel ``fn_rate`` and
    badly here, which is what defect inspection gates on. Class 0 (background) is not counted.
    """
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    total = [0] * num_classes
    found = [0] * num_classes
    t_all = targets.numpy()
    p_all = preds.numpy()
    for t, p in zip(t_all, p_all):
        for c in range(1, num_classes):
            labelled, n = ndimage.label(t == c, structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
            hits = np.bincount(labelled[p == c].ravel(), minlength=n + 1)[1:]
            total[c] += n
            found[c] += int((hits >= coverage * sizes).sum())
    return total, found


def epoch_metrics(
    outputs: torch.Tensor, mask_set: MaskSet, classes: Sequence[str], criterion: nn.Module | None = None
) -> dict[str, float]:
    cm = confusion_matrix(outputs.argmax(1), mask_set.targets, len(classes))
    _, miou = iou_from_confusion(cm)
    out = {"miou": miou}
    if criterion is not None:
        out["loss"] = float(criterion(outputs, mask_set.targets))
    return out


def evaluate_outputs(outputs: torch.Tensor, mask_set: MaskSet, classes: Sequence[str]) -> TaskMetrics:
    """mIoU, per-class IoU, boundary IoU, pixel false-negative rate per class, pixel accuracy.

    Means skip classes absent from both truth and prediction; such a class gets no ``iou[cls]``.
    ``fn_rate[cls]`` is over pixels: labelled pixels of the class predicted as another class
    divided by the labelled pixels of the class (absent when the class has no labelled pixel).
    ``defect_recall[cls]`` and ``instance_miss_rate[cls]`` count instances (connected components)
    instead, see :func:`instance_recall` (absent when the class has no instance).
    """
    k = len(classes)
    preds = outputs.argmax(1)
    targets = mask_set.targets
    cm = confusion_matrix(preds, targets, k)
    per_iou, miou = iou_from_confusion(cm)
    per_biou = boundary_iou(preds, targets, k)
    instances, found = instance_recall(preds, targets, k)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = cm.diag()
    total = int(cm.sum())
    metrics: dict[str, float] = {
        "miou": miou,
        "pixel_accuracy": float(tp.sum()) / total if total else 0.0,
    }
    bvals = [v for v in per_biou if v is not None]
    metrics["boundary_iou"] = float(np.mean(bvals)) if bvals else 0.0
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        entry: dict[str, float] = {"support": float(support[i])}
        if per_iou[i] is not None:
            entry["iou"] = per_iou[i]
            metrics[f"iou[{name}]"] = per_iou[i]
        if per_biou[i] is not None:
            entry["boundary_iou"] = per_biou[i]
        if support[i] > 0:
            entry["fn_rate"] = float(1 - tp[i].double() / support[i])
            metrics[f"fn_rate[{name}]"] = entry["fn_rate"]
        if predicted[i] > 0:
            entry["precision"] = float(tp[i].double() / predicted[i])
        if instances[i] > 0:
            entry["instances"] = float(instances[i])
            entry["defect_recall"] = found[i] / instances[i]
            metrics[f"defect_recall[{name}]"] = entry["defect_recall"]
            metrics[f"instance_miss_rate[{name}]"] = 1.0 - entry["defect_recall"]
        per_class[name] = entry
    for key, value in metrics.items():
        if not np.isfinite(value):
            raise ValueError(f"metric {key} is not finite ({value}); the model output is broken")
    return TaskMetrics(metrics=metrics, per_class=per_class, confusion_matrix=[[int(v) for v in r] for r in cm.tolist()])


# ---- deployment (ONNX) ------------------------------------------------------------------------
def example_input(meta: dict[str, Any], batch: int = 1) -> torch.Tensor:
    s = int(meta["image_size"])
    return torch.rand((batch, 3, s, s), generator=torch.Generator().manual_seed(0))


def deploy_inputs(mask_set: MaskSet) -> torch.Tensor:
    return mask_set.images.float() / 255.0


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    return describe_onnx(TASK, meta, ONNX_INPUT_DESCRIPTION,
                         "logits, N x num_classes x H x W (softmax over dim 1; argmax gives the class map)")
