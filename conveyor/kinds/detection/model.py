"""Object detection: torchvision detectors trained from scratch, in-memory image sets, COCO mAP.

This module implements the task-adapter contract described in :mod:`conveyor.kinds.classification`.
What differs from classification:

- targets are one dict per image, ``{"boxes": float32 (K, 4) xyxy pixels at train.image_size,
  "labels": int64 (K,)}``; images without boxes are negatives (K = 0);
- the model computes its own losses in train mode (``training_loss`` sums torchvision's loss
  dict; ``make_criterion`` returns None), and normalises inside its transform, so the adapter
  feeds float images in [0, 1];
- outputs are one dict per image, ``{"boxes", "scores", "labels"}``;
- metrics: ``map50`` and ``map`` (COCO mAP@0.5 and mAP@0.5:0.95, torchmetrics'
  MeanAveragePrecision with the pycocotools backend), and greedy IoU>=0.5 matching at the
  confidence threshold ``SCORE_THRESHOLD`` for per-class and macro ``precision`` / ``recall``;
- the exported graph takes ONE image (1 x 3 x S x S float32 in [0, 1]) and returns
  ``boxes`` (D x 4), ``scores`` (D,), ``labels`` (D,) after NMS (torchvision's detection
  postprocessing is traced for a single image, so the batch axis is fixed at 1;
  ``THROUGHPUT_BATCH = 1``).

The split table gives each image its boxes in the ``boxes`` column (a list of structs
``x1, y1, x2, y2, category`` in absolute pixels of the original image, written by ingest).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from conveyor.kinds.classification.model import decode_images, describe_onnx

TASK = "detection"
PRIMARY_METRIC = "map50"
# ONNX vs torch: largest difference of scores and of boxes (in units of the image side).
PARITY_ATOL = 1e-3
ONNX_INPUT_NAMES = ["images"]
ONNX_OUTPUT_NAMES = ["boxes", "scores", "labels"]
ONNX_DYNAMIC_AXES = {"boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"}}
ONNX_INPUT_DESCRIPTION = "float32 RGB, 1 x 3 x S x S, values in [0, 1]; normalisation is inside the graph"
THROUGHPUT_BATCH = 1
# Confidence threshold for precision / recall (mAP uses every detection).
SCORE_THRESHOLD = 0.5
MATCH_IOU = 0.5
# D-ECE: detections scoring at least this count as calibration events (Küppers et al. use 0.3).
CALIBRATION_MIN_SCORE = 0.3
CALIBRATION_BINS = 10
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_REQUIRED_COLUMNS = ("id", "path", "split", "boxes", "width", "height")

MODELS = (
    "fcos_resnet18_fpn",
    "retinanet_resnet18_fpn",
    "ssdlite320_mobilenet_v3_large",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)


# ---- model ------------------------------------------------------------------------------------
def _resnet18_fpn(channels: int):
    """A resnet18 with an FPN over C3..C5 plus P6/P7 (from P5), ``channels`` wide, from scratch:
    every layer trains, with ordinary batch norm (frozen batch norm only suits pretrained weights)."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    return BackboneWithFPN(
        body, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"}, in_channels_list=[128, 256, 512],
        out_channels=channels, extra_blocks=LastLevelP6P7(channels, channels), norm_layer=None,
    )


