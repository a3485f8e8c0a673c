"""The category tree: one validated, versioned JSON format shared by every source and the model.

A tree file is a nested JSON object a person can read and edit::

    {"format": "nhl-tree", "version": 1, "name": "fashion-mnist-wordnet-l2", "levels": 2,
     "source": {"kind": "wordnet", "params": {...}, "tool": "nhlcli 0.1.0"},
     "classes": ["t-shirt", "trouser", ...],            # leaf ids in class-index (logit) order
     "tree": {"id": "root", "name": "entity", "children": [
        {"id": "n03051540", "name": "clothing", "wnid": "n03051540", "children": [
            {"id": "trouser", "name": "Trouser", "wnid": "n04489008", "aliases": ["pants"]}]}]}}

Instead of ``tree`` a file may give ``nodes``: a flat list of ``{"id", "name", "parent"}``
objects (handy when converting edge lists from other tools). Either way the same checks run on
every load: one root, no cycles, unique ids, every class exactly once as a leaf, every leaf at
the same depth (``levels``). Errors name the offending node.
"""

from __future__ import annotations

import difflib
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from nhlcli import __version__
from nhlcli.atomic import atomic_write_json
from nhlcli.errors import NhlError
from nhlcli.jsonio import loads_json
from nhlcli.taxonomy.labels import MAX_NAME_CHARS, control_character, name_problem, normalize_label, quoted
from nhlcli.taxonomy.selection import Selection, select
from nhlcli.text import printable

TREE_FORMAT = "nhl-tree"
TREE_VERSION = 1
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Node:
    """One node of a tree: a class (leaf) or a group of classes (inner node)."""

    id: str
    name: str
    wnid: str | None = None
    aliases: tuple[str, ...] = ()
    depth: int = 0
    children: tuple[str, ...] = ()

    @property
    def is_leaf(self) -> bool:
        return not self.children


def check_format_version(version: Any, supported: int, what: str, fix: str) -> int:
    """The integer format version of a file nhl wrote; a clear message for a missing, garbled or newer one.

    Only a whole number above ``supported`` asks for a newer nhl: anything else is a damaged
    file, and saying "upgrade" for it would send the user the wrong way.
    """
    if version is None:
        raise NhlError(f"{what} has no 'version' (this nhl writes version {supported}); {fix}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise NhlError(
            f"{what} has an invalid 'version' {version!r} (a whole number such as {supported}); {fix}"
        )
    if version > supported:
        raise NhlError(
            f"{what} has version {version}, newer than this nhl supports (version {supported}); "
            "upgrade nhlcli"
        )
    return version


def tool_stamp() -> str:
    """The tool version recorded in every file nhl writes."""
    return f"nhlcli {__version__}"


