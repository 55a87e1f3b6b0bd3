"""Files that ship inside the package (gate report notebook, contract suites, example specs).

They are found with ``importlib.resources``, so a wheel install finds them as an editable one does.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def resource_path(package: str, *parts: str) -> Path:
    """The file-system path of a resource shipped in ``package``.

    Papermill, nbconvert and Great Expectations need real paths; conveyor is installed unzipped
    (a regular wheel install), where every resource is a file on disk.
    """
    ref = resources.files(package).joinpath(*parts)
    path = Path(str(ref))
    if not path.exists():
        raise FileNotFoundError(f"resource {'/'.join(parts)} is missing from the installed package {package}")
    return path
