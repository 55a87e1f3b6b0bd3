"""Entrypoint of the `conveyor-monitor` flow for `prefect deploy` from a source checkout.

The flow itself lives in ``conveyor.orchestration.flows.monitor`` and ships in the wheel.
"""

from conveyor.orchestration.flows.monitor import monitor_pipeline

__all__ = ["monitor_pipeline"]