@dataclass
class _Spec:
    """A node as read from a file or a builder, before validation."""

    id: str
    name: str
    wnid: str | None
    aliases: tuple[str, ...]
    parent: str | None
    where: str = ""
    order: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Tree:
    """A validated category tree with leaves in class-index order.

    Construct with :meth:`load`, :meth:`from_dict` or :meth:`from_nested`; every constructor
    validates. Trees are immutable in use: operations such as :meth:`subtree` return new trees.
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        root: str,
        classes: Sequence[str],
        name: str = "",
        source: dict[str, Any] | None = None,
    ) -> None:
        self._graph = graph
        self._root = root
        self._classes = list(classes)
        self._class_index = {c: i for i, c in enumerate(self._classes)}
        self.name = name
        self.source = dict(source or {})
        self._depth = nx.shortest_path_length(graph, root)
        self._order_children()
        self._levels = self._check_shape()
        self._lookup: dict[str, list[str]] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path) -> Tree:
        """Read and validate a tree file; every problem becomes a one-line :class:`NhlError`."""
        path = Path(path)
        shown = printable(str(path))
        if path.is_dir():
            raise NhlError(
                f"tree {shown} is a directory; a tree is a JSON file written by 'nhl hierarchy build' "
                "or the name of a shipped tree (see 'nhl hierarchy list')"
            )
        if not path.exists():
            raise NhlError(f"tree file {shown} does not exist; build one with 'nhl hierarchy build'")
        if not path.is_file():
            raise NhlError(f"tree {shown} is not a regular file; a tree is a JSON file")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise NhlError(f"cannot read tree file {shown}: {exc.strerror or exc}") from exc
        try:  # a BOM that an editor put in front is not part of the JSON
            data = loads_json(raw.removeprefix(UTF8_BOM), f"tree file {shown}")
        except NhlError as exc:
            raise NhlError(f"{exc}; fix the file or rebuild it with 'nhl hierarchy build'") from None
        try:
            return cls.from_dict(data)
        except NhlError as exc:
            raise NhlError(f"{shown}: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Any) -> Tree:
        """Validate and build a tree from its JSON object (either the nested or the nodes form)."""
        if not isinstance(data, dict):
            raise NhlError("a tree file must hold a JSON object with 'format': 'nhl-tree'")
        fmt = data.get("format")
        if fmt != TREE_FORMAT:
            raise NhlError(f"not an nhl tree file (format is {quoted(fmt)}, expected {TREE_FORMAT!r})")
        check_format_version(
            data.get("version"), TREE_VERSION, "tree file", "fix it or rebuild it with 'nhl hierarchy build'"
        )
        classes = data.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise NhlError("'classes' must be a non-empty list of class ids (the model's logit order)")
        if "tree" in data:
            specs = _specs_from_nested(data["tree"])
        elif "nodes" in data:
            specs = _specs_from_list(data["nodes"])
        else:
            raise NhlError("tree file needs a nested 'tree' object or a 'nodes' list")
        name = data.get("name")
        if name is not None:
            name = _text(name, "'name'", "the tree", empty_ok=True)
        source = data.get("source")
        if source is not None and not isinstance(source, dict):
            raise NhlError(f"'source' must be a JSON object (got {quoted(source)})")
        _check_source_text(source or {}, "'source'")
        tree = cls._from_specs(specs, classes, name or "", source or {})
        declared = data.get("levels")
        if declared is not None and declared != tree.levels:
            raise NhlError(f"'levels' says {quoted(declared)} but the leaves are at depth {tree.levels}")
        return tree

    @classmethod
    def from_nested(
        cls,
        root: dict[str, Any],
        classes: Sequence[str],
        name: str = "",
        source: dict[str, Any] | None = None,
    ) -> Tree:
        """Build from a nested ``{"id", "name", "wnid", "aliases", "children"}`` dict (builders use this)."""
        return cls._from_specs(_specs_from_nested(root), list(classes), name, source or {})

    @classmethod
    def _from_specs(cls, specs: list[_Spec], classes: list[str], name: str, source: dict[str, Any]) -> Tree:
        seen_classes: set[str] = set()
        for c in classes:
            _text(c, "class id", "'classes'")
            if c in seen_classes:
                raise NhlError(f"duplicate class {c!r}: 'classes' lists it twice")
            seen_classes.add(c)
        graph = nx.DiGraph()
        for spec in specs:
            if spec.id in graph:
                kind = "duplicate class" if spec.id in seen_classes else "duplicate node id"
                raise NhlError(f"{kind} {spec.id!r}: it appears twice in the tree ({spec.where})")
            graph.add_node(spec.id, name=spec.name, wnid=spec.wnid, aliases=spec.aliases, order=spec.order)
        for spec in specs:
            if spec.parent is None:
                continue
            if spec.parent not in graph:
                raise NhlError(f"node {spec.id!r} names unknown parent {spec.parent!r}")
            graph.add_edge(spec.parent, spec.id)
        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            raise NhlError(f"cycle in the tree: {path}")
        roots = [n for n in graph if graph.in_degree(n) == 0]
        if len(roots) != 1:
            shown = ", ".join(repr(r) for r in roots[:5])
            raise NhlError(f"a tree needs exactly one root, found {len(roots)}: {shown}")
        return cls(graph, roots[0], classes, name=name, source=source)

    def _order_children(self) -> None:
        """Order every node's children by the smallest class index below them.

        A deterministic order makes nodes at a level line up with the class order, so files and
        models built from equal trees are identical.
        """
        first: dict[str, float] = {}
        for node in reversed(list(nx.topological_sort(self._graph))):
            kids = list(self._graph.successors(node))
            if kids:
                first[node] = min(first[k] for k in kids)
            else:
                first[node] = self._class_index.get(node, float("inf"))
        ordered = nx.DiGraph()
        for node, attrs in self._graph.nodes(data=True):
            ordered.add_node(node, **attrs)
        for node in nx.topological_sort(self._graph):
            kids = sorted(self._graph.successors(node), key=lambda k: (first[k], k))
            for kid in kids:
                ordered.add_edge(node, kid)
        self._graph = ordered

    def _check_shape(self) -> int:
        leaves = [n for n in self._graph if self._graph.out_degree(n) == 0]
        for c in self._classes:
            if c not in self._graph:
                raise NhlError(f"missing class {c!r}: it is in 'classes' but not in the tree")
            if self._graph.out_degree(c) > 0:
                raise NhlError(f"class {c!r} has children; classes must be leaves")
        for leaf in leaves:
            if leaf not in self._class_index:
                raise NhlError(f"leaf {leaf!r} is not in 'classes'; add it there or give it children")
        if self._root in self._class_index:
            raise NhlError(f"class {self._root!r} is the root; a tree needs at least one level")
        depths = {self._depth[c] for c in self._classes}
        if len(depths) != 1:
            deepest = max(depths)
            odd = next(c for c in self._classes if self._depth[c] != deepest)
            raise NhlError(
                f"uneven depth: leaf {odd!r} is at depth {self._depth[odd]} but other leaves are at "
                f"{deepest}; every class must be at the same depth (insert single-child groups)"
            )
        return depths.pop()

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """The tree's name (shown by ``hierarchy show``, stored in files): plain text, checked when set."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = _text(value, "name", "the tree", empty_ok=True)

    @property
    def root(self) -> str:
        return self._root

    @property
    def classes(self) -> list[str]:
        """Class ids in class-index order: the order of the model's logits."""
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def levels(self) -> int:
        """Depth of every leaf: the number of branch levels the nested model gets."""
        return self._levels

    @property
    def graph(self) -> nx.DiGraph:
        """A copy of the tree as a networkx graph (edges point from parent to child)."""
        return self._graph.copy()

    # ------------------------------------------------------------------ queries
    def node(self, node_id: str) -> Node:
        if node_id not in self._graph:
            raise NhlError(f"no node {node_id!r} in tree {self.name or ''}".rstrip())
        attrs = self._graph.nodes[node_id]
        return Node(
            id=node_id,
            name=attrs.get("name") or node_id,
            wnid=attrs.get("wnid"),
            aliases=tuple(attrs.get("aliases") or ()),
            depth=self._depth[node_id],
            children=tuple(self._graph.successors(node_id)),
        )

    def children(self, node_id: str) -> list[str]:
        return list(self._graph.successors(node_id))

    def parent(self, node_id: str) -> str | None:
        preds = list(self._graph.predecessors(node_id))
        return preds[0] if preds else None

    def path(self, node_id: str) -> list[str]:
        """Node ids from the root down to ``node_id``, both included."""
        return nx.shortest_path(self._graph, self._root, node_id)

    def class_index(self, class_id: str) -> int:
        return self._class_index[class_id]

    def leaves(self, node_id: str | None = None) -> list[str]:
        """The classes below ``node_id`` (the node itself if it is a class), in class order."""
        node_id = node_id or self._root
        if node_id in self._class_index:
            return [node_id]
        below = nx.descendants(self._graph, node_id)
        return [c for c in self._classes if c in below]

    def level(self, depth: int) -> list[str]:
        """Node ids at ``depth`` (1 = the first branch level, ``levels`` = the classes), in order."""
        nodes = [self._root]
        for _ in range(depth):
            nodes = [k for n in nodes for k in self._graph.successors(n)]
        return nodes

    def iter_nodes(self) -> Iterable[str]:
        """Every node id, depth first, children in order."""
        return nx.dfs_preorder_nodes(self._graph, self._root)

    def resolve(self, label: str) -> str:
        """The node id meant by ``label``: an id, WordNet id, name, alias (loosely matched) or class index.

        Unknown labels raise :class:`NhlError` naming the closest matches; ambiguous ones list
        the candidates by id (names shared along a single-child chain resolve to its deepest node).
        """
        if label in self._graph:
            return label
        lookup = self._label_lookup()
        hits = lookup.get(normalize_label(label), [])
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1 and len({tuple(self.leaves(h)) for h in hits}) == 1:
            # a single-child chain (e.g. group "Dress" above class "Dress"): the same classes
            # either way, so the name means the deepest of them
            return max(hits, key=lambda h: self.node(h).depth)
        if len(hits) > 1:
            options = ", ".join(f"{h} ({self.node(h).name})" for h in hits[:6])
            raise NhlError(f"{quoted(label)} is ambiguous in this tree: use one of the ids {options}")
        index = label.strip()
        if index.isdecimal() and len(index) < 10 and int(index) < len(self._classes):  # a class index
            return self._classes[int(index)]
        close: list[str] = []
        if len(label) <= MAX_NAME_CHARS:  # difflib's time grows with the square of the length
            close = difflib.get_close_matches(normalize_label(label), list(lookup), n=5, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise NhlError(f"unknown class or node {quoted(label)}{hint}")

    def _label_lookup(self) -> dict[str, list[str]]:
        """Normalized label -> node ids; ids, names and WordNet ids come before aliases, so a
        class named ``screen`` is never shadowed by a group that also answers to ``screen``."""
        if self._lookup is None:
            primary: dict[str, list[str]] = {}
            secondary: dict[str, list[str]] = {}
            for node_id in self.iter_nodes():
                attrs = self._graph.nodes[node_id]
                labels = {node_id, attrs.get("name") or node_id}
                if attrs.get("wnid"):
                    labels.add(attrs["wnid"])
                for key in {normalize_label(x) for x in labels}:
                    primary.setdefault(key, []).append(node_id)
                for key in {normalize_label(x) for x in attrs.get("aliases") or ()}:
                    secondary.setdefault(key, []).append(node_id)
            self._lookup = {**secondary, **primary}
        return self._lookup

    def lowest_common_ancestor(self, labels: Sequence[str]) -> str:
        """The deepest node whose subtree holds every node named in ``labels``."""
        if not labels:
            raise NhlError("lowest_common_ancestor needs at least one class")
        paths = [self.path(self.resolve(x)) for x in labels]
        common = self._root
        for step in zip(*paths, strict=False):
            if len(set(step)) != 1:
                break
            common = step[0]
        return common

    def select(self, names: Sequence[str], option: str = "classes") -> Selection:
        """The classes ``names`` mean (classes, nodes, or WordNet concepts), unioned: the one
        resolution behind every class list (see :mod:`nhlcli.taxonomy.selection`)."""
        return select(self, names, option)

    def subtree(self, labels: Sequence[str], name: str | None = None) -> Tree:
        """The tree restricted to the classes below ``labels`` (classes or inner nodes).

        Keeps only nodes on paths from the root to the kept classes; the kept classes keep
        their relative class order. This is the tree of an expert.
        """
        keep: set[str] = set()
        for label in labels:
            keep.update(self.leaves(self.resolve(label)))
        if not keep:
            raise NhlError("the selection holds no classes")
        classes = [c for c in self._classes if c in keep]
        nodes = {n for c in classes for n in self.path(c)}
        graph = self._graph.subgraph(nodes).copy()
        return Tree(graph, self._root, classes, name=name or self.name, source=self.source)

    # ------------------------------------------------------------------ summaries
    def stats(self) -> dict[str, Any]:
        """Per-level node counts, fan-out and group sizes: how balanced the tree is."""
        per_level = []
        for depth in range(1, self.levels + 1):
            nodes = self.level(depth)
            parents = self.level(depth - 1)
            fanout = [self._graph.out_degree(p) for p in parents]
            sizes = [len(self.leaves(n)) for n in nodes]
            mean = statistics.fmean(sizes)
            per_level.append(
                {
                    "level": depth,
                    "nodes": len(nodes),
                    "fanout_min": min(fanout),
                    "fanout_mean": round(statistics.fmean(fanout), 2),
                    "fanout_max": max(fanout),
                    "classes_per_node_min": min(sizes),
                    "classes_per_node_mean": round(mean, 2),
                    "classes_per_node_max": max(sizes),
                    # coefficient of variation of group sizes: 0 = perfectly balanced
                    "size_cv": round(statistics.pstdev(sizes) / mean, 3) if mean else 0.0,
                    "single_child_parents": sum(1 for f in fanout if f == 1),
                }
            )
        return {
            "name": self.name,
            "classes": self.num_classes,
            "levels": self.levels,
            "nodes": self._graph.number_of_nodes(),
            "source": self.source.get("kind"),
            "per_level": per_level,
        }

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the nested file format (what :meth:`save` writes)."""
        return {
            "format": TREE_FORMAT,
            "version": TREE_VERSION,
            "name": self.name,
            "levels": self.levels,
            "source": self.source,
            "classes": self.classes,
            "tree": self._nested(self._root),
        }

    def _nested(self, node_id: str) -> dict[str, Any]:
        attrs = self._graph.nodes[node_id]
        out: dict[str, Any] = {"id": node_id, "name": attrs.get("name") or node_id}
        if attrs.get("wnid"):
            out["wnid"] = attrs["wnid"]
        if attrs.get("aliases"):
            out["aliases"] = list(attrs["aliases"])
        kids = list(self._graph.successors(node_id))
        if kids:
            out["children"] = [self._nested(k) for k in kids]
        return out

    def save(self, path: str | Path) -> Path:
        """Write the tree atomically as canonical JSON (equal trees give byte-identical files)."""
        return atomic_write_json(path, self.to_dict())

    def __repr__(self) -> str:
        return f"Tree(name={self.name!r}, classes={self.num_classes}, levels={self.levels})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tree) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def _text(value: Any, what: str, where: str, empty_ok: bool = False) -> str:
    """``value`` if it is a string that can name something (no control characters, not huge)."""
    if not isinstance(value, str) or not (empty_ok or value.strip()):
        raise NhlError(f"{where}: {what} must be a non-empty string (got {quoted(value)})")
    problem = name_problem(value)
    if problem:
        raise NhlError(f"{where}: {what} {quoted(value)} {problem}")
    return value


def _optional_text(value: Any, what: str, where: str) -> str | None:
    return None if value is None or value == "" else _text(value, what, where)


def _aliases(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise NhlError(f"{where}: 'aliases' must be a list of strings")
    return tuple(_text(a, "alias", where) for a in value)


def _check_source_text(value: Any, where: str) -> None:
    """Refuse control characters in the strings of a tree's ``source`` (its kind is printed)."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            bad = control_character(item)
            if bad is not None:
                raise NhlError(f"{at}: {quoted(item)} holds the control character {printable(bad)}")
        elif isinstance(item, dict):
            stack.extend((v, f"{at}.{quoted(k)}") for k, v in item.items())
            stack.extend((k, at) for k in item)
        elif isinstance(item, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))


