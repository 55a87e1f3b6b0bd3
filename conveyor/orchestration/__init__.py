"""Orchestration: Prefect tasks (thin wrappers with caching, retries, artifacts) and the flows that compose them, plus the generated deployments."""
