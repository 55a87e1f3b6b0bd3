"""Multi-label outputs at serving and scoring time (numpy only, no torch).

The exported graph returns ``logits`` (N x K); ``sigmoid`` gives one probability per label and a
label is predicted when its probability reaches the threshold (default :data:`THRESHOLD`). Each
label is a yes/no decision of its own, so:

- the service's ``confidence`` is the least sure decision, ``min_k max(p_k, 1 - p_k)``;
- the uncertainty measures (higher = less sure, each in [0, 1]) are those of the least sure
  decision: ``least_confidence = 1 - min_k max(p_k, 1 - p_k)``, ``margin = max_k (1 - |2 p_k - 1|)``
  (1 when a label sits exactly on the fence), ``entropy = max_k H2(p_k)`` (binary entropy in bits);
- a machine label is the predicted set, given only when every decision is at least ``threshold`` sure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from conveyor.labels.hardcases import Scored
from conveyor.serving.prediction import Prediction

THRESHOLD = 0.5


def probabilities(outputs: Mapping[str, np.ndarray], classes: Sequence[str]) -> np.ndarray:
    """Per-label probabilities (K,) of one image from its raw outputs (with or without the batch axis)."""
    if "logits" not in outputs:
        raise ValueError(f"a multilabel graph answers 'logits'; got {sorted(outputs)}")
    z = np.asarray(outputs["logits"], dtype=np.float64).reshape(-1)
    if z.size != len(classes):
        raise ValueError(f"{z.size} logits for {len(classes)} labels; one image's outputs are expected")
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def predicted(p: np.ndarray, classes: Sequence[str], threshold: float = THRESHOLD) -> list[str]:
    """The labels whose probability reaches ``threshold``, in class order."""
    return [str(c) for c, v in zip(classes, p) if v >= threshold]


def sureness(p: np.ndarray) -> float:
    """How sure the least sure yes/no decision is: ``min max(p, 1 - p)`` (1 with no labels)."""
    return float(np.maximum(p, 1.0 - p).min()) if p.size else 1.0


def _unit(v: float) -> float:
    return float(min(1.0, max(0.0, float(v))))


def measures(p: np.ndarray) -> tuple[float, float, float]:
    """``(least_confidence, margin, entropy)`` of the least sure decision (see the module doc)."""
    if p.size == 0:
        return 0.0, 0.0, 0.0
    q = np.clip(p, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = -(np.where(q > 0, q * np.log2(q), 0.0) + np.where(q < 1, (1 - q) * np.log2(1 - q), 0.0))
    return _unit(1.0 - sureness(q)), _unit((1.0 - np.abs(2.0 * q - 1.0)).max()), _unit(bits.max())


def answer(outputs: Mapping[str, np.ndarray], classes: Sequence[str], threshold: float = THRESHOLD) -> dict[str, Any]:
    """The service's answer for one image: ``labels`` (predicted, class order), ``probabilities`` per
    label, ``confidence`` and the ``threshold`` used."""
    p = probabilities(outputs, classes)
    return {"labels": predicted(p, classes, threshold), "probabilities": {str(c): float(v) for c, v in zip(classes, p)},
            "confidence": sureness(p), "threshold": float(threshold)}


def log_features(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The prediction log's columns for an answer: ``predicted`` (labels joined by ``;``, empty for
    none), ``confidence`` and ``predicted_count`` (how many labels)."""
    return {"predicted": ";".join(answer["labels"]), "confidence": float(answer["confidence"]),
            "predicted_count": float(len(answer["labels"]))}


def decode(outputs: Mapping[str, np.ndarray], classes: Sequence[str], size: int, width: int,
           height: int) -> Prediction:
    """The service's answer (:func:`answer`) and the prediction log's fields (:func:`log_features`)."""
    payload = answer(outputs, classes)
    return Prediction(payload, log_features(payload))


def score(outputs: Mapping[str, np.ndarray], classes: Sequence[str]) -> Scored:
    """Hard-case measures of the least sure per-label decision; ``predicted`` is the surest
    predicted label (None when no label is predicted), ``classes`` every predicted label."""
    p = probabilities(outputs, classes)
    labels = predicted(p, classes)
    names = [str(c) for c in classes]
    top = max(labels, key=lambda c: p[names.index(c)]) if labels else None
    lc, margin, entropy = measures(p)
    return Scored(top, tuple(labels), sureness(p), lc, margin, entropy)


def machine_label(outputs: Mapping[str, np.ndarray], classes: Sequence[str], threshold: float,
                  **ctx: Any) -> list[str] | None:
    """The predicted label set when every per-label decision is at least ``threshold`` sure, else None."""
    return machine_labels(outputs, classes, threshold)


class LabelSetNames(frozenset):
    """The label names; ``in`` also accepts a logged label set, names joined by ``;`` ("" for none),
    as the prediction log's ``predicted`` holds it."""

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if frozenset.__contains__(self, value) or value == "":
            return True
        return all(frozenset.__contains__(self, part.strip()) for part in value.split(";"))


def prediction_classes(classes: Sequence[str]) -> set[str]:
    """The label names (see :class:`LabelSetNames`: a ``predicted`` of several names passes too)."""
    return LabelSetNames(str(c) for c in classes)


def machine_labels(outputs: Mapping[str, np.ndarray], classes: Sequence[str], threshold: float) -> list[str] | None:
    """The predicted label set when every per-label decision is at least ``threshold`` sure, else None."""
    p = probabilities(outputs, classes)
    if sureness(p) < threshold:
        return None
    return predicted(p, classes)
