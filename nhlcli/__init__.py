"""nhl: hierarchical image classification with extractable experts.

The package is a library first; the ``nhl`` command is a thin layer over it. A notebook can
build, load, validate and query category trees without the CLI::

    from nhlcli.taxonomy import Tree, build_tree, load_class_list
    tree = Tree.load("taxonomies/imagenet-1k-wordnet-l3.json")
    tree.lowest_common_ancestor(["great white shark", "hammerhead"])
"""

__version__ = "0.1.0"
