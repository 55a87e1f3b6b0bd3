"""Prefect flows: the cycle, the monitor and the rollout, composed from the tasks."""
