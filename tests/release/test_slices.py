"""Per-slice gates (gates.slices) and the paired bootstrap of the champion comparison.

The predictions are constructed per-image records (the classification kind's ``prediction_records``
columns) joined with a camera column, so each case says exactly which images a model gets right."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from conveyor import kinds
from conveyor.core.spec import spec_from_dict
from conveyor.release.gate import GateDecision, SliceEvidence, evaluate_gate, paired_bootstrap, slice_evidence

CLASSES = ["a", "b"]


def _spec(**gates):
    return spec_from_dict({"name": "s", "task": "classification", "data": {"source": "data", "classes": CLASSES},
                           "gates": {"rules": ["accuracy >= 0.9"], "slices": ["camera"], "min_slice_size": 30,
                                     "bootstrap_resamples": 300, **gates}})


def _records(cameras: dict[str, tuple[int, int]], seed: int = 0, wrong_first: bool = False) -> pl.DataFrame:
    """Per camera (images, how many of them the model gets wrong); labels alternate a / b."""
    rows = {"id": [], "predicted": [], "confidence": [], "label": [], "correct": [], "camera": []}
    rng = np.random.default_rng(seed)
    i = 0
    for cam, (n, wrong) in cameras.items():
        bad = set(range(wrong)) if wrong_first else set(rng.choice(n, wrong, replace=False).tolist())
        for j in range(n):
            label = CLASSES[j % 2]
            ok = j not in bad
            rows["id"].append(f"img-{i:05d}")
            rows["label"].append(label)
            rows["predicted"].append(label if ok else CLASSES[1 - j % 2])
            rows["confidence"].append(0.9 if ok else 0.6)
            rows["correct"].append(ok)
            rows["camera"].append(cam)
            i += 1
    return pl.DataFrame(rows)


def _overall(records: pl.DataFrame) -> dict[str, float]:
    return kinds.get("classification").slice_metrics(records, CLASSES)


def test_the_kind_hook_gives_the_evaluation_metrics_on_any_subset():
    kind = kinds.get("classification")
    classes = ["a", "b", "c", "d"]
    g = torch.Generator().manual_seed(3)
    outputs, y = torch.randn(200, 4, generator=g), torch.randint(0, 3, (200,), generator=g)  # "d" never a label

    class Images:
        def __init__(self, idx):
            self.targets, self.ids = y[idx], [f"i{i}" for i in idx.tolist()]

        def __len__(self):
            return len(self.ids)

    for idx in (torch.arange(200), torch.arange(0, 200, 7), torch.arange(40)):
        images = Images(idx)
        full = kind.training.evaluate_outputs(outputs[idx], images, classes).metrics
        mine = kind.slice_metrics(pl.DataFrame(kind.training.prediction_records(outputs[idx], images, classes)),
                                  classes)
        assert mine.keys() == full.keys()
        for key, value in full.items():
            assert mine[key] == pytest.approx(value, abs=1e-6), key
    assert kinds.get("detection").slice_metrics(pl.DataFrame({"id": ["x"]}), ["a"]) == {}


def test_overall_passes_but_one_camera_fails():
    records = _records({"cam-01": (200, 2), "cam-02": (200, 2), "cam-03": (44, 9)})
    spec = _spec()
    overall = _overall(records)
    assert overall["accuracy"] >= 0.9  # the whole split passes
    decision = evaluate_gate(spec, overall, evidence=SliceEvidence(records, None, tuple(CLASSES)))
    assert not decision.passed and decision.decision == "reject"
    by_slice = {o.slice: o for o in decision.outcomes if o.kind == "slice"}
    assert by_slice["camera cam-01"].passed and by_slice["camera cam-01"].status == "pass"
    bad = by_slice["camera cam-03"]
    assert not bad.passed and bad.status == "fail" and bad.n == 44
    assert bad.reason == "camera cam-03: accuracy = 0.7955 fails >= 0.9 (n=44)"
    assert "1 of 4 gate rules fail: camera cam-03: accuracy = 0.7955 fails >= 0.9 (n=44)" == decision.summary

    # without slicing, the same challenger passes: the slice is what catches it
    assert evaluate_gate(_spec(slices=[]), overall).passed
    # a spec that slices but gets no per-image predictions is never a silent pass
    unjudged = evaluate_gate(spec, overall)
    assert not unjudged.passed and "no per-image predictions" in unjudged.summary


def test_a_small_slice_is_too_small_to_judge_and_does_not_block():
    records = _records({"cam-01": (200, 2), "cam-09": (12, 10)})  # cam-09 is terrible but tiny
    decision = evaluate_gate(_spec(), _overall(records), evidence=SliceEvidence(records, None, tuple(CLASSES)))
    small = next(o for o in decision.outcomes if o.slice == "camera cam-09")
    assert small.status == "too small to judge" and small.result == "too small to judge"
    assert small.reason == "camera cam-09: too small to judge (n=12 < 30)"
    assert decision.passed and decision.summary.endswith("(1 slices too small to judge)")
    assert not any(o.status == "pass" and o.slice == "camera cam-09" for o in decision.outcomes)
    # the stored decision keeps the status
    again = GateDecision.from_dict(decision.to_dict())
    assert again.outcomes == decision.outcomes


def test_paired_bootstrap_rejects_a_clearly_worse_challenger_and_accepts_an_equal_one():
    champion = _records({"cam-01": (200, 4), "cam-03": (60, 3)}, seed=1)
    worse = _records({"cam-01": (200, 4), "cam-03": (60, 20)}, seed=2)
    spec = _spec(rules=["accuracy >= 0.5"], champion={"metrics": ["accuracy", "f1"], "tolerance": 0.02})

    def gate(challenger):
        return evaluate_gate(spec, _overall(challenger), _overall(champion), 3,
                             evidence=SliceEvidence(challenger, champion, tuple(CLASSES)))

    bad = gate(worse)
    cam3 = {o.metric: o for o in bad.outcomes if o.kind == "slice-champion" and o.slice == "camera cam-03"}
    assert set(cam3) == {"accuracy", "f1"}
    acc = cam3["accuracy"]
    assert not acc.passed and acc.status == "fail" and acc.n == 60
    assert acc.ci_low <= acc.delta <= acc.ci_high < -0.02
    assert acc.delta == pytest.approx(-17 / 60)
    assert "camera cam-03: accuracy challenger - champion v3 = -0.2833 (95% CI" in acc.reason
    assert not bad.passed
    cam1 = next(o for o in bad.outcomes if o.kind == "slice-champion" and o.slice == "camera cam-01"
                and o.metric == "accuracy")
    assert cam1.passed and cam1.ci_low < 0 < cam1.ci_high  # the same errors on cam-01: within the interval
    whole = next(o for o in bad.outcomes if o.kind == "champion" and o.metric == "accuracy")
    assert whole.ci_low is not None and whole.ci_high < 0 and whole.n == 260  # the interval on the whole split too

    same = gate(champion)
    assert same.passed, same.summary
    for o in same.outcomes:
        if o.kind == "slice-champion":
            assert o.delta == 0 and o.ci_low == 0 and o.ci_high == 0 and o.passed

    # paired and seeded: the same interval each time, and the same resampled images for both models
    kind = kinds.get("classification")
    one = paired_bootstrap(kind, worse, champion, CLASSES, ["accuracy"], 200, seed=7)
    assert one == paired_bootstrap(kind, worse, champion, CLASSES, ["accuracy"], 200, seed=7)
    assert paired_bootstrap(kind, champion, champion, CLASSES, ["accuracy"], 200, seed=7) == {"accuracy": (0.0, 0.0)}


def test_slice_evidence_joins_the_split_columns_and_checks_the_rows_are_paired(tmp_path):
    records = _records({"cam-01": (40, 2), "cam-02": (40, 2)})
    split = records.select("id", "camera", pl.col("label"), pl.lit("test").alias("split"))
    split = pl.concat([split, pl.DataFrame({"id": ["t-1"], "camera": ["cam-01"], "label": ["a"], "split": ["train"]})])
    split.write_parquet(tmp_path / "split.parquet")
    records.drop("camera").write_parquet(tmp_path / "challenger.parquet")
    records.drop("camera").reverse().write_parquet(tmp_path / "champion.parquet")
    ev = slice_evidence(tmp_path / "split.parquet", tmp_path / "challenger.parquet", tmp_path / "champion.parquet",
                        ["camera", "scene"], CLASSES)
    assert ev.challenger.height == 80 and ev.challenger["camera"].to_list() == records["camera"].to_list()
    assert ev.champion["id"].to_list() == ev.challenger["id"].to_list()
    records.drop("camera").head(50).write_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not on the same test images"):
        slice_evidence(tmp_path / "split.parquet", tmp_path / "challenger.parquet", tmp_path / "other.parquet",
                       ["camera"], CLASSES)
    # a slice column the split table does not have fails the gate
    decision = evaluate_gate(_spec(slices=["scene"]), _overall(records), evidence=ev)
    assert not decision.passed and "slice column 'scene' is not in the split table" in decision.summary


def test_a_metric_the_kind_cannot_slice_is_reported_not_sliceable_never_a_silent_pass():
    spec = spec_from_dict({"name": "d", "task": "detection", "data": {"source": "data", "classes": ["box"]},
                           "gates": {"rules": ["map50 >= 0.5"], "slices": ["camera"]}})
    records = pl.DataFrame({"id": [f"i{i}" for i in range(40)], "camera": ["cam-01"] * 40})
    decision = evaluate_gate(spec, {"map50": 0.6}, evidence=SliceEvidence(records, None, ("box",)))
    (unsliced,) = [o for o in decision.outcomes if o.kind == "slice"]
    assert unsliced.status == "not sliceable" and unsliced.result == "not sliceable"
    assert "map50: not sliceable for task 'detection'" in unsliced.reason
    assert decision.passed and decision.summary == "all gate rules pass (no champion yet: absolute rules only) " \
                                                   "(1 metrics not sliceable)"
