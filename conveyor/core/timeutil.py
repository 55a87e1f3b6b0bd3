"""The one clock of the package: timezone-aware UTC times.

Every module that stamps or compares times uses :func:`utcnow` and :func:`as_utc`, so a naive
datetime never meets an aware one and tests can patch one place."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["as_utc", "utcnow"]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


def as_utc(t: datetime | str) -> datetime:
    """``t`` in UTC: an ISO 8601 string is parsed first; a naive datetime is taken to be UTC already."""
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
