"""conveyor: continuous training for computer-vision models.

The library holds the logic of every stage as plain functions; ``tasks/`` wraps them as
Prefect tasks and ``flows/`` composes those tasks. Nothing here does work at import time.
"""

__version__ = "0.1.0"
