"""Entrypoint of the `conveyor-cycle` flow for `prefect deploy` from a source checkout.

The flow itself lives in ``conveyor.orchestration.flows.cycle`` and ships in the wheel.
"""

from conveyor.orchestration.flows.cycle import continuous_training

__all__ = ["continuous_training"]
