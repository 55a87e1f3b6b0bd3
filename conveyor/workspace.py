"""The workspace: every file a cycle writes, laid out by stage and keyed by content."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    def _dir(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def datasets(self) -> Path:
        return self._dir("datasets")

    @property
    def curated(self) -> Path:
        return self._dir("curated")

    @property
    def splits(self) -> Path:
        return self._dir("splits")

    def state(self, spec_name: str) -> Path:
        """Per-spec state that outlives a cycle: the frozen evaluation assignment."""
        return self._dir("state", spec_name)

    @property
    def contracts(self) -> Path:
        return self._dir("contracts")

    @property
    def models(self) -> Path:
        return self._dir("models")

    @property
    def evals(self) -> Path:
        return self._dir("evals")

    @property
    def registry(self) -> Path:
        return self._dir("registry")

    @property
    def runs(self) -> Path:
        return self._dir("runs")

    @property
    def prefect_home(self) -> Path:
        return self._dir(".prefect")
