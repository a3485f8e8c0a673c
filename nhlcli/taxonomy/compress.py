"""Compress a deep, uneven concept hierarchy (WordNet, BREEDS) into exactly L balanced levels.

WordNet paths are 5 to 18 deep and uneven; the nested model needs every class at the same
depth. The compression keeps real concepts as groups wherever it can:

1. Every class hangs below its own concept; concepts with no class below are dropped and
   single-child chains are collapsed to their most specific concept.
2. Level by level, each group is split into a share of that level's group count (proportional
   to its size), always expanding the largest group into its child concepts. Child concepts far
   smaller than the target size are bundled with their siblings, so groups stay balanced.
3. A group holding one class becomes a single-child chain down to the leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import ClassEntry, leaf_node
from nhlcli.taxonomy.labels import ROOT_ID
from nhlcli.text import counted

CLASS_KEY = "class"
# A group larger than this many times the target size is split further, whatever the count.
SPLIT_ABOVE = 1.5


def default_group_counts(num_classes: int, levels: int) -> list[int]:
    """Group counts per inner level for a geometric fan-out: N^(k/L) groups at level k."""
    return [max(1, min(num_classes, round(num_classes ** (k / levels)))) for k in range(1, levels)]


def check_group_counts(groups: Sequence[int] | None, num_classes: int, levels: int) -> list[int]:
    """Group counts per inner level (``[10, 100]``), checked, or the default for none."""
    if not groups:
        return default_group_counts(num_classes, levels)
    counts = [int(c) for c in groups]
    text = ",".join(map(str, counts))
    if len(counts) != levels - 1:
        raise NhlError(
            f"{text} gives {counted(len(counts), 'count')} but {counted(levels, 'level')} "
            f"need {levels - 1} (one per level above the classes)",
            "groups",
        )
    if any(c < 1 for c in counts) or counts != sorted(counts) or counts[-1] > num_classes:
        raise NhlError(
            f"{text}: counts must be at least 1, non-decreasing and at most the number "
            f"of classes ({num_classes})",
            "groups",
        )
    return counts


@dataclass
class _Group:
    members: list[Any]  # concept-tree node keys
    size: int
    expandable: bool = True


class _ConceptTree:
    """The pruned, chain-collapsed concept tree with the classes as leaves."""

    def __init__(
        self, graph: nx.DiGraph, root: Any, entries: Sequence[ClassEntry], concept_of: dict[str, Any]
    ) -> None:
        self.graph = graph
        tree = nx.DiGraph()
        self.index = {e.id: i for i, e in enumerate(entries)}
        for entry in entries:
            concept = concept_of[entry.id]
            if concept not in graph:
                raise NhlError(f"class {entry.id!r}: concept {concept!r} is not in the hierarchy")
            path = nx.shortest_path(graph, root, concept)
            nx.add_path(tree, path)
            tree.add_edge(concept, (CLASS_KEY, entry.id))
        self.tree = self._collapse(tree, root)
        self.root = next(n for n in self.tree if self.tree.in_degree(n) == 0)
        self.size: dict[Any, int] = {}
        self.first: dict[Any, int] = {}
        for node in reversed(list(nx.topological_sort(self.tree))):
            kids = list(self.tree.successors(node))
            if kids:
                self.size[node] = sum(self.size[k] for k in kids)
                self.first[node] = min(self.first[k] for k in kids)
            else:
                self.size[node] = 1
                self.first[node] = self.index[node[1]]

    @staticmethod
    def _collapse(tree: nx.DiGraph, root: Any) -> nx.DiGraph:
        """Replace every concept with a single child by that child (the more specific concept)."""
        out = nx.DiGraph()

        def descend(node: Any) -> Any:
            while tree.out_degree(node) == 1:
                node = next(iter(tree.successors(node)))
            return node

        top = descend(root)
        out.add_node(top)
        stack = [top]
        while stack:
            node = stack.pop()
            for kid in tree.successors(node):
                kid = descend(kid)
                out.add_edge(node, kid)
                stack.append(kid)
        return out

    def children(self, node: Any) -> list[Any]:
        return sorted(self.tree.successors(node), key=lambda k: self.first[k])

    def classes(self, members: Sequence[Any]) -> list[Any]:
        out = []
        for m in members:
            if isinstance(m, tuple) and m[0] == CLASS_KEY:
                out.append(m)
            else:
                out.extend(d for d in nx.descendants(self.tree, m) if self.tree.out_degree(d) == 0)
        return sorted(out, key=lambda k: self.first[k])


def _split(ct: _ConceptTree, group: _Group, target_size: float) -> list[_Group]:
    """Split one group into parts near ``target_size``, bundling small sibling concepts."""
    items = ct.children(group.members[0]) if len(group.members) == 1 else list(group.members)
    if len(items) < 2:
        return [group]
    parts: list[list[Any]] = []
    bundle: list[Any] = []
    bundle_size = 0
    for item in items:
        if ct.size[item] >= target_size / 2:
            parts.append([item])
            continue
        bundle.append(item)
        bundle_size += ct.size[item]
        if bundle_size >= target_size:
            parts.append(bundle)
            bundle, bundle_size = [], 0
    if bundle:
        parts.append(bundle)
    if len(parts) == 1:  # everything small: cut the siblings in two halves by size
        total, running, cut = sum(ct.size[i] for i in items), 0, 1
        for i, item in enumerate(items):
            running += ct.size[item]
            if running >= total / 2:
                cut = min(max(i + 1, 1), len(items) - 1)
                break
        parts = [items[:cut], items[cut:]]
    parts.sort(key=lambda p: min(ct.first[m] for m in p))
    return [_Group(p, sum(ct.size[m] for m in p)) for p in parts]


def _partition(ct: _ConceptTree, group: _Group, count: int) -> list[_Group]:
    """Split ``group`` into about ``count`` groups of balanced size, largest first.

    Expansion goes on while a group is over ``SPLIT_ABOVE`` times the target size, so the
    result is balanced even where one concept holds far more classes than its siblings.
    """
    frontier = [group]
    target = group.size / max(count, 1)
    while True:
        candidates = [
            g
            for g in frontier
            if g.expandable and g.size > 1 and (len(frontier) < count or g.size > SPLIT_ABOVE * target)
        ]
        if not candidates:
            break
        largest = max(candidates, key=lambda g: g.size)
        parts = _split(ct, largest, target)
        if len(parts) < 2:
            largest.expandable = False
            continue
        i = frontier.index(largest)
        frontier[i : i + 1] = parts
    frontier.sort(key=lambda g: min(ct.first[m] for m in g.members))
    return frontier


def compress_hierarchy(
    graph: nx.DiGraph,
    root: Any,
    entries: Sequence[ClassEntry],
    concept_of: dict[str, Any],
    levels: int,
    group_counts: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The nested tree dict (see :meth:`Tree.from_nested`) with every class at depth ``levels``.

    ``graph`` is a concept hierarchy (edges parent to child, one parent each) whose nodes carry
    ``name`` and optionally ``wnid`` attributes; ``concept_of`` maps each class id to its node.
    ``group_counts`` gives the number of groups at each inner level (default: geometric).
    """
    if levels < 1:
        raise NhlError("must be at least 1", "levels")
    n = len(entries)
    counts = list(group_counts) if group_counts else default_group_counts(n, levels)
    ct = _ConceptTree(graph, root, entries, concept_of)
    by_id = {e.id: e for e in entries}
    used_ids = {e.id for e in entries} | {ROOT_ID}

    def concept_label(node: Any) -> tuple[str, str | None]:
        if isinstance(node, tuple) and node[0] == CLASS_KEY:
            entry = by_id[node[1]]
            return entry.name, None
        attrs = graph.nodes[node]
        return str(attrs.get("name") or node), attrs.get("wnid")

    def concept_aliases(node: Any) -> list[str]:
        if isinstance(node, tuple):
            return []
        return list(graph.nodes[node].get("aliases") or ())

    def group_node(group: _Group, depth: int) -> dict[str, Any]:
        aliases: list[str] = []
        if len(group.members) == 1:
            name, wnid = concept_label(group.members[0])
            aliases = concept_aliases(group.members[0])
            base = group.members[0][1] if isinstance(group.members[0], tuple) else str(group.members[0])
        else:
            names = [concept_label(m)[0] for m in group.members]
            wnid = None
            parent = next(iter(ct.tree.predecessors(group.members[0])), None)
            listed = ", ".join(names[:3]) + (f" + {len(names) - 3} more" if len(names) > 3 else "")
            name = f"{concept_label(parent)[0]}: {listed}" if parent is not None else listed
            base = f"{parent if parent is not None else 'group'}+{ct.first[group.members[0]]}"
        node_id = base
        if node_id in used_ids:
            node_id = f"{base}~{depth}"
        used_ids.add(node_id)
        out: dict[str, Any] = {"id": node_id, "name": name}
        if wnid:
            out["wnid"] = wnid
        if aliases:
            out["aliases"] = aliases
        return out

    def build(group: _Group, depth: int) -> list[dict[str, Any]]:
        """Children of a node at ``depth`` holding ``group``."""
        if depth == levels - 1:
            return [leaf_node(by_id[k[1]]) for k in ct.classes(group.members)]
        share = max(1, round(group.size * counts[depth] / n))
        share = min(share, group.size)
        parts = _partition(ct, group, share)
        kids = []
        for part in parts:
            node = group_node(part, depth + 1)
            node["children"] = build(part, depth + 1)
            kids.append(node)
        return kids

    top = _Group([ct.root], ct.size[ct.root])
    name, wnid = concept_label(ct.root)
    root_node: dict[str, Any] = {"id": ROOT_ID, "name": name}
    if wnid:
        root_node["wnid"] = wnid
    root_node["children"] = build(top, 0)
    return root_node


def check_levels(levels: int) -> None:
    if not 1 <= levels <= 4:
        raise NhlError(f"{levels}: the nested model supports 1 to 4 levels", "levels")
