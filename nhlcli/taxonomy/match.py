"""Match a dataset's (or a list's) classes to a tree's leaves by id, WordNet id, name or alias."""

from __future__ import annotations

from collections.abc import Sequence

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import printable


def _leaf_for(tree: Tree, entry: ClassEntry) -> str | None:
    leaves = set(tree.classes)
    for label in (entry.id, entry.wordnet, entry.name, *entry.aliases):
        if not label:
            continue
        try:
            node = tree.resolve(label)
        except NhlError:
            continue
        if node in leaves:
            return node
    return None


def match_classes(tree: Tree, entries: Sequence[ClassEntry], exact: bool = True) -> list[str]:
    """The tree leaf of each entry, in the entries' order.

    With ``exact`` every tree class must be matched too (a dataset for the whole model);
    otherwise the entries may be a subset (an expert's data). A mismatch raises one
    :class:`NhlError` that lists what is missing on each side.
    """
    matched = [_leaf_for(tree, e) for e in entries]
    unmatched = [e.id for e, m in zip(entries, matched, strict=True) if m is None]
    seen: dict[str, str] = {}
    for e, m in zip(entries, matched, strict=True):
        if m is None:
            continue
        if m in seen:
            raise NhlError(f"classes {seen[m]!r} and {e.id!r} both match tree class {m!r}")
        seen[m] = e.id
    missing = [c for c in tree.classes if c not in seen] if exact else []
    if unmatched or missing:
        parts = []
        if unmatched:
            parts.append(f"not in the tree: {_preview(unmatched)}")
        if missing:
            parts.append(f"in the tree but not in the data: {_preview(missing)}")
        raise NhlError(
            "classes do not match the tree (" + "; ".join(parts) + "); use the tree built for this "
            "data or rebuild it with 'nhl hierarchy build' and `classes` <data>"
        )
    return [m for m in matched if m is not None]


def _preview(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(printable(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
