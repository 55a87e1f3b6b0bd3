"""Classification's scoring and serving side (numpy only): decode logits, hard-case scores, machine labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from conveyor.labels.hardcases import Scored, class_name, softmax, uncertainty_measures, unit_interval
from conveyor.serving.prediction import Prediction


def decode(outputs: Mapping[str, np.ndarray], classes: list[str], size: int, width: int, height: int) -> Prediction:
    """The class with the highest probability, its confidence and every class's probability."""
    p = softmax(outputs["logits"][0], 0)
    i = int(p.argmax())
    return Prediction({"label": classes[i], "confidence": float(p[i]),
                       "probabilities": {c: float(v) for c, v in zip(classes, p)}},
                      {"predicted": classes[i], "confidence": float(p[i])})


def score_logits(logits: np.ndarray, classes: Sequence[str]) -> Scored:
    """Score the logits ``(K,)`` or ``(1, K)`` of one image: the measures of their softmax."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if z.size == 0:
        raise ValueError("classification logits are empty")
    p = softmax(z, 0)
    i = int(p.argmax())
    p1, lc, margin, entropy = uncertainty_measures(p)
    name = class_name(classes, i)
    return Scored(name, (name,), unit_interval(p1), unit_interval(lc), unit_interval(margin), unit_interval(entropy))


def score(outputs: Mapping[str, np.ndarray], classes: Sequence[str]) -> Scored:
    return score_logits(outputs["logits"], classes)


def machine_label(outputs: Mapping[str, np.ndarray], classes: Sequence[str], threshold: float,
                  **ctx: Any) -> str | None:
    """The predicted class when its probability is at least ``threshold``."""
    sc = score(outputs, classes)
    return sc.predicted if sc.confidence >= threshold else None


def prediction_classes(classes: Sequence[str]) -> set[str]:
    return {str(c) for c in classes}
