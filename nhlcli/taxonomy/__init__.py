"""Category trees: the file format, class lists, and every source a tree is built from."""

from nhlcli.taxonomy.build import SOURCES, build_tree
from nhlcli.taxonomy.classes import ClassEntry, load_class_list
from nhlcli.taxonomy.newick import to_newick
from nhlcli.taxonomy.sources import resolve_tree, shipped_tree, shipped_tree_names
from nhlcli.taxonomy.topology import robinson_foulds, rooted_clusters
from nhlcli.taxonomy.tree import Node, Tree

__all__ = [
    "SOURCES",
    "ClassEntry",
    "Node",
    "Tree",
    "build_tree",
    "load_class_list",
    "resolve_tree",
    "robinson_foulds",
    "rooted_clusters",
    "shipped_tree",
    "shipped_tree_names",
    "to_newick",
]
