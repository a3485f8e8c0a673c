"""The Robinson-Foulds distance between two trees' topologies, on rooted clusters.

A tree's *clusters* are the sets of classes below each of its inner nodes. These trees are
rooted taxonomies, so clusters are taken as they hang from the root (rooted RF), not as the
bipartitions of an unrooted tree. The clusters every tree has (the root's, holding every class,
and each single class) are left out, and a cluster counts once however many nodes give it: a
single-child chain (``Dress`` above the class ``Dress``) adds nothing, as if unary nodes were
collapsed.

The distance is the number of clusters found in one tree and not the other; the maximum is the
number of clusters of both trees together (the distance when they share none), and the
normalised distance is their ratio (0 = the same topology, 1 = no group in common). Trees over
different classes are compared over the classes both hold: each cluster is cut to those classes,
the same as pruning the others away and collapsing the nodes this leaves with one child.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from nhlcli.taxonomy.tree import Tree


def rooted_clusters(tree: Tree, classes: Collection[str] | None = None) -> set[frozenset[str]]:
    """The non-trivial clusters of ``tree`` over ``classes`` (default: all of its classes): the
    class sets below its inner nodes, cut to ``classes``, without the full set and single classes."""
    keep = set(tree.classes if classes is None else classes)
    below: dict[str, frozenset[str]] = {}
    found: set[frozenset[str]] = set()
    for node_id in reversed(list(tree.iter_nodes())):  # children before parents
        node = tree.node(node_id)
        if node.is_leaf:
            below[node_id] = frozenset({node_id} & keep)
            continue
        cluster = frozenset().union(*(below.pop(kid) for kid in node.children))
        below[node_id] = cluster
        if 1 < len(cluster) < len(keep):
            found.add(cluster)
    return found


def robinson_foulds(a: Tree, b: Tree) -> dict[str, Any]:
    """The rooted Robinson-Foulds distance of ``a`` and ``b`` over the classes both hold.

    Returns ``distance`` (clusters in one tree only), ``max`` (clusters of both trees together),
    ``normalised`` (their ratio, 0 when neither has a cluster), the clusters of each tree and
    those shared, the number of shared classes (``leaves``) and how many classes of each tree
    were dropped because the other lacks them.
    """
    shared = set(a.classes) & set(b.classes)
    first, second = rooted_clusters(a, shared), rooted_clusters(b, shared)
    distance = len(first ^ second)
    most = len(first) + len(second)
    return {
        "rooted": True,
        "leaves": len(shared),
        "dropped_a": a.num_classes - len(shared),
        "dropped_b": b.num_classes - len(shared),
        "distance": distance,
        "max": most,
        "normalised": round(distance / most, 4) if most else 0.0,
        "clusters_a": len(first),
        "clusters_b": len(second),
        "shared_clusters": len(first & second),
    }
