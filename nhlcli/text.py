"""Counts in words, for every message nhl prints."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``1 level``, ``3 levels``, ``2 classes``: a count with its noun, so messages never read "1 levels"."""
    if n == 1:
        return f"{n} {singular}"
    return f"{n} {plural or singular + ('es' if singular.endswith('s') else 's')}"
