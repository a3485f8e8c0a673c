"""Where grafted classes go: the model's tree grown by new leaves (and new groups above them).

Old classes keep their class indices; new ones are appended after them, so the grown model's
logits are the old model's followed by the new classes'. Every node of the old tree stays where
it is. New nodes sort after their old siblings (children are ordered by the smallest class index
below them), so each level of the grown tree is the old level with the new nodes inserted at the
end of their parent's block.

Two ways to say where a class goes:

* ``under``: a node of the model's tree. A node just above the leaves takes the new classes as
  leaves; a node higher up (or the root) gets one new group chain down to the leaf level, named
  ``group``, holding all of them: a whole new group arriving.
* ``reference``: a tree that holds the new classes (the data set's shipped tree, or one built
  over all classes with ``nhl hierarchy build`` from WordNet or an LLM). Each new class hangs under
  its deepest ancestor there that the model's tree also has (matched by id or WordNet id), with
  the reference's nodes between them as new groups.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import ClassEntry, leaf_node
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted

__all__ = ["Placement", "grow_tree", "place_under", "place_by_reference"]


@dataclass(frozen=True)
class Placement:
    """One new class: its leaf node, the existing node it hangs under, and the new groups between
    them (from the anchor down, each a ``{"id", "name", ...}`` node)."""

    leaf: dict[str, Any]
    anchor: str
    groups: tuple[dict[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return str(self.leaf["id"])


@dataclass
class GrownTree:
    """The grown tree and what was added to it (recorded in the file's ``graft`` section)."""

    tree: Tree
    placements: list[Placement]
    new_groups: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "classes": [p.id for p in self.placements],
            "parents": {p.id: (p.groups[-1]["id"] if p.groups else p.anchor) for p in self.placements},
            "new_groups": list(self.new_groups),
        }


def _inner_anchor(tree: Tree, node: str, what: str) -> str:
    """``node`` resolved in ``tree`` if new classes can hang below it (not a class)."""
    anchor = tree.root if node == "root" and "root" not in tree.graph else tree.resolve(node)
    if anchor in set(tree.classes):
        raise NhlError(
            f"{node!r} is a class of the model, and classes cannot have children; name the group "
            f"above it ({tree.node(tree.parent(anchor) or tree.root).name!r}) instead",
            what,
        )
    return anchor


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "group"


def _fresh_id(base: str, taken: set[str]) -> str:
    candidate, k = base, 2
    while candidate in taken:
        candidate, k = f"{base}-{k}", k + 1
    taken.add(candidate)
    return candidate


def place_under(
    tree: Tree, entries: Sequence[ClassEntry], node: str, group: str | None = None
) -> list[Placement]:
    """Every new class under ``node`` (a group chain named ``group`` where ``node`` is not just
    above the leaves)."""
    anchor = _inner_anchor(tree, node, "under")
    missing = tree.levels - 1 - tree.node(anchor).depth
    if missing == 0 and group:
        raise NhlError(
            f"{tree.node(anchor).name!r} is just above the leaves, so the new classes become its "
            "children and no group is made; drop `group` or name a node higher up",
            "group",
        )
    taken = set(tree.graph.nodes) | {e.id for e in entries}
    name = group or "grafted"
    chain = tuple(
        {"id": _fresh_id(_slug(name) if depth == 1 else f"{_slug(name)}-{depth}", taken), "name": name}
        for depth in range(1, missing + 1)
    )
    return [Placement(leaf_node(e), anchor, chain) for e in entries]


def _existing(tree: Tree, ref_node: Mapping[str, Any]) -> str | None:
    """The inner node of ``tree`` that is ``ref_node`` (same id, else same WordNet id)."""
    inner = set(tree.graph.nodes) - set(tree.classes)
    if ref_node["id"] in inner:
        return str(ref_node["id"])
    wnid = ref_node.get("wnid")
    if wnid:
        hits = [n for n in inner if tree.node(n).wnid == wnid]
        if len(hits) == 1:
            return hits[0]
    return None


def _node_dict(tree: Tree, node_id: str) -> dict[str, Any]:
    node = tree.node(node_id)
    out: dict[str, Any] = {"id": node.id, "name": node.name}
    if node.wnid:
        out["wnid"] = node.wnid
    if node.aliases:
        out["aliases"] = list(node.aliases)
    return out


def place_by_reference(tree: Tree, reference: Tree, classes: Sequence[str]) -> list[Placement]:
    """Each of ``classes`` (ids in ``reference``) under its deepest ancestor in ``reference`` that
    ``tree`` has, with the reference's groups between (as many as the leaf depth needs: the top
    ones kept, or the last repeated as a single-child chain)."""
    taken = set(tree.graph.nodes) | set(classes)
    made: dict[tuple[str, ...], dict[str, Any]] = {}  # one new group per reference path
    placements = []
    for c in classes:
        path = reference.path(c)[:-1]  # root .. parent
        anchor, below = tree.root, list(path[1:])
        for i in range(len(path) - 1, 0, -1):
            found = _existing(tree, _node_dict(reference, path[i]))
            if found is not None and tree.node(found).depth <= tree.levels - 1:
                anchor, below = found, list(path[i + 1 :])
                break
        missing = tree.levels - 1 - tree.node(anchor).depth
        chosen = below[:missing]
        while len(chosen) < missing:  # a shallower reference: repeat the last group (or the anchor's name)
            chosen.append(chosen[-1] if chosen else None)
        groups = []
        for depth, ref_id in enumerate(chosen, start=1):
            key = (anchor, *(x or "" for x in chosen[:depth]))
            if key not in made:
                base = _node_dict(reference, ref_id) if ref_id else _node_dict(tree, anchor)
                made[key] = {**base, "id": _fresh_id(str(base["id"]), taken)}
            groups.append(made[key])
        placements.append(Placement(_node_dict(reference, c), anchor, tuple(groups)))
    return placements


def grow_tree(tree: Tree, placements: Sequence[Placement]) -> GrownTree:
    """The tree with every placement added; new classes after the old ones, in the order given."""
    if not placements:
        raise NhlError("no new classes to graft", "classes")
    existing = set(tree.graph.nodes)
    taken = [p.id for p in placements if p.id in existing]
    if taken:
        raise NhlError(
            f"{counted(len(taken), 'class', 'classes')} already in the model: "
            f"{', '.join(map(repr, taken[:5]))}; graft only classes the model does not have",
            "classes",
        )
    nodes = [{**_node_dict(tree, n), "parent": tree.parent(n)} for n in tree.iter_nodes()]
    nodes[0].pop("parent")
    added: dict[str, dict[str, Any]] = {}
    for p in placements:
        parent = p.anchor
        for group in p.groups:
            added.setdefault(group["id"], {**group, "parent": parent})
            parent = group["id"]
        added[p.id] = {**p.leaf, "parent": parent}
    source = dict(tree.source)
    source["grafted"] = [*tree.source.get("grafted", []), [p.id for p in placements]]
    data = {
        "format": "nhl-tree",
        "version": 1,
        "name": tree.name,
        "levels": tree.levels,
        "source": source,
        "classes": [*tree.classes, *(p.id for p in placements)],
        "nodes": nodes + list(added.values()),
    }
    try:
        grown = Tree.from_dict(data)
    except NhlError as exc:
        raise NhlError(f"the new classes do not fit the model's tree: {exc}") from exc
    groups = [g for g in added if g not in {p.id for p in placements}]
    return GrownTree(grown, list(placements), groups)