def build_model(model_name: str, num_classes: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised torchvision detector (``weights=None, weights_backbone=None``).

    ``num_classes`` counts the object classes; models with a background class get one more.
    ``model_kwargs`` go to the torchvision constructor (e.g. ``score_thresh``, ``detections_per_img``),
    except ``fpn_channels`` (default 128; torchvision's resnet FPN uses 256): the width of the FPN
    and of the FCOS / RetinaNet heads, whose cost grows with its square.
    The detector's internal resize defaults to ``min_size = max_size = 160`` (SSDlite: 320, or ``size``), so
    160 px images (``train.image_size: 160``) pass through unresized; ``model_kwargs`` may override it.
    """
    if num_classes < 1:
        raise ValueError(f"detection needs at least 1 class, got {num_classes}")
    kwargs = dict(model_kwargs or {})
    for reserved in ("weights", "weights_backbone", "num_classes"):
        if reserved in kwargs:
            raise ValueError(f"train.model_kwargs: {reserved!r} is set by conveyor and may not be given")
    size = 160
    channels = int(kwargs.pop("fpn_channels", 128))
    common = dict(min_size=size, max_size=size, image_mean=list(_IMAGENET_MEAN), image_std=list(_IMAGENET_STD))
    from torchvision.models import detection as D

    try:
        if model_name == "fcos_resnet18_fpn":
            backbone = _resnet18_fpn(channels)
            return D.FCOS(backbone, num_classes=num_classes, **{**common, **kwargs})
        if model_name == "retinanet_resnet18_fpn":
            backbone = _resnet18_fpn(channels)
            return D.RetinaNet(backbone, num_classes=num_classes, **{**common, **kwargs})
        if model_name == "ssdlite320_mobilenet_v3_large":
            # torchvision fixes its input size at 320 x 320; ``size`` in model_kwargs sets another
            # (e.g. 160 for 160 px images: 4x less compute than upsampling them to 320).
            ssd_size = int(kwargs.pop("size", 320))
            model = D.ssdlite320_mobilenet_v3_large(
                weights=None, weights_backbone=None, num_classes=num_classes + 1,
                image_mean=list(_IMAGENET_MEAN), image_std=list(_IMAGENET_STD), **kwargs
            )
            if ssd_size != 320:
                from torchvision.models.detection.transform import GeneralizedRCNNTransform

                t = model.transform
                model.transform = GeneralizedRCNNTransform(
                    ssd_size, ssd_size, t.image_mean, t.image_std, size_divisible=1, fixed_size=(ssd_size, ssd_size)
                )
            return model
        if model_name == "fasterrcnn_mobilenet_v3_large_320_fpn":
            return D.fasterrcnn_mobilenet_v3_large_320_fpn(
                weights=None, weights_backbone=None, num_classes=num_classes + 1, **{**common, **kwargs}
            )
    except TypeError as err:
        raise ValueError(f"train.model_kwargs: {model_name} does not accept these arguments: {err}") from None
    raise ValueError(f"train.model: unknown detection model {model_name!r}; available: {', '.join(MODELS)}")


def _label_offset(model: nn.Module) -> int:
    """1 when the model reserves label 0 for background (SSD, Faster R-CNN), else 0."""
    from torchvision.models.detection import FCOS, RetinaNet

    return 0 if isinstance(model, (FCOS, RetinaNet)) else 1


def normalization(model: nn.Module) -> tuple[list[float], list[float]]:
    t = getattr(model, "transform", None)
    mean = getattr(t, "image_mean", _IMAGENET_MEAN)
    std = getattr(t, "image_std", _IMAGENET_STD)
    return [float(m) for m in mean], [float(s) for s in std]


# ---- data -------------------------------------------------------------------------------------
@dataclass
class ImageSet:
    """One split, decoded: ``images`` uint8 (N, 3, S, S), ``targets`` one dict per image (boxes in
    pixels of the S x S image, labels as class indices), rows sorted by id."""

    split: str
    ids: list[str]
    images: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_boxes(self) -> int:
        return sum(int(t["labels"].numel()) for t in self.targets)


def _empty_target() -> dict[str, torch.Tensor]:
    return {"boxes": torch.zeros((0, 4), dtype=torch.float32), "labels": torch.zeros((0,), dtype=torch.int64)}


def targets_from_rows(boxes_col: list, widths: list, heights: list, classes: Sequence[str], image_size: int,
                      where: str = "split table") -> list[dict[str, torch.Tensor]]:
    """Targets from the ``boxes`` column, scaled from each image's size to ``image_size``."""
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for boxes, w, h in zip(boxes_col, widths, heights):
        boxes = boxes or []
        if not boxes:
            out.append(_empty_target())
            continue
        unknown = sorted({b["category"] for b in boxes} - set(index))
        if unknown:
            raise ValueError(f"{where}: boxes with categories not in the class list: {unknown[:10]}; classes: {list(classes)}")
        sx, sy = image_size / float(w), image_size / float(h)
        xyxy = torch.tensor([[b["x1"] * sx, b["y1"] * sy, b["x2"] * sx, b["y2"] * sy] for b in boxes], dtype=torch.float32)
        labels = torch.tensor([index[b["category"]] for b in boxes], dtype=torch.int64)
        out.append({"boxes": xyxy, "labels": labels})
    return out


def load_split(split_path: str | Path, classes: Sequence[str], split: str, image_size: int, *,
               progress: bool = False) -> ImageSet:
    import polars as pl

    df = pl.read_parquet(split_path)
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"split table {split_path} lacks columns {missing} needed for detection; it has {df.columns}")
    rows = df.filter(pl.col("split") == split).select(list(_REQUIRED_COLUMNS)).sort("id")
    if rows["id"].n_unique() != rows.height:
        raise ValueError(f"split table {split_path}: ids are not unique in split {split!r}")
    images = decode_images(rows["id"].to_list(), rows["path"].to_list(), split, image_size, progress=progress)
    targets = targets_from_rows(rows["boxes"].to_list(), rows["width"].to_list(), rows["height"].to_list(),
                                classes, image_size, where=f"split table {split_path}")
    return ImageSet(split=split, ids=rows["id"].to_list(), images=images, targets=targets, classes=list(classes))


class _DetDataset(torch.utils.data.Dataset):
    def __init__(self, image_set: ImageSet):
        self.images = image_set.images
        self.targets = image_set.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images.index_select(0, idx), [self.targets[i] for i in indices]


def make_dataset(image_set: ImageSet) -> torch.utils.data.Dataset:
    return _DetDataset(image_set)


def collate(batch):
    """Batches are (uint8 images (B, 3, S, S), list of B target dicts)."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return batch
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


@dataclass(frozen=True)
class Augment:
    """Horizontal flips (boxes mirrored) and brightness/contrast jitter, drawn from an explicit generator."""

    hflip: bool = False
    color_jitter: float = 0.0

    def __call__(self, images: torch.Tensor, targets: list[dict], generator: torch.Generator):
        import torchvision.transforms.v2.functional as F

        n, _, _, w = images.shape
        flips = (torch.rand(n, generator=generator) < 0.5).tolist() if self.hflip else [False] * n
        c = self.color_jitter
        factors = (1 + (torch.rand(n, 2, generator=generator) * 2 - 1) * c).tolist() if c else None
        out = images.clone()
        new_targets = []
        for i in range(n):
            t = targets[i]
            if flips[i]:
                out[i] = F.horizontal_flip(out[i])
                b = t["boxes"].clone()
                b[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
                t = {"boxes": b, "labels": t["labels"]}
            if factors is not None:
                out[i] = F.adjust_contrast(F.adjust_brightness(out[i], max(factors[i][0], 0.0)), max(factors[i][1], 0.0))
            new_targets.append(t)
        return out, new_targets


def make_augment(augment_spec: Any, image_size: int) -> Augment | None:
    """Geometric augmentations that would need box clipping (crops, rotations) are not applied."""
    aug = Augment(hflip=bool(augment_spec.hflip), color_jitter=float(augment_spec.color_jitter))
    return aug if (aug.hflip or aug.color_jitter) else None


# ---- training and prediction -----------------------------------------------------------------
def make_criterion(train_spec: Any) -> None:
    """Detectors compute their own losses in train mode."""
    return None


def _to_model_targets(targets: list[dict], offset: int, device) -> list[dict]:
    return [{"boxes": t["boxes"].to(device), "labels": (t["labels"] + offset).to(device)} for t in targets]


def training_loss(model: nn.Module, batch, *, criterion: Any, augment: Callable | None, generator: torch.Generator,
                  norm: Any, device: torch.device | str) -> torch.Tensor:
    images, targets = batch
    if augment is not None:
        images, targets = augment(images, targets, generator)
    x = images.to(device).float().div_(255.0)
    losses = model(list(x), _to_model_targets(targets, _label_offset(model), device))
    return sum(losses.values())


@torch.no_grad()
def predict(model: nn.Module, image_set: ImageSet, *, norm: Any = None, device: torch.device | str = "cpu",
            batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """One dict per image (boxes xyxy in pixels of the S x S image, scores, class-index labels) on the CPU."""
    model.eval()
    offset = _label_offset(model)
    out: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(image_set), batch_size):
        x = image_set.images[start : start + batch_size].to(device).float().div_(255.0)
        for d in model(list(x)):
            out.append({"boxes": d["boxes"].float().cpu(), "scores": d["scores"].float().cpu(),
                        "labels": (d["labels"] - offset).cpu()})
    return out


def prediction_records(outputs: list[dict], image_set: ImageSet, classes: Sequence[str]) -> dict[str, list]:
    """Per image: the highest detection score (0 without detections), the detections kept at
    ``SCORE_THRESHOLD`` and their mean side relative to the image side (None without any), and the
    number of ground-truth boxes (``true_objects``)."""
    side = float(image_set.images.shape[-1]) if len(image_set) else 1.0
    conf, objects, size = [], [], []
    for d in outputs:
        scores = d["scores"]
        keep = scores >= SCORE_THRESHOLD
        conf.append(float(scores.max()) if scores.numel() else 0.0)
        objects.append(float(keep.sum()))
        b = d["boxes"][keep]
        sides = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).sqrt() / side
        size.append(float(sides.mean()) if sides.numel() else None)
    return {"id": list(image_set.ids), "confidence": conf, "predicted_objects": objects,
            "predicted_object_size": size, "true_objects": [float(t["labels"].numel()) for t in image_set.targets]}


# ---- metrics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskMetrics:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    curves: dict[str, Any] = field(default_factory=dict)


def _coco_eval(outputs: list[dict], targets: list[dict], extended: bool = False) -> dict[str, Any]:
    """torchmetrics' MeanAveragePrecision (pycocotools backend); ``extended`` adds the precision
    array (IoU thresholds x 101 recall points x classes x areas x max detections)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools",
                                  extended_summary=extended)
    metric.update([{k: v for k, v in o.items()} for o in outputs], [dict(t) for t in targets])
    # pycocotools prints its summary table to stdout, which must stay clean for ``--json`` output.
    with contextlib.redirect_stdout(io.StringIO()):
        return metric.compute()


