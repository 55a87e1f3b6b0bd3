"""Gate metrics that count what users gate on: missed defect instances, detector calibration."""

from __future__ import annotations

import pytest
import torch

from conveyor.kinds.detection import model as det
from conveyor.kinds.segmentation import model as seg

CLASSES = ["background", "defect"]


def _mask_set(targets: torch.Tensor):
    n, h, w = targets.shape
    return seg.MaskSet(split="test", ids=[f"m{i}" for i in range(n)], images=torch.zeros((n, 3, h, w), dtype=torch.uint8),
                       targets=targets, classes=CLASSES)


def _logits(pred: torch.Tensor) -> torch.Tensor:
    """Logits whose argmax is ``pred`` (N, H, W)."""
    return torch.nn.functional.one_hot(pred.long(), 2).permute(0, 3, 1, 2).float() * 10.0


def test_small_missed_defects_fail_instance_recall_but_not_pixel_fn_rate():
    target = torch.zeros((1, 64, 64), dtype=torch.uint8)
    target[0, 5:35, 5:35] = 1  # one large defect, 900 pixels
    target[0, 50:52, 50:52] = 1  # two small ones, 4 pixels each
    target[0, 56:58, 10:12] = 1
    pred = torch.zeros_like(target)
    pred[0, 5:35, 5:35] = 1  # the model finds the large defect only
    m = seg.evaluate_outputs(_logits(pred), _mask_set(target), CLASSES).metrics
    assert m["fn_rate[defect]"] == pytest.approx(8 / 908)  # passes a pixel gate of 0.06
    assert m["defect_recall[defect]"] == pytest.approx(1 / 3)
    assert m["instance_miss_rate[defect]"] == pytest.approx(2 / 3)


def test_instance_counts_as_found_from_the_coverage_share_up():
    target = torch.zeros((2, 20, 20), dtype=torch.uint8)
    target[0, 0:10, 0:10] = 1  # 100 pixels, half predicted: found at coverage 0.5
    target[1, 0:10, 0:10] = 1  # 100 pixels, 49 predicted: missed
    target[1, 15:17, 15:17] = 1  # separate instance, fully predicted
    pred = torch.zeros_like(target)
    pred[0, 0:5, 0:10] = 1
    pred[1, 0:7, 0:7] = 1
    pred[1, 15:17, 15:17] = 1
    total, found = seg.instance_recall(pred, target, 2)
    assert total == [0, 3] and found == [0, 2]
    # diagonal neighbours are one instance (8-connectivity)
    t = torch.zeros((1, 4, 4), dtype=torch.uint8)
    t[0, 0, 0] = t[0, 1, 1] = 1
    assert seg.instance_recall(t, t, 2) == ([0, 1], [0, 1])


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


def test_detection_calibration_error_compares_scores_with_matches():
    target = _det([[0, 0, 10, 10], [20, 20, 30, 30]], [1.0, 1.0], [0, 0])
    # both detections correct at score 0.9: the scores are 0.1 under-confident
    good = _det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.9], [0, 0])
    assert det.detection_calibration_error([good], [target], 1) == pytest.approx(0.1, abs=1e-6)
    # one correct, one wrong (wrong class), both at 0.8: accuracy 0.5 in the bin
    mixed = _det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.8, 0.8], [0, 1])
    assert det.detection_calibration_error([mixed], [target], 2) == pytest.approx(0.3, abs=1e-6)
    # detections under the calibration floor do not count; none left is "not measurable"
    low = _det([[0, 0, 10, 10]], [0.1], [0])
    assert det.detection_calibration_error([low], [target], 1) is None


def test_precision_recall_keeps_its_counts_after_the_matching_refactor():
    target = _det([[0, 0, 10, 10], [20, 20, 30, 30]], [1.0, 1.0], [0, 0])
    out = _det([[0, 0, 10, 10], [1, 1, 10, 10], [40, 40, 50, 50]], [0.9, 0.8, 0.7], [0, 0, 0])
    tp, fp, fn, support = det.precision_recall([out], [target], 1)
    assert (tp, fp, fn, support) == ([1], [2], [1], [2])
