"""The demo's reviewer: works through the review queue of the demo's last cycle with the true labels.

A real reviewer labels the queue in Label Studio (or the queue CSV) and imports the export with
``conveyor review import``; the demo answers with the truth file that ships beside its unlabelled
pool, and imports the result the same way, which makes the label version the next cycle trains on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.core.spec import Spec
    from conveyor.core.summary import RunSummary
    from conveyor.core.workspace import Workspace
    from conveyor.labels.stage import ImportResult


@dataclass(frozen=True)
class PendingReview:
    """A review queue the demo can answer: the queue CSV, how many images it holds, the truth file."""

    queue_csv: Path
    count: int
    truth_csv: Path


def pending_review(spec: Spec, summary: RunSummary) -> PendingReview | None:
    """The review queue a cycle's summary names, when the spec has an unlabelled pool with a truth
    file (``<pool>-truth.csv`` beside it); None when there is nothing the demo can answer."""
    review = summary.dataset.review if summary.dataset else None
    queue = review.queue if review else None
    if not spec.labeling.unlabeled or not queue:
        return None
    pool = spec.resolve_path(spec.labeling.unlabeled)
    truth = pool.parent / f"{pool.name}-truth.csv"
    if not truth.is_file():
        return None
    return PendingReview(queue_csv=Path(queue["csv"]), count=int(queue["count"]), truth_csv=truth)


def answer_with_truth(spec: Spec, ws: Workspace, pending: PendingReview, out_csv: str | Path) -> ImportResult:
    """Label the queue with the true labels into ``out_csv`` and import it as a reviewed export."""
    from conveyor.demo.bundled import review_as_truth
    from conveyor.labels import stage as review

    reviewed = review_as_truth(pending.queue_csv, pending.truth_csv, out_csv)
    return review.import_review(spec, ws, reviewed)
