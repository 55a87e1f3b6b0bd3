"""The demo's reviewer finds the review queue it can answer: a queue, an unlabelled pool and its truth file."""

from __future__ import annotations

from pathlib import Path

from helpers.specs import toy_spec_dict

from conveyor.core.spec import spec_from_dict
from conveyor.core.summary import DatasetCounts, ReviewCounts, RunSummary
from conveyor.demo.reviewer import PendingReview, pending_review


def _summary(review: ReviewCounts | None, **fields) -> RunSummary:
    base = {"run_id": "r1", "spec": "toy", "task": "classification", "trigger": "manual", "workspace": "ws",
            "run_dir": "ws/runs/r1", "decision": "promoted"}
    dataset = DatasetCounts(received=1, accepted=1, quarantined=0, curated=1, review=review)
    return RunSummary(**{**base, "dataset": dataset, **fields})


def test_pending_review_needs_a_queue_a_pool_and_its_truth_file(tmp_path):
    queue = {"csv": str(tmp_path / "queue.csv"), "tasks": str(tmp_path / "tasks.json"), "count": 12}
    summary = _summary(ReviewCounts(queue=queue))
    with_pool = spec_from_dict(toy_spec_dict(labeling={"unlabeled": "data/unlabeled"}), base_dir=tmp_path)
    without_pool = spec_from_dict(toy_spec_dict(), base_dir=tmp_path)

    assert pending_review(without_pool, summary) is None
    assert pending_review(with_pool, summary) is None  # no truth file beside the pool
    truth = tmp_path / "data" / "unlabeled-truth.csv"
    truth.parent.mkdir(parents=True)
    truth.write_text("path,label\na.png,red\n")
    assert pending_review(with_pool, summary) == PendingReview(queue_csv=Path(queue["csv"]), count=12,
                                                               truth_csv=truth)
    assert pending_review(with_pool, _summary(ReviewCounts())) is None  # the cycle queued nothing
    assert pending_review(with_pool, _summary(None, dataset=None, decision="skipped",
                                              skipped_because="busy")) is None
