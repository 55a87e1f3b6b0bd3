"""What the inference service serves and which model answers a request.

Only a rollout whose ``status`` is ``running`` involves the challenger:

* ``shadow``: the champion answers; the challenger gets a copy (never returned);
* ``canary``: the challenger answers ``traffic`` of the requests, sticky by a hash of the sticky
  header's value when the request has one (same key and rollout, same model), random otherwise;
* ``blue_green``: once the challenger is loaded and warmed, it answers every request.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from conveyor.release.rollout import RolloutState
from conveyor.serving.model import LoadedModel
from conveyor.serving.preprocess import DEFAULT_STICKY_HEADER


def read_rollout(path: str | Path) -> RolloutState | None:
    """The rollout state, None without the file; ValueError for a file that cannot be used."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return RolloutState.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None


@dataclass(frozen=True, eq=False)
class Routing:
    """What the service serves now; replaced as a whole, never changed in place."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None  # loaded and warmed, while a rollout runs
    rollout: RolloutState | None = None

    @property
    def sticky_header(self) -> str:
        return (self.rollout.sticky_header if self.rollout else None) or DEFAULT_STICKY_HEADER

    @property
    def traffic(self) -> float:
        """The share of requests the challenger answers now."""
        r = self.rollout
        if self.challenger is None or r is None or not r.running or r.strategy == "shadow":
            return 0.0
        return 1.0 if r.strategy == "blue_green" else r.traffic

    def key(self) -> tuple:
        return (self.champion and self.champion.version, self.challenger and self.challenger.version, self.rollout)

    def summary(self) -> tuple:
        """What routing does (without the rollout's timestamps)."""
        r = self.rollout
        return self.key()[:2] + ((r.rollout_id, r.strategy, r.status, self.traffic) if r else ())


def sticky_fraction(rollout_id: str, key: str) -> float:
    """A key's fixed position in [0, 1) for one rollout: the same key always lands the same side."""
    digest = hashlib.sha256(f"{rollout_id}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def route(routing: Routing, key: str | None, rng: random.Random) -> tuple[LoadedModel, str, LoadedModel | None]:
    """(model that answers, its role, model that gets a shadow copy or None)."""
    champion, challenger, r = routing.champion, routing.challenger, routing.rollout
    assert champion is not None
    if challenger is None or r is None or not r.running:
        return champion, "champion", None
    if r.strategy == "shadow":
        return champion, "champion", challenger
    if r.strategy == "blue_green":
        return challenger, "challenger", None
    u = sticky_fraction(r.rollout_id, key) if key else rng.random()
    return (challenger, "challenger", None) if u < r.traffic else (champion, "champion", None)
