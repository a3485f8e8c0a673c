"""Counts in words, for every message nhl prints."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``1 level``, ``3 levels``, ``2 classes``: a count with its noun, so messages never read "1 levels"."""
    if n == 1:
        return f"{n} {singular}"
    return f"{n} {plural or singular + ('es' if singular.endswith('s') else 's')}"


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]}
_CONTROL.update({ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"})


def printable(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1: terminal escapes among them) written as
    ``\\x1b``-style escapes, so a name from a file or a server cannot move the cursor, recolour
    the terminal or hide text when printed."""
    return str(text).translate(_CONTROL)
