"""Tree sources that need no network: flat, WordNet, imagenet-superclass, BREEDS, and the shipped trees."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import CIFAR100_SUPERCLASSES, ClassEntry, flat_nested, leaf_node
from nhlcli.taxonomy.compress import check_group_counts, check_levels, compress_hierarchy
from nhlcli.taxonomy.labels import ROOT_ID, normalize_label, quoted
from nhlcli.taxonomy.tree import Tree, tool_stamp
from nhlcli.taxonomy.wordnet import hypernym_graph, place_class, place_classes, synset_id


def taxonomies_dir() -> Path:
    """The installed ``taxonomies`` folder (shipped trees and the reference data they come from)."""
    return Path(str(resources.files("nhlcli.taxonomies")))


def shipped_tree_names() -> list[str]:
    """Names of the trees that ship with nhl (``nhl hierarchy list``)."""
    return sorted(p.stem for p in taxonomies_dir().glob("*.json"))


def shipped_tree(name: str) -> Tree:
    """Load a shipped tree by name, e.g. ``imagenet-1k-wordnet-l3``."""
    path = taxonomies_dir() / f"{name}.json"
    if not path.is_file():
        raise NhlError(f"no shipped tree {quoted(name)}; shipped: {', '.join(shipped_tree_names())}")
    return Tree.load(path)


def _is_tree_path(spec: str | Path) -> bool:
    """Whether a TREE argument means a file (rather than a shipped tree's name)."""
    path = Path(spec)
    return path.suffix == ".json" or path.exists()


def resolve_tree(spec: str | Path) -> Tree:
    """A tree from a file path or the name of a shipped tree."""
    if not str(spec).strip():
        raise NhlError("the tree is empty; give a tree file (.json) or a shipped tree's name")
    if _is_tree_path(spec):
        return Tree.load(spec)
    return shipped_tree(str(spec))


def tree_source_file(spec: str | Path) -> Path:
    """The file a TREE argument reads (a shipped tree's own file for a name): an input that no
    output may replace."""
    if _is_tree_path(spec):
        return Path(spec)
    return taxonomies_dir() / f"{spec}.json"


def _source(kind: str, **params: Any) -> dict[str, Any]:
    return {"kind": kind, "params": params, "tool": tool_stamp()}


def build_flat_tree(entries: Sequence[ClassEntry], name: str = "") -> Tree:
    """One level: every class hangs from the root (the paper's PHL)."""
    return Tree.from_nested(
        flat_nested(entries), [e.id for e in entries], name=name, source=_source("flat", levels=1)
    )


def _imagenet_indices(entries: Sequence[ClassEntry], source: str) -> dict[str, int]:
    from nhlcli.taxonomy.classes import imagenet_classes

    index = {e.id: i for i, e in enumerate(imagenet_classes())}
    missing = [e.id for e in entries if e.id not in index]
    if missing:
        raise NhlError(
            f"the {source} source covers ImageNet-1k classes (WordNet ids such as n01440764)"
            f"{' and CIFAR-100' if source == 'superclass' else ''} only; "
            f"not ImageNet-1k: {', '.join(quoted(m) for m in missing[:5])}"
        )
    return index


def build_superclass_tree(entries: Sequence[ClassEntry], name: str = "") -> Tree:
    """Two levels from a dataset's published superclasses.

    CIFAR-100 classes get CIFAR-100's official 20 superclasses; ImageNet-1k classes get
    imagenet-superclass (each class below its direct WordNet parent, 558 groups in all).
    """
    cifar = {fine: coarse for coarse, fines in CIFAR100_SUPERCLASSES.items() for fine in fines}
    if all(e.id in cifar for e in entries):
        groups: dict[str, dict[str, Any]] = {}
        for entry in entries:
            coarse = cifar[entry.id]
            group = groups.setdefault(
                coarse, {"id": coarse, "name": coarse.replace("_", " "), "children": []}
            )
            group["children"].append(leaf_node(entry))
        root = {"id": ROOT_ID, "name": "CIFAR-100", "children": list(groups.values())}
        return Tree.from_nested(
            root, [e.id for e in entries], name=name, source=_source("superclass", levels=2, map="cifar-100")
        )
    index = _imagenet_indices(entries, "superclass")
    folder = taxonomies_dir() / "sources" / "imagenet-superclass"
    ids = (folder / "superclass.txt").read_text(encoding="utf-8").split()
    names = (folder / "superclass_names.txt").read_text(encoding="utf-8").splitlines()
    groups: dict[str, dict[str, Any]] = {}
    for entry in entries:
        i = index[entry.id]
        gid = f"superclass-{int(ids[i]):03d}"
        words = [w.strip() for w in names[i].split(",") if w.strip()]
        group = groups.setdefault(gid, {"id": gid, "name": words[0], "children": []})
        if len(words) > 1:
            group["aliases"] = words[1:]
        group["children"].append(leaf_node(entry))
    root = {"id": ROOT_ID, "name": "entity", "children": list(groups.values())}
    return Tree.from_nested(
        root,
        [e.id for e in entries],
        name=name,
        source=_source("superclass", levels=2, map="imagenet-superclass"),
    )


@lru_cache(maxsize=1)
def breeds_graph() -> tuple[nx.DiGraph, str]:
    """BREEDS' curated ImageNet hierarchy (the 'modified' version) as a graph, and its root."""
    folder = taxonomies_dir() / "sources" / "breeds-modified"
    graph = nx.DiGraph()
    for line in (folder / "node_names.txt").read_text(encoding="utf-8").splitlines():
        node, _, label = line.partition("\t")
        wnid = node if node.startswith("n") and node[1:].isdigit() else None
        words = [w.strip() for w in label.split(",") if w.strip()]
        graph.add_node(node, name=words[0] if words else node, wnid=wnid, aliases=tuple(words[1:]))
    for line in (folder / "class_hierarchy.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            parent, child = line.split()
            graph.add_edge(parent, child)
    roots = [n for n in graph if graph.in_degree(n) == 0 and graph.out_degree(n) > 0]
    return graph, roots[0]


def build_breeds_tree(
    entries: Sequence[ClassEntry], levels: int, groups: Sequence[int] | None = None, name: str = ""
) -> Tree:
    """A tree of ``levels`` levels from BREEDS' hierarchy, compressed like the WordNet source."""
    check_levels(levels)
    _imagenet_indices(entries, "breeds")
    graph, root = breeds_graph()
    in_breeds = nx.descendants(graph, root)
    concept_of = {e.id: e.id for e in entries if e.id in in_breeds}
    left_out = [e for e in entries if e.id not in concept_of]
    if left_out:
        concept_of.update(_breeds_ancestors(left_out, in_breeds | {root}, root))
    counts = check_group_counts(groups, len(entries), levels)
    nested = compress_hierarchy(graph, root, entries, concept_of, levels, counts)
    source = _source("breeds", levels=levels, groups=counts, placed_by_wordnet=sorted(e.id for e in left_out))
    return Tree.from_nested(nested, [e.id for e in entries], name=name, source=source)


def _breeds_ancestors(entries: Sequence[ClassEntry], nodes: set[str], root: str) -> dict[str, str]:
    """For classes BREEDS leaves out (110 of ImageNet-1k), their nearest WordNet ancestor in BREEDS."""
    placed = {}
    for entry in entries:
        graph, top = hypernym_graph([place_class(entry).synset])
        path = nx.shortest_path(graph, top, entry.id)
        placed[entry.id] = next((n for n in reversed(path[:-1]) if n in nodes), root)
    return placed


def wordnet_nested(
    entries: Sequence[ClassEntry], levels: int, groups: Sequence[int] | None = None
) -> tuple[dict[str, Any], list[int]]:
    """The nested tree dict of ``entries`` from WordNet hypernyms, and the group counts used."""
    placements = place_classes(entries)
    unplaced = [e.id for e in entries if placements[e.id].synset is None]
    if unplaced:
        shown = ", ".join(quoted(u) for u in unplaced[:5])
        raise NhlError(
            f"WordNet has no noun for {len(unplaced)} class(es): {shown}; give their WordNet ids "
            "(nNNNNNNNN or name.n.NN) in the class list, or use `source` hybrid"
        )
    graph, root = hypernym_graph([placements[e.id].synset for e in entries])
    concept_of = {e.id: synset_id(placements[e.id].synset) for e in entries}
    counts = check_group_counts(groups, len(entries), levels)
    return compress_hierarchy(graph, root, entries, concept_of, levels, counts), counts


def build_wordnet_tree(
    entries: Sequence[ClassEntry], levels: int, groups: Sequence[int] | None = None, name: str = ""
) -> Tree:
    """A tree of exactly ``levels`` levels from WordNet 3.0's hypernyms (nltk)."""
    check_levels(levels)
    nested, counts = wordnet_nested(entries, levels, groups)
    source = {
        "kind": "wordnet",
        "params": {"levels": levels, "groups": counts, "wordnet": "3.0"},
        "tool": tool_stamp(),
    }
    return Tree.from_nested(nested, [e.id for e in entries], name=name, source=source)


def build_emoji_tree(entries: Sequence[ClassEntry], levels: int = 3, name: str = "") -> Tree:
    """Unicode's own tree over emoji classes: group -> subgroup -> emoji (3 levels), or
    group -> emoji (2). ``entries`` are emoji classes (ids or names of the ``emoji`` preset)."""
    from nhlcli.taxonomy.emoji import emoji_glyphs, slug, unicode_version

    if levels not in (2, 3):
        raise NhlError(
            f"{levels}: Unicode's emoji tree has 2 (group) or 3 (group, subgroup) levels", "levels"
        )
    glyphs = emoji_glyphs()
    by_key = {g.id: g for g in glyphs} | {g.name.lower(): g for g in glyphs}
    by_key |= {alias.lower(): g for g in glyphs for alias in g.aliases}
    chosen = []
    for entry in entries:
        glyph = by_key.get(entry.id) or by_key.get(entry.name.lower())
        if glyph is None:
            raise NhlError(
                f"class {entry.id!r} ({entry.name}) is not an emoji of Unicode's list; use emoji ids or "
                "names from the 'emoji' class list"
            )
        chosen.append((entry, glyph))
    # a subgroup is named "subgroup cat-face"; its bare name is an alias where no class has it
    taken = {normalize_label(t) for e, g in chosen for t in (e.id, e.name, g.name, *g.aliases)}
    root: dict[str, Any] = {"id": ROOT_ID, "name": "emoji", "children": []}
    nodes: dict[str, dict[str, Any]] = {}
    for entry, glyph in chosen:
        parent = nodes.setdefault(glyph.group, {"id": slug(glyph.group), "name": glyph.group, "children": []})
        if levels == 3:
            key = f"{glyph.group}/{glyph.subgroup}"
            if key not in nodes:
                free = normalize_label(glyph.subgroup) not in taken
                nodes[key] = {
                    "id": f"subgroup:{glyph.subgroup}",
                    "name": f"subgroup {glyph.subgroup}",
                    "aliases": [glyph.subgroup] if free else [],
                    "children": [],
                }
                parent["children"].append(nodes[key])
            parent = nodes[key]
        parent["children"].append(leaf_node(entry))
    root["children"] = [node for key, node in nodes.items() if "/" not in key]
    source = _source("emoji", levels=levels, unicode=unicode_version())
    return Tree.from_nested(root, [e.id for e in entries], name=name, source=source)