def _map_values(res: dict[str, Any]) -> dict[str, float]:
    out = {"map": float(res["map"]), "map50": float(res["map_50"])}
    return {k: (v if v >= 0 else 0.0) for k, v in out.items()}  # -1 means "no ground truth"


def mean_average_precision(outputs: list[dict], targets: list[dict]) -> dict[str, float]:
    """COCO mAP@0.5:0.95 (``map``) and mAP@0.5 (``map50``), torchmetrics with the pycocotools backend.

    Without any ground-truth box the mAP is undefined; both are then reported as 0.
    """
    return _map_values(_coco_eval(outputs, targets))


def class_average_precision(res: dict[str, Any], num_classes: int) -> tuple[dict[int, dict[str, float]], dict[int, list[float]]]:
    """Per class, from an extended COCO evaluation: ``ap50`` (AP at IoU 0.5) and ``ap`` (AP over IoU
    0.5:0.95), and the precision at the 101 COCO recall points at IoU 0.5 (all areas, 100
    detections). Classes without ground-truth boxes are left out (COCO's -1)."""
    prec = res.get("precision")
    ids = res.get("classes")
    if prec is None or ids is None:
        return {}, {}
    prec = np.asarray(prec, dtype=np.float64)
    ids = [int(i) for i in np.atleast_1d(np.asarray(ids))]
    ap: dict[int, dict[str, float]] = {}
    curves: dict[int, list[float]] = {}
    for k, c in enumerate(ids):
        if not 0 <= c < num_classes or k >= prec.shape[2]:
            continue
        p = prec[:, :, k, 0, -1]
        if not (p > -1).any():
            continue
        at50 = p[0]
        ap[c] = {"ap50": float(at50[at50 > -1].mean()), "ap": float(p[p > -1].mean())}
        curves[c] = [round(float(max(v, 0.0)), 4) for v in at50]
    return ap, curves


