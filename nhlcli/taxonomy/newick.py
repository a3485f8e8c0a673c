"""Trees as Newick text, the format of phylogenetics and tree-distance tools (scikit-bio, ETE,
DendroPy, Biopython's ``Bio.Phylo``, R's ape).

``to_newick(tree)`` writes every node, children in the tree's canonical order, without branch
lengths, ending with ``;``::

    ((('T-shirt/top',Shirt)top,...)clothing,...)artifact;

- Leaves are labelled with the class names when the class names are unique, otherwise (ImageNet
  has two classes named *crane*) every leaf with its class id, so a leaf always names one class
  and two exports of the same classes label them alike; ``leaf_labels="id"`` or ``"name"``
  chooses one.
- Inner nodes are labelled with their node names. Single-child chains (the groups that keep
  every class at the same depth) are written as nodes of one child, ``((Dress)Dress)``, which
  Newick allows and the tools above read.
- A label is quoted as the Newick standard says, in single quotes with a quote inside doubled
  (``'baby''s breath'``), when it holds white space, parentheses, square brackets (comments),
  commas, colons, semicolons, quotes or underscores (an unquoted underscore reads as a space).
  Any other character, emoji among them, is written as itself (the text is Unicode; files are
  UTF-8).
"""

from __future__ import annotations

from nhlcli.errors import NhlError
from nhlcli.taxonomy.tree import Tree

LEAF_LABELS = ("auto", "name", "id")

# characters an unquoted Newick label may not hold (underscore: read as a blank when unquoted)
_SPECIAL = frozenset("()[]',;:_\"")


def newick_label(text: str) -> str:
    """``text`` as a Newick label: as it is when it is safe bare, else single-quoted with quotes doubled."""
    if text and not any(ch in _SPECIAL or ch.isspace() for ch in text):
        return text
    return "'" + text.replace("'", "''") + "'"


def leaf_names(tree: Tree, leaf_labels: str = "auto") -> dict[str, str]:
    """The label of each class in :func:`to_newick`: its name when names are unique (``auto``),
    else its id."""
    if leaf_labels not in LEAF_LABELS:
        raise NhlError(f"leaf_labels {leaf_labels!r}: choose one of {', '.join(LEAF_LABELS)}")
    names = {c: tree.node(c).name for c in tree.classes}
    if leaf_labels == "id":
        return {c: c for c in tree.classes}
    seen: dict[str, str] = {}
    for class_id, name in names.items():
        if name in seen:
            if leaf_labels == "auto":
                return {c: c for c in tree.classes}
            raise NhlError(
                f"classes {seen[name]!r} and {class_id!r} are both named {name!r}: Newick leaves need "
                "unique labels; label them by id"
            )
        seen[name] = class_id
    return names


def to_newick(tree: Tree, leaf_labels: str = "auto") -> str:
    """``tree`` as one line of Newick text ending in ``;`` and a newline (see the module docs)."""
    leaves = leaf_names(tree, leaf_labels)
    done: dict[str, str] = {}
    # reversed preorder: every node after all its children
    for node_id in reversed(list(tree.iter_nodes())):
        node = tree.node(node_id)
        if node.is_leaf:
            done[node_id] = newick_label(leaves[node_id])
        else:
            inner = ",".join(done.pop(kid) for kid in node.children)
            done[node_id] = f"({inner}){newick_label(node.name)}"
    return done[tree.root] + ";\n"
