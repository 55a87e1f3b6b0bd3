"""conveyor: continuous training for computer-vision models.

The library holds the logic of every stage as plain functions; ``conveyor.orchestration`` wraps them
as Prefect tasks and flows. Nothing here does work at import time.
"""

# The one place the version is written: pyproject.toml reads it from here when building, and
# `conveyor --version` prints the installed distribution's version (this one from a source tree).
__version__ = "0.1.0"
