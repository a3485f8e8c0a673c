"""Trees for people and other tools: a rich terminal tree, Graphviz dot, Mermaid, JSON, Newick."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.tree import Tree as RichTree

from nhlcli.atomic import atomic_write_text, dumps_json
from nhlcli.errors import NhlError
from nhlcli.taxonomy.newick import to_newick
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted, printable

FORMATS = ("rich", "dot", "mermaid", "json", "newick")
FILE_FORMATS = ("dot", "mermaid", "json", "newick")  # the text formats a file is written in


def default_show_depth(tree: Tree) -> int:
    """Show every class for small trees; stop above the classes for large ones."""
    return tree.levels if tree.num_classes <= 100 else max(tree.levels - 1, 1)


def _within(tree: Tree, depth: int | None) -> list[str]:
    limit = tree.levels if depth is None else depth
    return [n for n in tree.iter_nodes() if tree.node(n).depth <= limit]


def to_rich(tree: Tree, depth: int | None = None) -> RichTree:
    """A rich tree: names, ids and class counts, collapsed below ``depth``."""
    limit = default_show_depth(tree) if depth is None else depth
    counts = {n: len(tree.leaves(n)) for n in tree.iter_nodes()}

    def label(node_id: str) -> str:
        node = tree.node(node_id)
        name = escape(printable(node.name))  # trees are checked on load; this is a second guard
        text = f"[bold]{name}[/]" if not node.is_leaf else name
        if node.name != node_id:
            text += f" [dim]{escape(printable(node_id))}[/]"
        if not node.is_leaf:
            text += f" [cyan]{counts[node_id]} class{'es' if counts[node_id] != 1 else ''}[/]"
        return text

    title = (
        f"{escape(printable(tree.name or 'tree'))}: {counted(tree.num_classes, 'class')}, "
        f"{counted(tree.levels, 'level')}"
    )
    rich_root = RichTree(f"[bold magenta]{title}[/]\n{label(tree.root)}")
    stack = [(tree.root, rich_root)]
    while stack:
        node_id, branch = stack.pop()
        node = tree.node(node_id)
        if node.depth >= limit:
            continue
        handles = [(kid, branch.add(label(kid))) for kid in node.children]
        stack.extend(reversed(handles))
    return rich_root


def to_dot(tree: Tree, depth: int | None = None) -> str:
    """Graphviz dot text (``dot -Tpng``); labels carry names and class counts."""

    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    nodes = _within(tree, depth)
    keep = set(nodes)
    lines = [f"digraph {quote(tree.name or 'tree')} {{", "  rankdir=LR;", "  node [shape=box];"]
    for n in nodes:
        node = tree.node(n)
        size = "" if node.is_leaf else f"\\n{len(tree.leaves(n))} classes"
        lines.append(f'  {quote(n)} [label={quote(node.name)[:-1]}{size}"];')
    for n in nodes:
        lines.extend(f"  {quote(n)} -> {quote(k)};" for k in tree.children(n) if k in keep)
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(tree: Tree, depth: int | None = None) -> str:
    """Mermaid flowchart text (renders in GitHub markdown)."""
    nodes = _within(tree, depth)
    ids = {n: f"n{i}" for i, n in enumerate(nodes)}
    lines = ["graph LR"]
    for n in nodes:
        node = tree.node(n)
        text = node.name if node.is_leaf else f"{node.name} ({len(tree.leaves(n))})"
        lines.append(f'  {ids[n]}["{text.replace(chr(34), "#quot;")}"]')
    for n in nodes:
        lines.extend(f"  {ids[n]} --> {ids[k]}" for k in tree.children(n) if k in ids)
    return "\n".join(lines) + "\n"


def render_text(tree: Tree, fmt: str, depth: int | None = None) -> str:
    """The tree as text in ``fmt`` (dot, mermaid, json or newick; newick always holds every class)."""
    if fmt == "newick":
        return to_newick(tree)
    if fmt == "dot":
        return to_dot(tree, depth)
    if fmt == "mermaid":
        return to_mermaid(tree, depth)
    return dumps_json(tree.to_dict())


def printable_tree(tree: Tree) -> Tree:
    """``tree`` with every name and id printable (control characters escaped), for the terminal and
    drawing tools. Trees loaded from files have no control characters; one built in code or
    read by an older nhl might."""
    data = tree.to_dict()
    escaped = _printable_strings(data)
    return tree if escaped == data else Tree.from_dict(escaped)


def _printable_strings(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: _printable_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_printable_strings(item) for item in value]
    return value


def check_show_depth(tree: Tree, depth: int | None) -> None:
    """Refuse a depth the tree does not have (levels count from 1, the top level)."""
    if depth is not None and depth > tree.levels:
        levels = counted(tree.levels, "level")
        raise NhlError(f"{depth}: the tree has {levels}; give a depth from 1 to {tree.levels}", "depth")


def write_tree(
    tree: Tree,
    output: str | Path,
    fmt: str,
    depth: int | None = None,
    highlight: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Write ``tree`` to ``output`` as ``fmt`` (dot, mermaid, json, newick, png or svg), down to
    ``depth`` (newick and json hold every class). Pictures draw ``highlight`` (node ids, an
    expert's) in colour. JSON is the data itself; the other formats have names with control
    characters escaped, for the tools that read them. Returns what was written (for pictures,
    :func:`nhlcli.taxonomy.picture.draw_tree`'s report)."""
    from nhlcli.taxonomy.picture import PICTURE_FORMATS, draw_tree

    if fmt not in (*FILE_FORMATS, *PICTURE_FORMATS):
        raise NhlError(f"{fmt!r}: files are written as {', '.join((*FILE_FORMATS, *PICTURE_FORMATS))}", "fmt")
    check_show_depth(tree, depth)
    if fmt != "json":
        tree = printable_tree(tree)
    if fmt in PICTURE_FORMATS:
        kept = None if highlight is None else [printable(n) for n in highlight]
        return draw_tree(tree, output, fmt, depth, kept)
    atomic_write_text(output, render_text(tree, fmt, depth))
    return {"output": str(output)}
