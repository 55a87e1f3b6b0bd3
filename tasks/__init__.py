"""Prefect tasks: thin wrappers over the stages in the ``conveyor`` library.

They add content-keyed caching, retries on transient I/O errors, logging and artifacts, and
nothing else: the logic lives in ``conveyor/``.
"""
