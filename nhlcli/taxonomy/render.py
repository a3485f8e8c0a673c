"""Trees for people and other tools: a rich terminal tree, Graphviz dot, Mermaid, JSON, Newick."""

from __future__ import annotations

from rich.markup import escape
from rich.tree import Tree as RichTree

from nhlcli.atomic import dumps_json
from nhlcli.taxonomy.newick import to_newick
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted, printable

FORMATS = ("rich", "dot", "mermaid", "json", "newick")


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
