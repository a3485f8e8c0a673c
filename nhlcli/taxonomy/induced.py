"""Trees induced from a trained flat model's classifier weights (NBDT's method).

Classes whose weight vectors point the same way are confused the same way, so agglomerative
clustering of the normalised weight rows (Ward linkage, scipy) gives a data-driven hierarchy
for users without WordNet ids or an LLM. The binary merge tree is then compressed to exactly L
balanced levels like the WordNet source. Inner nodes are named after the classes' lowest common
WordNet hypernym where every class has a WordNet id and WordNet is installed, else after the
classes they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import networkx as nx
import numpy as np

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import WNID_RE, ClassEntry
from nhlcli.taxonomy.compress import check_group_counts, check_levels, compress_hierarchy
from nhlcli.taxonomy.tree import Tree, tool_stamp


def _merge_names(members: list[list[int]], entries: Sequence[ClassEntry]) -> list[tuple[str, str | None]]:
    """A (name, wnid) for each merge: the lowest common WordNet hypernym, or the member names."""
    synsets: list[Any] | None = None
    if all(e.wordnet and WNID_RE.match(e.wordnet) for e in entries):
        try:
            from nhlcli.taxonomy.wordnet import place_class, synset_id, synset_name

            synsets = [place_class(e).synset for e in entries]
        except NhlError:
            synsets = None  # no WordNet here: fall back to member names
    names = []
    for group in members:
        if synsets is not None:
            common = synsets[group[0]]
            for i in group[1:]:
                common = (common.lowest_common_hypernyms(synsets[i]) or [common])[0]
            names.append((synset_name(common), synset_id(common)))
        else:
            first = [entries[i].name for i in group[:2]]
            names.append((" + ".join(first) + (f" + {len(group) - 2} more" if len(group) > 2 else ""), None))
    return names


def induced_hierarchy(weight: np.ndarray, entries: Sequence[ClassEntry]) -> tuple[nx.DiGraph, str]:
    """The binary merge tree of Ward clustering on the unit-normalised weight rows."""
    from scipy.cluster.hierarchy import linkage

    n = len(entries)
    if n < 2:
        raise NhlError("an induced tree needs a model with at least 2 classes")
    rows = weight / np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12)
    merges = linkage(rows.astype(np.float64), method="ward")
    members: list[list[int]] = [[i] for i in range(n)]
    graph = nx.DiGraph()
    for i, entry in enumerate(entries):
        graph.add_node(f"leaf:{i}", name=entry.name)
    for k, (a, b, _, _) in enumerate(merges):
        members.append(members[int(a)] + members[int(b)])
        node = f"cluster:{n + k}"
        graph.add_edge(node, f"leaf:{int(a)}" if a < n else f"cluster:{int(a)}")
        graph.add_edge(node, f"leaf:{int(b)}" if b < n else f"cluster:{int(b)}")
    for k, (name, wnid) in enumerate(_merge_names(members[n:], entries)):
        graph.nodes[f"cluster:{n + k}"].update(name=name, wnid=wnid)
    return graph, f"cluster:{2 * n - 2}"


def build_induced_tree(
    weight: np.ndarray,
    entries: Sequence[ClassEntry],
    levels: int,
    groups: Sequence[int] | None = None,
    name: str = "",
    origin: str = "",
) -> Tree:
    """A tree of ``levels`` levels from a trained flat model's classifier weights.

    ``weight`` has one row per class of ``entries``; ``origin`` names the model file it came
    from (recorded in the tree's source).
    """
    check_levels(levels)
    if weight.ndim != 2 or weight.shape[0] != len(entries):
        raise NhlError(
            f"class weights of shape {tuple(weight.shape)} do not match {len(entries)} classes; "
            "give one weight row per class"
        )
    graph, root = induced_hierarchy(weight, entries)
    counts = check_group_counts(groups, len(entries), levels)
    concept_of = {e.id: f"leaf:{i}" for i, e in enumerate(entries)}
    nested = compress_hierarchy(graph, root, entries, concept_of, levels, counts)
    source = {
        "kind": "induced",
        "params": {"levels": levels, "groups": counts, "linkage": "ward", "model": origin},
        "tool": tool_stamp(),
    }
    return Tree.from_nested(nested, [e.id for e in entries], name=name, source=source)
