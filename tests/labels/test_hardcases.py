"""Hard-case scoring, machine labels and the review sampler, on constructed outputs and pools."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from conveyor.kinds.classification.serving import score_logits as score_classification
from conveyor.kinds.detection.serving import machine_boxes
from conveyor.kinds.detection.serving import score_boxes as score_detection
from conveyor.kinds.segmentation.serving import machine_mask
from conveyor.kinds.segmentation.serving import score_logits as score_segmentation
from conveyor.labels.hardcases import (
    MEASURES,
    rare_classes,
    score_outputs,
    select_hard_cases,
)

CLASSES = ["cat", "dog", "fox", "owl"]
ALL_UNCERTAINTY = {"uncertainty": 1.0, "disagreement": 0.0, "rare": 0.0, "diversity": 0.0}
ALL_DIVERSITY = {"uncertainty": 0.0, "disagreement": 0.0, "rare": 0.0, "diversity": 1.0}


def _in_unit(s) -> None:
    for v in (s.confidence, s.least_confidence, s.margin, s.entropy):
        assert isinstance(v, float) and 0.0 <= v <= 1.0


# ---- scoring ------------------------------------------------------------------------------------

def test_classification_measures_rank_as_expected():
    uniform = score_classification(np.array([[0.0, 0.01, 0.0, 0.0]]), CLASSES)
    peaked = score_classification(np.array([10.0, 0.0, 0.0, 0.0]), CLASSES)
    two_way = score_classification(np.array([[5.0, 5.0, -5.0, -5.0]]), CLASSES)
    for s in (uniform, peaked, two_way):
        _in_unit(s)
    assert peaked.predicted == "cat" and peaked.classes == ("cat",)
    assert peaked.confidence > 0.99 and peaked.least_confidence < 0.01
    # margin: the two-way tie is the most uncertain; least confidence and entropy: the flat one
    assert two_way.margin > uniform.margin > peaked.margin
    assert two_way.margin == pytest.approx(1.0, abs=1e-6)
    assert uniform.least_confidence > two_way.least_confidence > peaked.least_confidence
    assert uniform.entropy > two_way.entropy > peaked.entropy
    assert uniform.entropy == pytest.approx(1.0, abs=1e-3)
    assert uniform.uncertainty("entropy") == uniform.entropy
    with pytest.raises(ValueError):
        uniform.uncertainty("variance")
    single = score_classification(np.array([[3.0]]), ["only"])
    assert (single.confidence, single.margin, single.entropy) == (1.0, 0.0, 0.0)


def test_detection_half_box_is_most_uncertain():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]], dtype=np.float32)
    sure = score_detection(boxes, np.array([0.99, 0.97, 0.01]), np.array([1, 2, 0]), CLASSES)
    unsure = score_detection(boxes, np.array([0.99, 0.5, 0.01]), np.array([1, 2, 0]), CLASSES)
    _in_unit(sure), _in_unit(unsure)
    assert sure.predicted == "dog" and sure.classes == ("dog", "fox")
    assert unsure.classes == ("dog", "fox")
    assert unsure.least_confidence == pytest.approx(0.5)
    assert unsure.margin == pytest.approx(1.0) and unsure.entropy == pytest.approx(1.0)
    assert unsure.confidence == pytest.approx(0.5)
    for m in MEASURES:
        assert unsure.uncertainty(m) > sure.uncertainty(m)
    nothing = score_detection(boxes, np.array([0.02, 0.01, 0.0]), np.array([0, 0, 0]), CLASSES)
    assert nothing.predicted is None and nothing.classes == ()
    assert (nothing.least_confidence, nothing.margin, nothing.entropy) == (0.0, 0.0, 0.0)
    assert nothing.confidence == pytest.approx(0.98)
    empty = score_outputs("detection", {"boxes": np.zeros((1, 0, 4)), "scores": np.zeros((1, 0)),
                                        "labels": np.zeros((1, 0), dtype=np.int64)}, CLASSES)
    assert empty.confidence == 1.0 and empty.predicted is None


def test_segmentation_confident_vs_unsure_mask():
    confident = np.zeros((1, 3, 8, 8))
    confident[0, 0] = 20.0
    confident[0, 2, :4] = 40.0  # top half class 2
    s = score_segmentation(confident, ["background", "road", "car"])
    _in_unit(s)
    assert s.predicted == "car" and s.classes == ("car",)
    assert s.confidence > 0.999 and s.entropy < 1e-3
    flat = score_outputs("segmentation", {"logits": np.zeros((3, 8, 8))}, ["background", "road", "car"])
    assert flat.predicted is None and flat.classes == ()  # argmax ties -> background
    assert flat.entropy == pytest.approx(1.0) and flat.least_confidence > s.least_confidence
    with pytest.raises(ValueError):
        score_outputs("keypoints", {}, CLASSES)


# ---- machine labels ------------------------------------------------------------------------------

def test_machine_boxes_scale_clip_and_filter():
    boxes = np.array([[10, 10, 50, 50], [60, 20, 120, 140], [0, 0, 5, 5], [130, 130, 150, 150], [0, 0, 9, 9]],
                     dtype=np.float32)
    scores = np.array([0.7, 0.9, 0.3, 0.95, 0.8])
    labels = np.array([0, 1, 2, 3, 9])
    out = machine_boxes(boxes, scores, labels, CLASSES, size=100, width=200, height=50)
    # sorted by score; box 3 is entirely outside the image after clipping; label 9 is unknown
    assert [b["category"] for b in out] == ["dog", "cat"]
    assert out[0] == {"x1": 120.0, "y1": 10.0, "x2": 200.0, "y2": 50.0, "category": "dog"}
    assert out[1] == {"x1": 20.0, "y1": 5.0, "x2": 100.0, "y2": 25.0, "category": "cat"}


def test_machine_mask_thresholds_and_resizes():
    logits = np.zeros((1, 3, 4, 4))
    logits[0, 1, :2] = 10.0  # sure: class 1 on top
    logits[0, 2, 2:, :2] = 10.0  # sure: class 2 bottom-left; bottom-right stays flat (unsure)
    mask = machine_mask(logits, threshold=0.9, ignore_index=255, width=8, height=6)
    assert mask.dtype == np.uint8 and mask.shape == (6, 8)
    small = machine_mask(logits[0], threshold=0.9, ignore_index=255, width=4, height=4)
    assert small.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]]
    assert set(np.unique(mask).tolist()) == {1, 2, 255}
    assert mask[0, 0] == 1 and mask[-1, 0] == 2 and mask[-1, -1] == 255


def test_rare_classes():
    assert rare_classes({}, CLASSES, 0.1) == set(CLASSES)
    assert rare_classes({"cat": 90, "dog": 8, "fox": 2}, CLASSES, 0.05) == {"fox", "owl"}
    assert rare_classes({"cat": 50, "dog": 50, "fox": 1}, ["cat", "dog"], 0.1) == set()


# ---- the sampler ---------------------------------------------------------------------------------

def _pool(n: int, **extra) -> pl.DataFrame:
    rng = np.random.default_rng(7)
    margin = rng.permutation(np.linspace(0.0, 0.95, n))
    data = {
        "content_hash": [f"h{i:03d}" for i in range(n)],
        "phash": [f"{(i * 0x1F3F5F7F9FBFDFF1) & (2**64 - 1):016x}" for i in range(n)],
        "camera": ["a" if i % 2 else "b" for i in range(n)],
        "predicted": ["cat"] * n,
        "least_confidence": margin / 2,
        "margin": margin,
        "entropy": margin / 3,
    }
    data.update(extra)
    return pl.DataFrame(data)


def test_uncertainty_picks_the_least_sure():
    pool = _pool(20)
    sel = select_hard_cases(pool, budget=5, mix=ALL_UNCERTAINTY, measure="margin")
    expected = pool.sort("margin", descending=True).head(5)["content_hash"].to_list()
    assert sel.selected["content_hash"].to_list() == expected
    assert sel.selected["priority"].to_list() == [1, 2, 3, 4, 5]
    assert set(sel.selected["reason"]) == {"uncertainty"}
    assert sel.selected["score"].to_list() == pytest.approx(sorted(pool["margin"].to_list())[::-1][:5])
    assert sel.considered == 20 and sel.collapsed == 0
    assert sel.to_dict() == {"considered": 20, "collapsed": 0, "quotas": {**{k: 0 for k in ALL_UNCERTAINTY},
                             "uncertainty": 5}, "taken": {**{k: 0 for k in ALL_UNCERTAINTY}, "uncertainty": 5},
                             "selected": 5}


def test_near_duplicates_collapse_to_the_most_uncertain():
    pool = _pool(6)
    top = pool.sort("margin", descending=True)["content_hash"].to_list()
    # the two most uncertain images share a phash: only the most uncertain of them is queued
    twin = pool.filter(pl.col("content_hash") == top[0])["phash"][0]
    pool = pool.with_columns(pl.when(pl.col("content_hash") == top[1]).then(pl.lit(twin))
                             .otherwise(pl.col("phash")).alias("phash"))
    sel = select_hard_cases(pool, budget=6, mix=ALL_UNCERTAINTY, measure="margin")
    assert sel.collapsed == 1 and sel.selected.height == 5
    assert top[0] in sel.selected["content_hash"].to_list()
    assert top[1] not in sel.selected["content_hash"].to_list()


def test_quota_passes_on_without_challenger():
    pool = _pool(20, brightness=np.arange(20, dtype=float))
    mix = {"uncertainty": 0.25, "disagreement": 0.5, "rare": 0.0, "diversity": 0.25}
    sel = select_hard_cases(pool, budget=8, mix=mix, measure="entropy")
    assert sel.quotas == {"uncertainty": 2, "disagreement": 4, "rare": 0, "diversity": 2}
    assert sel.selected.height == 8 and sel.selected["content_hash"].n_unique() == 8
    assert sel.taken == {"uncertainty": 2, "disagreement": 0, "rare": 0, "diversity": 6}


def test_largest_remainder_quotas_and_invalid_mix():
    pool = _pool(20)
    sel = select_hard_cases(pool, budget=10, mix={"uncertainty": 1, "disagreement": 1, "rare": 1,
                                                  "diversity": 0}, measure="margin")
    assert sel.quotas == {"uncertainty": 4, "disagreement": 3, "rare": 3, "diversity": 0}
    assert sel.selected.height == 10
    with pytest.raises(ValueError, match="novelty"):
        select_hard_cases(pool, budget=3, mix={"uncertainty": 0.5, "novelty": 0.5}, measure="margin")
    with pytest.raises(ValueError):
        select_hard_cases(pool, budget=3, mix=ALL_UNCERTAINTY, measure="variance")


def test_disagreement_and_rare_pick_their_rows():
    n = 12
    challenger = [None] * n
    challenger[3], challenger[7], challenger[9] = "dog", "cat", "fox"  # row 7 agrees with "cat"
    pred_classes = [["cat"]] * n
    pred_classes[5] = ["cat", "owl"]
    pool = _pool(n, challenger_predicted=challenger, pred_classes=pred_classes)
    mix = {"uncertainty": 0.0, "disagreement": 0.5, "rare": 0.5, "diversity": 0.0}
    sel = select_hard_cases(pool, budget=4, mix=mix, measure="margin", rare={"owl"})
    rows = sel.selected
    dis = rows.filter(pl.col("reason") == "disagreement")["content_hash"].to_list()
    assert set(dis) == {"h003", "h009"}
    assert rows.filter(pl.col("reason") == "rare")["content_hash"].to_list() == ["h005"]
    assert rows.height == 4 and sel.taken["diversity"] == 1  # rare's unused quota reaches diversity


def test_diversity_covers_clusters_and_outlier():
    bright = [0.10, 0.11, 0.12, 0.13, 0.90, 0.91, 0.92, 0.93, 5.0]
    pool = pl.DataFrame({"content_hash": [f"h{i}" for i in range(9)], "brightness": bright,
                         "contrast": [1.0, 1.01, 1.02, 1.0, 2.0, 2.01, 2.02, 2.0, 1.5],
                         "margin": [None] * 9}, schema_overrides={"margin": pl.Float64})
    sel = select_hard_cases(pool, budget=3, mix=ALL_DIVERSITY, measure="margin")
    picked = [int(h[1:]) for h in sel.selected["content_hash"]]
    assert 8 in picked
    assert any(i < 4 for i in picked) and any(4 <= i < 8 for i in picked)
    assert set(sel.selected["reason"]) == {"diversity"}
    assert all(s > 0 for s in sel.selected["score"].to_list())


def test_unscored_pool_goes_to_diversity_and_is_deterministic():
    pool = _pool(15, brightness=np.linspace(0, 1, 15), hue=np.cos(np.arange(15)))
    pool = pool.with_columns([pl.lit(None, dtype=pl.Float64).alias(m) for m in MEASURES])
    mix = {"uncertainty": 0.4, "disagreement": 0.2, "rare": 0.2, "diversity": 0.2}
    a = select_hard_cases(pool, budget=6, mix=mix, measure="least_confidence", rare={"cat"})
    b = select_hard_cases(pool, budget=6, mix=mix, measure="least_confidence", rare={"cat"})
    assert a.selected.equals(b.selected)
    assert a.selected.height == 6 and a.taken["diversity"] == 6
    # no statistics at all: round-robin over cameras
    bare = pool.select("content_hash", "camera", "margin")
    rr = select_hard_cases(bare, budget=4, mix=ALL_DIVERSITY, measure="margin")
    assert rr.selected["camera"].to_list() == ["a", "b", "a", "b"]


def test_empty_pool_and_zero_budget():
    pool = _pool(5)
    for sel in (select_hard_cases(pool, budget=0, mix=ALL_UNCERTAINTY, measure="margin"),
                select_hard_cases(pool.head(0), budget=3, mix=ALL_UNCERTAINTY, measure="margin")):
        assert sel.selected.height == 0
        assert sel.selected.columns == pool.columns + ["reason", "priority", "score"]
    big = select_hard_cases(pool, budget=50, mix=ALL_UNCERTAINTY, measure="margin")
    assert big.selected.height == 5