def _specs_from_nested(root: Any) -> list[_Spec]:
    specs: list[_Spec] = []
    stack: list[tuple[Any, str | None, str]] = [(root, None, "tree")]
    while stack:
        obj, parent, where = stack.pop()
        if not isinstance(obj, dict):
            raise NhlError(f"{where}: every node must be a JSON object")
        node_id = _text(obj.get("id"), "'id'", where)
        where = f"node {node_id!r}" if parent is None else f"node {node_id!r} under {parent!r}"
        specs.append(
            _Spec(
                id=node_id,
                name=_optional_text(obj.get("name"), "'name'", where) or node_id,
                wnid=_optional_text(obj.get("wnid"), "'wnid'", where),
                aliases=_aliases(obj.get("aliases"), where),
                parent=parent,
                where=where,
                order=len(specs),
            )
        )
        kids = obj.get("children")
        if kids is None:
            continue
        if not isinstance(kids, list):
            raise NhlError(f"{where}: 'children' must be a list")
        if not kids:
            raise NhlError(f"{where}: 'children' is empty; drop the key for a leaf")
        for i, kid in enumerate(reversed(kids)):
            stack.append((kid, node_id, f"child {len(kids) - 1 - i} of {node_id!r}"))
    return specs


def _specs_from_list(nodes: Any) -> list[_Spec]:
    if not isinstance(nodes, list) or not nodes:
        raise NhlError("'nodes' must be a non-empty list of {id, name, parent} objects")
    specs = []
    for i, obj in enumerate(nodes):
        where = f"nodes[{i}]"
        if not isinstance(obj, dict):
            raise NhlError(f"{where} must be a JSON object")
        node_id = _text(obj.get("id"), "'id'", where)
        parent = obj.get("parent")
        if parent is not None:
            parent = _text(parent, "'parent'", f"node {node_id!r}")
        specs.append(
            _Spec(
                id=node_id,
                name=_optional_text(obj.get("name"), "'name'", f"node {node_id!r}") or node_id,
                wnid=_optional_text(obj.get("wnid"), "'wnid'", f"node {node_id!r}"),
                aliases=_aliases(obj.get("aliases"), f"node {node_id!r}"),
                parent=parent,
                where=where,
                order=i,
            )
        )
    return specs