def match_detections(output: dict, target: dict, cls: int, score_threshold: float = SCORE_THRESHOLD,
                     iou: float = MATCH_IOU) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One image's detections of class ``cls`` with score >= ``score_threshold``, matched greedily
    (highest score first) to an unmatched ground-truth box of the class with IoU >= ``iou``.

    Returns (scores sorted descending, whether each detection matched, the class's ground-truth count).
    """
    from torchvision.ops import box_iou

    keep = (output["scores"] >= score_threshold) & (output["labels"] == cls)
    order = torch.argsort(output["scores"][keep], descending=True, stable=True)
    boxes, scores = output["boxes"][keep][order], output["scores"][keep][order]
    gt = target["boxes"][target["labels"] == cls]
    hit = torch.zeros(boxes.shape[0], dtype=torch.bool)
    if boxes.shape[0] and gt.shape[0]:
        ious = box_iou(boxes, gt)
        taken = torch.zeros(gt.shape[0], dtype=torch.bool)
        for i in range(boxes.shape[0]):
            cand = ious[i].clone()
            cand[taken] = -1.0
            j = int(torch.argmax(cand))
            if float(cand[j]) >= iou:
                taken[j] = True
                hit[i] = True
    return scores, hit, int(gt.shape[0])


def precision_recall(outputs: list[dict], targets: list[dict], num_classes: int,
                     score_threshold: float = SCORE_THRESHOLD, iou: float = MATCH_IOU) -> tuple[list, list, list, list]:
    """Per-class TP, FP, FN counts and support, from :func:`match_detections`."""
    tp = [0] * num_classes
    fp = [0] * num_classes
    fn = [0] * num_classes
    support = [0] * num_classes
    for o, t in zip(outputs, targets):
        for c in range(num_classes):
            _, hit, n_gt = match_detections(o, t, c, score_threshold, iou)
            support[c] += n_gt
            tp[c] += int(hit.sum())
            fp[c] += int((~hit).sum())
            fn[c] += n_gt - int(hit.sum())
    return tp, fp, fn, support


def detection_calibration_error(outputs: list[dict], targets: list[dict], num_classes: int,
                                min_score: float = CALIBRATION_MIN_SCORE, n_bins: int = CALIBRATION_BINS,
                                iou: float = MATCH_IOU) -> float | None:
    """Detection expected calibration error (D-ECE, Küppers et al. 2020, confidence only).

    Every detection scoring at least ``min_score`` is a binary event, "correct" when it matches a
    ground-truth box of its class at IoU >= ``iou`` (greedy, as in :func:`precision_recall`); the
    D-ECE is the expected calibration error of the scores over those events in ``n_bins``
    equal-width bins, computed by torchmetrics' binary calibration error. None without detections.
    """
    from torchmetrics.functional.classification import binary_calibration_error

    scores, hits = [], []
    for o, t in zip(outputs, targets):
        for c in range(num_classes):
            s, hit, _ = match_detections(o, t, c, min_score, iou)
            scores.append(s.float())
            hits.append(hit.long())
    if not scores or sum(int(s.numel()) for s in scores) == 0:
        return None
    return float(binary_calibration_error(torch.cat(scores).clamp(0.0, 1.0), torch.cat(hits),
                                          n_bins=n_bins, norm="l1"))


def epoch_metrics(outputs: list[dict], image_set: ImageSet, classes: Sequence[str], criterion: Any = None) -> dict[str, float]:
    return mean_average_precision(outputs, image_set.targets)


def evaluate_outputs(outputs: list[dict], image_set: ImageSet, classes: Sequence[str]) -> TaskMetrics:
    """``map50``, ``map``, macro and per-class ``precision`` / ``recall`` at ``SCORE_THRESHOLD``,
    ``dece`` (detection calibration error, see :func:`detection_calibration_error`);
    ``per_class`` adds each class's ``ap50`` and ``ap`` (classes with ground truth), and ``curves``
    holds the precision-recall curve of each class at IoU 0.5 (``pr_iou50``).

    Macro averages run over the classes with ground-truth boxes (a class without support and
    without detections is skipped; one without support but with detections counts precision 0).
    """
    k = len(classes)
    res = _coco_eval(outputs, image_set.targets, extended=True)
    metrics = _map_values(res)
    class_ap, pr = class_average_precision(res, k)
    tp, fp, fn, support = precision_recall(outputs, image_set.targets, k)
    per_class: dict[str, dict[str, float]] = {}
    precs, recs = [], []
    for i, name in enumerate(classes):
        p = tp[i] / (tp[i] + fp[i]) if (tp[i] + fp[i]) else 0.0
        r = tp[i] / (tp[i] + fn[i]) if (tp[i] + fn[i]) else 0.0
        per_class[name] = {"precision": p, "recall": r, "support": float(support[i]), "tp": float(tp[i]),
                           "fp": float(fp[i]), "fn": float(fn[i]), **class_ap.get(i, {})}
        metrics[f"precision[{name}]"] = p
        metrics[f"recall[{name}]"] = r
        if support[i] or fp[i]:
            precs.append(p)
            recs.append(r)
    metrics["precision"] = float(np.mean(precs)) if precs else 0.0
    metrics["recall"] = float(np.mean(recs)) if recs else 0.0
    metrics["score_threshold"] = SCORE_THRESHOLD
    dece = detection_calibration_error(outputs, image_set.targets, k)
    if dece is not None:
        metrics["dece"] = dece
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise ValueError(f"metric {key} is not finite ({value}); the model output is broken")
    curves = {"pr_iou50": {"recall": [round(float(r), 2) for r in np.linspace(0.0, 1.0, 101)],
                           "precision": {classes[c]: v for c, v in sorted(pr.items())}}} if pr else {}
    return TaskMetrics(metrics=metrics, per_class=per_class, confusion_matrix=[], curves=curves)


# ---- deployment (ONNX) ------------------------------------------------------------------------
class DeployModel(nn.Module):
    """The exported graph: one float32 RGB image in [0, 1] (1 x 3 x S x S) -> boxes, scores, labels."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.offset = _label_offset(model)

    def forward(self, images: torch.Tensor):
        d = self.model([images[0]])[0]
        return d["boxes"], d["scores"], d["labels"] - self.offset


def deploy_module(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    return DeployModel(model).eval()


def example_input(meta: dict[str, Any], batch: int = 1) -> torch.Tensor:
    s = int(meta["image_size"])
    return torch.rand((1, 3, s, s), generator=torch.Generator().manual_seed(0))


def deploy_inputs(image_set: ImageSet) -> torch.Tensor:
    return image_set.images.float() / 255.0


@torch.no_grad()
def run_torch(module: nn.Module, inputs: torch.Tensor) -> list[tuple[np.ndarray, ...]]:
    """The deploy module's outputs, image by image."""
    return [tuple(o.numpy() for o in module(inputs[i : i + 1])) for i in range(len(inputs))]


def run_onnx(session, inputs: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    name = session.get_inputs()[0].name
    return [tuple(session.run(None, {name: np.ascontiguousarray(inputs[i : i + 1])})) for i in range(len(inputs))]


def _order(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Detections by descending score; near-equal scores (an untrained model has many) by position."""
    if scores.size == 0:
        return np.zeros((0,), dtype=np.int64)
    keys = [np.round(boxes[:, j], 2) for j in (3, 2, 1, 0)] + [-np.round(scores, 4)]
    return np.lexsort(keys)


def onnx_parity(torch_out: list, ort_out: list, image_size: int | None = None) -> float:
    """Largest difference over all images between torch and onnxruntime: scores, and boxes in units of
    the image side. Detections are compared class by class in score order; a detection present in
    one backend only counts as the distance of its score from the lowest score kept (a detection at
    the cut-off may fall either side of it), so anything else shows up as a large difference."""
    if len(torch_out) != len(ort_out):
        return float("inf")
    worst = 0.0
    for (tb, ts, tl), (ob, os_, ol) in zip(torch_out, ort_out):
        side = float(image_size or max(1.0, float(np.abs(tb).max(initial=1.0))))
        floor = _score_floor(ts, os_)
        for c in np.union1d(tl, ol):
            a, b = tl == c, ol == c
            ta, oa = _order(tb[a], ts[a]), _order(ob[b], os_[b])
            n = min(len(ta), len(oa))
            if n:
                worst = max(worst, float(np.abs(ts[a][ta[:n]] - os_[b][oa[:n]]).max()),
                            float(np.abs(tb[a][ta[:n]] - ob[b][oa[:n]]).max()) / side)
            extra = np.concatenate([ts[a][ta[n:]], os_[b][oa[n:]]])
            if extra.size:
                worst = max(worst, float(np.abs(extra - floor).max()))
    return worst if math.isfinite(worst) else float("inf")


def _score_floor(*scores: np.ndarray) -> float:
    """The lowest score either backend kept."""
    lows = [float(s.min()) for s in scores if s.size]
    return min(lows) if lows else 0.0


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    return describe_onnx(TASK, meta, ONNX_INPUT_DESCRIPTION,
                         "boxes D x 4 (xyxy pixels), scores D, labels D (class index); one image per call")
