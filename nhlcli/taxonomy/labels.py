"""Class and node names: the small helpers every taxonomy module shares.

They sit below ``tree.py`` so that the modules ``Tree`` itself uses (selection, WordNet
lookup, class lists) can share them without importing the tree back.
"""

from __future__ import annotations

import re

from nhlcli.text import printable

ROOT_ID = "root"


def normalize_label(text: str) -> str:
    """Fold case, underscores, hyphens, slashes and runs of spaces so that names match loosely."""
    return re.sub(r"[\s_\-/]+", " ", text.strip().lower()).strip()


# A name or id longer than this is a damaged or hostile file: the longest nhl ships is under 100.
MAX_NAME_CHARS = 1000
QUOTED_CHARS = 60  # characters of a name quoted in a message
# Unicode's bidirectional embeddings, overrides and isolates: text after them is shown reordered
# (the "Trojan Source" trick), so a name could print as something else
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BIDI_ESCAPES = {ord(c): f"\\u{ord(c):04x}" for c in BIDI_CONTROLS}


def quoted(text: object, limit: int = QUOTED_CHARS) -> str:
    """``text`` quoted for a message: control characters escaped (a name from a file or a server
    cannot drive the terminal) and cut to ``limit`` characters (nor flood it)."""
    shown = printable(text if isinstance(text, str) else repr(text)).translate(_BIDI_ESCAPES)
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return f"'{shown}'" if isinstance(text, str) else shown


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's category Cc: C0, DEL and C1
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


def control_character(text: str) -> str | None:
    """The first control character (C0, DEL, C1: ESC among them) in ``text``, or ``None``."""
    found = _CONTROL.search(text)
    return found.group() if found else None


def name_problem(text: str) -> str | None:
    """Why ``text`` cannot name a class or node, or ``None`` when it can.

    Control characters are refused where a name enters nhl (tree files, class lists, LLM answers)
    rather than escaped wherever one is printed: a name holding ESC would otherwise reach a
    terminal, a Graphviz file or a model file's metadata unchanged.
    """
    bad = control_character(text)
    if bad is not None:
        return f"holds the control character {printable(bad)}; names must be plain text"
    bidi = _BIDI.search(text)
    if bidi is not None:
        code = ord(bidi.group())
        return f"holds the bidirectional control U+{code:04X}, which shows text reordered; remove it"
    if len(text) > MAX_NAME_CHARS:
        return f"is {len(text):,} characters long, more than the {MAX_NAME_CHARS:,} a name may have"
    return None
