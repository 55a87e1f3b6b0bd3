"""The workspace: every file a cycle writes, laid out by stage and keyed by content."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    def subdir(self, *parts: str) -> Path:
        """A folder under the workspace, created if missing."""
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def datasets(self) -> Path:
        return self.subdir("datasets")

    @property
    def curated(self) -> Path:
        return self.subdir("curated")

    @property
    def splits(self) -> Path:
        return self.subdir("splits")

    def state(self, spec_name: str) -> Path:
        """Per-spec state that outlives a cycle: the frozen evaluation assignment."""
        return self.subdir("state", spec_name)

    @property
    def contracts(self) -> Path:
        return self.subdir("contracts")

    @property
    def models(self) -> Path:
        return self.subdir("models")

    @property
    def evals(self) -> Path:
        return self.subdir("evals")

    @property
    def registry(self) -> Path:
        return self.subdir("registry")

    @property
    def runs(self) -> Path:
        return self.subdir("runs")

    @property
    def prefect_home(self) -> Path:
        return self.subdir(".prefect")
