"""How far two trees over the same classes agree: per level, and over every pair of classes.

Per level: each inner level of a tree is a partition of the classes (which node each class
falls under); two partitions are compared by the adjusted Rand index and the adjusted mutual
information (scikit-learn; 1 = the same grouping, about 0 = no better than chance). Trees of
different depth are compared level by level at the same relative depth (level k of an L-level
tree against the level of the other tree closest to k/L), so a 2-level tree meets a 3-level one
at its groups, not at a level it does not have.

Over all pairs: the depth of two classes' lowest common ancestor, as a fraction of each tree's
depth, says how closely a tree relates them; the Spearman correlation of those depths over all
class pairs says whether the two trees relate the same classes closely (1 = same order).

Topology: the Robinson-Foulds distance on rooted clusters (:mod:`nhlcli.taxonomy.topology`),
raw and divided by its maximum.

Trees over different classes are refused, unless ``shared_classes=True`` (what ``nhl hierarchy
compare`` passes): then both are cut to the classes they share, every measure is taken over
those, and the report says how many classes of each tree were dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nhlcli.errors import NhlError
from nhlcli.taxonomy.topology import robinson_foulds
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted


def level_labels(tree: Tree, depth: int, classes: list[str]) -> np.ndarray:
    """For each class (in ``classes`` order), the index of its ancestor at ``depth``."""
    nodes = {node: i for i, node in enumerate(tree.level(depth))}
    labels = []
    for class_id in classes:
        node = class_id
        while tree.node(node).depth > depth:
            node = tree.parent(node)
        labels.append(nodes[node])
    return np.asarray(labels)


def _check_same_classes(a: Tree, b: Tree, shared_classes: bool = False) -> list[str]:
    only_a, only_b = set(a.classes) - set(b.classes), set(b.classes) - set(a.classes)
    if shared_classes:
        classes = [c for c in a.classes if c not in only_a]
        if len(classes) < 2:
            raise NhlError(
                f"the trees share {counted(len(classes), 'class')} ({len(only_a)} only in "
                f"{a.name or 'the first'}, {len(only_b)} only in {b.name or 'the second'}); comparing "
                "needs at least 2 shared classes"
            )
        return classes
    if only_a or only_b:
        shown = ", ".join(sorted(only_a | only_b)[:5])
        raise NhlError(
            f"the trees hold different classes ({len(only_a)} only in {a.name or 'the first'}, "
            f"{len(only_b)} only in {b.name or 'the second'}, e.g. {shown}); compare trees over the "
            "same classes"
        )
    if len(a.classes) < 2:
        raise NhlError("comparing trees needs at least 2 classes")
    return list(a.classes)


def _matching_depth(depth: int, levels: int, other_levels: int) -> int:
    """The inner level of a tree with ``other_levels`` at the relative depth of ``depth``."""
    inner = range(1, max(other_levels, 2))
    return min(inner, key=lambda d: (abs(d / other_levels - depth / levels), d))


def lca_depths(tree: Tree, classes: list[str]) -> np.ndarray:
    """Relative depth (0 root .. 1 leaf level) of each class pair's lowest common ancestor,
    for the pairs ``i < j``, in ``np.triu_indices`` order."""
    n = len(classes)
    shared = np.zeros((n, n), dtype=np.int16)
    for depth in range(1, tree.levels):
        labels = level_labels(tree, depth, classes)
        shared += labels[:, None] == labels[None, :]
    return shared[np.triu_indices(n, k=1)] / tree.levels


def restricted(tree: Tree, classes: list[str]) -> Tree:
    """``tree`` cut to ``classes`` (in its class order): the nodes on their paths from the root."""
    keep = set(classes)
    if keep == set(tree.classes):
        return tree
    kept = [c for c in tree.classes if c in keep]
    nodes = {n for c in kept for n in tree.path(c)}
    return Tree(tree.graph.subgraph(nodes).copy(), tree.root, kept, name=tree.name, source=tree.source)


def compare_trees(a: Tree, b: Tree, shared_classes: bool = False) -> dict[str, Any]:
    """Agreement of ``a`` and ``b`` per level (ARI, AMI), over all class pairs (Spearman) and in
    topology (rooted Robinson-Foulds). ``shared_classes``: compare over the classes both trees
    hold instead of refusing trees over different classes."""
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    classes = _check_same_classes(a, b, shared_classes)
    topology = robinson_foulds(a, b)  # over the shared classes, with the counts dropped
    a, b = restricted(a, classes), restricted(b, classes)
    levels = []
    for depth in range(1, a.levels):
        other = _matching_depth(depth, a.levels, b.levels)
        # a flat tree: every class is its own group under the root
        right = np.arange(len(classes)) if b.levels < 2 else level_labels(b, other, classes)
        left = level_labels(a, depth, classes)
        levels.append(
            {
                "level_a": depth,
                "level_b": other if b.levels >= 2 else None,
                "groups_a": int(left.max() + 1),
                "groups_b": int(len(np.unique(right))),
                "ari": round(float(adjusted_rand_score(left, right)), 4),
                "ami": round(float(adjusted_mutual_info_score(left, right)), 4),
            }
        )
    depth_a, depth_b = lca_depths(a, classes), lca_depths(b, classes)
    if depth_a.std() == 0 or depth_b.std() == 0:
        rho = None  # a flat tree relates every pair alike: no order to correlate
    else:
        rho = round(float(spearmanr(depth_a, depth_b).statistic), 4)
    return {
        "a": a.name,
        "b": b.name,
        "classes": len(classes),
        "classes_dropped_a": topology["dropped_a"],
        "classes_dropped_b": topology["dropped_b"],
        "levels_a": a.levels,
        "levels_b": b.levels,
        "per_level": levels,
        "pairs": len(depth_a),
        "lca_depth_spearman": rho,
        "robinson_foulds": topology,
    }
