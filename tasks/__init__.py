"""The Prefect tasks of conveyor, for flows of your own in a source checkout.

Each is a thin wrapper over a stage of the ``conveyor`` library that adds content-keyed caching,
retries on transient I/O errors, logging and artifacts. They live in
``conveyor.orchestration.tasks`` (shipped in the wheel); this package re-exports its modules.
"""

from conveyor.orchestration.tasks import approval, common, data, model, monitor, release, report, rollout, run, tracking

__all__ = ["approval", "common", "data", "model", "monitor", "release", "report", "rollout", "run", "tracking"]
