"""Entrypoint of the `conveyor-rollout` flow for `prefect deploy` from a source checkout.

The flow itself lives in ``conveyor.orchestration.flows.rollout`` and ships in the wheel.
"""

from conveyor.orchestration.flows.rollout import rollout_flow

__all__ = ["rollout_flow"]
