"""Prefect tasks: thin wrappers over the library stages (content-keyed caching, retries, logging, artifacts)."""
