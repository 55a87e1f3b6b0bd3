"""Detection's scoring and serving side (numpy only): decode boxes, hard-case scores, machine boxes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from conveyor.labels.hardcases import Scored, class_name, unit_interval
from conveyor.serving.prediction import BACKGROUND, Prediction

# conveyor.kinds.detection.model.SCORE_THRESHOLD, repeated so that serving does not import torch.
SCORE_THRESHOLD = 0.5
# a box scoring at least this is an object of the image (its class is predicted)
OBJECT_THRESHOLD = 0.5


def decode(outputs: Mapping[str, np.ndarray], classes: list[str], size: int, width: int, height: int) -> Prediction:
    """Detections at ``SCORE_THRESHOLD``, boxes scaled from the S x S input to the original pixels.
    ``predicted`` is the top detection's class (``background`` without any), as feedback names it."""
    boxes = np.asarray(outputs["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(outputs["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(outputs["labels"]).reshape(-1).astype(np.int64)
    keep = np.flatnonzero(scores >= SCORE_THRESHOLD)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    scale = np.array([width / size, height / size, width / size, height / size])
    limit = np.array([width, height, width, height], dtype=np.float64)
    objects = []
    for j in keep:
        box = np.clip(boxes[j] * scale, 0.0, limit)
        label = classes[labels[j]] if 0 <= labels[j] < len(classes) else str(int(labels[j]))
        objects.append({"label": label, "score": float(scores[j]), "box": [round(float(v), 2) for v in box]})
    kb = boxes[keep]
    sides = np.sqrt(np.clip(kb[:, 2] - kb[:, 0], 0, None) * np.clip(kb[:, 3] - kb[:, 1], 0, None)) / size
    return Prediction({"objects": objects, "count": len(objects)}, {
        "predicted": objects[0]["label"] if objects else BACKGROUND,
        "confidence": float(scores.max()) if scores.size else 0.0,
        "predicted_objects": float(len(objects)),
        "predicted_object_size": float(sides.mean()) if sides.size else None,
    })


def score_boxes(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                floor: float = 0.05) -> Scored:
    """Score one image's detections: its most uncertain box (score >= ``floor``) decides."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    if lab.size != s.size:
        raise ValueError(f"{s.size} scores but {lab.size} labels")
    objects = np.flatnonzero(s >= OBJECT_THRESHOLD)
    objects = objects[np.argsort(-s[objects], kind="stable")]
    predicted = class_name(classes, int(lab[objects[0]])) if objects.size else None
    present = tuple(sorted({class_name(classes, int(lab[j])) for j in objects}))
    live = s[s >= floor]
    if live.size == 0:
        confidence = 1.0 - float(s.max()) if s.size else 1.0
        return Scored(predicted, present, unit_interval(confidence), 0.0, 0.0, 0.0)
    sure = np.maximum(live, 1.0 - live)
    q = np.clip(live, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = -(np.where(q > 0, q * np.log2(q), 0.0) + np.where(q < 1, (1 - q) * np.log2(1 - q), 0.0))
    return Scored(predicted, present, unit_interval(sure.min()), unit_interval((1.0 - sure).max()),
                  unit_interval((1.0 - np.abs(2.0 * live - 1.0)).max()), unit_interval(bits.max()))


def score(outputs: Mapping[str, np.ndarray], classes: Sequence[str]) -> Scored:
    return score_boxes(outputs["boxes"], outputs["scores"], outputs["labels"], classes)


def machine_boxes(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                  size: int, width: int, height: int, min_score: float = 0.5) -> list[dict[str, Any]]:
    """Boxes scoring at least ``min_score`` as labels in the original ``width`` x ``height`` pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    keep = np.flatnonzero(s >= min_score)
    keep = keep[np.argsort(-s[keep], kind="stable")]
    scale = np.array([width / size, height / size, width / size, height / size])
    limit = np.array([width, height, width, height], dtype=np.float64)
    out: list[dict[str, Any]] = []
    for j in keep:
        if not 0 <= lab[j] < len(classes):
            continue
        x1, y1, x2, y2 = np.clip(b[j] * scale, 0.0, limit).tolist()
        if x2 <= x1 or y2 <= y1:
            continue
        out.append({"x1": round(x1, 2), "y1": round(y1, 2), "x2": round(x2, 2), "y2": round(y2, 2),
                    "category": str(classes[int(lab[j])])})
    return out


def machine_label(outputs: Mapping[str, np.ndarray], classes: Sequence[str], threshold: float, *, size: int,
                  width: int, height: int, **ctx: Any) -> list[dict[str, Any]] | None:
    """The boxes scoring at least ``OBJECT_THRESHOLD`` (original pixels) when the image's least sure
    box decision is at least ``threshold`` sure."""
    if score(outputs, classes).confidence < threshold:
        return None
    return machine_boxes(np.asarray(outputs["boxes"]).reshape(-1, 4), np.asarray(outputs["scores"]).reshape(-1),
                         np.asarray(outputs["labels"]).reshape(-1), classes, size, width, height,
                         min_score=OBJECT_THRESHOLD)


def prediction_classes(classes: Sequence[str]) -> set[str]:
    return {str(c) for c in classes} | {BACKGROUND}
