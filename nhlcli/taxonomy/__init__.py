"""Category trees: the file format, class lists, and every source a tree is built from."""

from nhlcli.taxonomy.build import SOURCES, build_tree
from nhlcli.taxonomy.classes import ClassEntry, load_class_list
from nhlcli.taxonomy.sources import resolve_tree, shipped_tree, shipped_tree_names
from nhlcli.taxonomy.tree import Node, Tree

__all__ = [
    "SOURCES",
    "ClassEntry",
    "Node",
    "Tree",
    "build_tree",
    "load_class_list",
    "resolve_tree",
    "shipped_tree",
    "shipped_tree_names",
]
