"""Segmentation's scoring and serving side (numpy only): class shares, hard-case scores, machine masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from conveyor.labels.hardcases import Scored, class_name, softmax, uncertainty_measures, unit_interval
from conveyor.serving.prediction import BACKGROUND, Prediction

IGNORE_INDEX = 255


def decode(outputs: Mapping[str, np.ndarray], classes: list[str], size: int, width: int, height: int) -> Prediction:
    """Pixel share per class, the share not predicted as class 0 (background), mean max probability."""
    p = softmax(outputs["logits"][0], 0)
    idx = p.argmax(0)
    share = np.bincount(idx.ravel(), minlength=len(classes))[: len(classes)] / idx.size
    confidence = float(p.max(0).mean())
    foreground = float(1.0 - share[0])
    top = int(share[1:].argmax()) + 1 if len(classes) > 1 and foreground > 0 else 0
    return Prediction({"classes": {c: float(s) for c, s in zip(classes, share)}, "foreground": foreground,
                       "confidence": confidence},
                      {"predicted": classes[top] if top else BACKGROUND, "confidence": confidence,
                       "predicted_foreground": foreground})


def image_logits(logits: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` logits of one image from ``(1, K, H, W)`` or ``(K, H, W)``."""
    z = np.asarray(logits)
    if z.ndim == 4:
        if z.shape[0] != 1:
            raise ValueError(f"segmentation logits of one image expected, got batch of {z.shape[0]}")
        z = z[0]
    if z.ndim != 3:
        raise ValueError(f"segmentation logits must be (1, K, H, W) or (K, H, W), got {np.shape(logits)}")
    return z


def score_logits(logits: np.ndarray, classes: Sequence[str]) -> Scored:
    """Score the logits ``(1, K, S, S)`` or ``(K, S, S)`` of one image; class 0 is background."""
    p = softmax(image_logits(logits), 0)
    idx = p.argmax(0)
    counts = np.bincount(idx.ravel(), minlength=p.shape[0])
    fg = counts[1:]
    predicted = class_name(classes, int(fg.argmax()) + 1) if fg.size and fg.max() > 0 else None
    present = tuple(sorted(class_name(classes, int(i)) for i in np.flatnonzero(counts) if i >= 1))
    p1, lc, margin, entropy = uncertainty_measures(p)
    return Scored(predicted, present, unit_interval(p1.mean()), unit_interval(lc.mean()),
                  unit_interval(margin.mean()), unit_interval(entropy.mean()))


def score(outputs: Mapping[str, np.ndarray], classes: Sequence[str]) -> Scored:
    return score_logits(outputs["logits"], classes)


def machine_mask(logits: np.ndarray, threshold: float, ignore_index: int, width: int, height: int) -> np.ndarray:
    """A uint8 ``(height, width)`` class mask; pixels less sure than ``threshold`` get ``ignore_index``."""
    p = softmax(image_logits(logits), 0)
    mask = p.argmax(0).astype(np.uint8)
    mask[p.max(0) < threshold] = np.uint8(ignore_index)
    if mask.shape != (height, width):
        from PIL import Image

        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST), dtype=np.uint8)
    return mask


def machine_label(outputs: Mapping[str, np.ndarray], classes: Sequence[str], threshold: float, *, width: int,
                  height: int, ignore_index: int = IGNORE_INDEX, **ctx: Any) -> np.ndarray | None:
    """The class mask in the original pixels, pixels less sure than ``threshold`` set to ``ignore_index``,
    when the image's mean pixel confidence is at least ``threshold``."""
    if score(outputs, classes).confidence < threshold:
        return None
    return machine_mask(outputs["logits"], threshold, ignore_index, width, height)


def prediction_classes(classes: Sequence[str]) -> set[str]:
    return {str(c) for c in classes} | {BACKGROUND}
