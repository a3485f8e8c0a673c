"""Trees as pictures (PNG or SVG) drawn with matplotlib: ``nhl hierarchy show --format png``.

Left to right, one column per level, leaves of the drawing spread evenly top to bottom and
every inner node centred on its children. Large trees collapse below a depth (a collapsed node
shows how many classes it holds). For an expert, its parent's tree is drawn with the kept paths
highlighted down to every kept class, and the rest collapsed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nhlcli.atomic import atomic_write
from nhlcli.errors import NhlError
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted

PICTURE_FORMATS = ("png", "svg")
MAX_ROWS = 60  # default collapse: the deepest level with at most this many nodes
KEPT = "#d62728"
OTHER = "#555555"
LEAF_CHARS = 60  # a class name longer than this is cut in the drawing


def picture_depth(tree: Tree) -> int:
    """The deepest level with at most ``MAX_ROWS`` nodes (at least 1)."""
    depth = 1
    for d in range(1, tree.levels + 1):
        if len(tree.level(d)) <= MAX_ROWS:
            depth = d
    return depth


def _layout(tree: Tree, visible: set[str]) -> dict[str, tuple[float, float]]:
    """(x, y) per visible node: x = depth, y = row (leaves of the drawing in tree order)."""
    pos: dict[str, tuple[float, float]] = {}
    row = [0]

    def place(node: str) -> float:
        kids = [k for k in tree.children(node) if k in visible]
        if not kids:
            y = float(row[0])
            row[0] += 1
        else:
            ys = [place(k) for k in kids]
            y = (ys[0] + ys[-1]) / 2
        pos[node] = (float(tree.node(node).depth), y)
        return y

    place(tree.root)
    return pos


def draw_tree(
    tree: Tree,
    output: str | Path,
    fmt: str | None = None,
    depth: int | None = None,
    highlight: Iterable[str] | None = None,
    title: str | None = None,
) -> dict[str, object]:
    """Write a drawing of ``tree``; ``highlight`` (node ids, e.g. an expert's tree) is drawn in
    colour down to its classes. Returns what was drawn: rows, depth, highlighted class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = Path(output)
    fmt = _picture_format(fmt, output)
    kept = _highlighted(tree, highlight)
    limit = picture_depth(tree) if depth is None else depth
    if limit < 1:
        raise NhlError(f"{depth}: draw at least level 1", "depth")
    visible = {n for n in tree.iter_nodes() if tree.node(n).depth <= limit} | kept
    pos = _layout(tree, visible)
    rows = 1 + max(y for _, y in pos.values())
    levels = max(int(x) for x, _ in pos.values())
    fig_h = max(2.5, 0.24 * rows + 1.0)
    fig_w = max(7.0, 3.0 * (levels + 1))
    with plt.rc_context({"svg.fonttype": "none"}), warnings.catch_warnings():
        # a name in a script DejaVu lacks draws as boxes, a long one squeezes the margins:
        # matplotlib says so in warnings that would be printed around nhl's own one-line output
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        warnings.filterwarnings("ignore", message="Tight layout not applied", category=UserWarning)
        fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=100)
        _draw_edges(ax, tree, pos, kept)
        drawn = _draw_nodes(ax, tree, pos, kept)
        ax.set_xlim(-0.2, levels + 1.6)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.axis("off")
        what = f"{counted(tree.num_classes, 'class')}, {counted(tree.levels, 'level')}"
        if depth is None and limit < tree.levels:
            what += f", collapsed below level {limit}"
        if kept:
            what += f"; {len(drawn)} kept classes in red"
        ax.set_title(title or f"{tree.name or 'tree'}: {what}", fontsize=10, loc="left")
        fig.tight_layout()
        atomic_write(output, lambda tmp: fig.savefig(tmp, format=fmt))
        plt.close(fig)
    return {"output": str(output), "rows": int(rows), "depth": limit, "highlighted_classes": drawn}


def _picture_format(fmt: str | None, output: Path) -> str:
    """``fmt``, else the output's extension: png or svg."""
    fmt = (fmt or output.suffix.lstrip(".")).lower()
    if fmt not in PICTURE_FORMATS:
        raise NhlError(f"picture format {fmt!r}: choose png or svg (or name the file .png/.svg)")
    return fmt


def _highlighted(tree: Tree, highlight: Iterable[str] | None) -> set[str]:
    """The nodes to draw in colour, all of them nodes of ``tree``."""
    kept = set(highlight or ())
    unknown = kept - set(tree.iter_nodes())
    if unknown:
        raise NhlError(
            f"the highlighted nodes are not in the tree (e.g. {sorted(unknown)[0]!r}); draw the parent's tree"
        )
    return kept


def _draw_edges(ax: Any, tree: Tree, pos: dict[str, tuple[float, float]], kept: set[str]) -> None:
    """Elbow lines from every drawn node to its drawn children; kept paths in colour."""
    for node, (x, y) in pos.items():
        for kid in tree.children(node):
            if kid in pos:
                on = node in kept and kid in kept
                kx, ky = pos[kid]
                ax.plot(
                    [x, x + 0.5, x + 0.5, kx],
                    [y, y, ky, ky],
                    color=KEPT if on else "#bbbbbb",
                    lw=2.0 if on else 0.8,
                    zorder=1,
                )


def _node_label(tree: Tree, node: str, pos: dict[str, tuple[float, float]]) -> str:
    """A node's name (cut when long), with its class count for inner nodes and an ellipsis where
    children are collapsed."""
    info = tree.node(node)
    width = LEAF_CHARS if info.is_leaf else 32
    name = info.name if len(info.name) <= width else info.name[: width - 1] + "…"
    label = name if info.is_leaf else f"{name} ({len(tree.leaves(node))})"
    if any(k not in pos for k in tree.children(node)):
        label += " …"
    return label


def _draw_nodes(ax: Any, tree: Tree, pos: dict[str, tuple[float, float]], kept: set[str]) -> list[str]:
    """A dot and a label per drawn node; returns the kept classes drawn (each SVG label of one
    carries the id ``kept-class:<name>``)."""
    drawn: list[str] = []
    for node, (x, y) in pos.items():
        info = tree.node(node)
        count = len(tree.leaves(node))
        label = _node_label(tree, node, pos)
        on = node in kept
        ax.scatter([x], [y], s=12 + 3 * count**0.5, color=KEPT if on else OTHER, zorder=2)
        style = {
            "fontsize": 8,
            "color": KEPT if on else "#222222",
            "fontweight": "bold" if on else "normal",
        }
        if any(k in pos for k in tree.children(node)):  # inner: above its outgoing edge
            text = ax.text(x - 0.05, y - 0.18, label, va="bottom", ha="left", **style)
        else:  # a class or a collapsed node: to its right
            text = ax.text(x + 0.08, y, label, va="center", ha="left", **style)
        if on and info.is_leaf:
            text.set_gid(f"kept-class:{info.name}")
            drawn.append(info.name)
    return drawn
