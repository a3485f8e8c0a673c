"""Counts in words, escaped names and one-line text, for every message nhl prints."""

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


def one_line(text: object, limit: int | None = None, secret: str | None = None) -> str:
    """``text`` (an exception's message, a server's reply) on one line: every run of whitespace,
    newlines among them, becomes one space, so a library's multi-line message keeps nhl's errors to
    the single line users read. ``limit`` cuts it to that many characters; ``secret`` (an API key a
    server may echo back) is written as ``***`` first, so it never reaches a message."""
    text = str(text)
    if secret:
        text = text.replace(secret, "***")
    line = " ".join(text.split())
    return line if limit is None else line[:limit]
