"""Promotion and rollback: moving the champion alias in the registry.

A challenger that passes its gate becomes the champion: the alias moves and the move is kept in
the alias history with the deploy strategy the spec names. Rollback points the alias back at any
registered version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from conveyor.gate import GateDecision
from conveyor.registry import Registry, RegistryError


@dataclass(frozen=True)
class PromotionResult:
    action: str  # "promoted" | "kept" | "unchanged"
    champion_version: int | None
    previous_version: int | None
    alias: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def promote(registry: Registry, name: str, version: int, decision: GateDecision, strategy: str = "replace",
            run_id: str | None = None) -> PromotionResult:
    current = registry.alias(name)
    if decision.decision == "skip":
        return PromotionResult("unchanged", current, current, "champion", decision.summary)
    if not decision.passed:
        return PromotionResult("kept", current, current, "champion",
                               f"v{version} rejected by the gate; champion stays v{current}" if current else
                               f"v{version} rejected by the gate; there is no champion yet")
    previous = registry.set_alias(name, version, reason=f"promoted: passed gate (deploy strategy {strategy})", run_id=run_id)
    return PromotionResult("promoted", version, previous, "champion",
                           f"v{version} is the champion" + (f" (was v{previous})" if previous else ""))


def rollback(registry: Registry, name: str, to_version: int, reason: str = "manual rollback") -> PromotionResult:
    target = registry.get(name, to_version)  # raises with the known versions when missing
    current = registry.alias(name)
    if current == target.version:
        return PromotionResult("unchanged", current, current, "champion", f"v{to_version} is already the champion")
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back")
    previous = registry.set_alias(name, target.version, reason=reason)
    return PromotionResult("promoted", target.version, previous, "champion",
                           f"rolled back: champion is v{target.version} (was v{previous})")
