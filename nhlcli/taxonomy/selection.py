"""What a list of names means as classes of a tree: the one resolution behind every ``--classes``.

People name concepts, not the nodes that survived a tree's compression. A name resolves, in
order, to

1. a class or node of the tree (id, name, alias, WordNet id or class index): the classes below it;
2. for trees whose classes carry WordNet ids, any WordNet noun concept (a word such as ``shark``,
   a synset name ``shark.n.01`` or an id ``n01482330``): the classes in its hyponym closure,
   whether or not the concept is a node of the tree.

Names that overlap (``shark,hammerhead``) union; only a name given twice is refused. Every
resolution is kept (:meth:`Selection.to_dict`) so an expert file can record what each name meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nhlcli.errors import NhlError
from nhlcli.taxonomy.labels import normalize_label, quoted
from nhlcli.text import counted


class Tree(Protocol):
    """What a selection reads of a tree. ``Tree`` imports this module (``Tree.select``), so
    this module names the part it needs instead of importing ``Tree`` back."""

    @property
    def classes(self) -> list[str]: ...

    def node(self, node_id: str) -> Any: ...

    def leaves(self, node_id: str | None = None) -> list[str]: ...

    def resolve(self, label: str) -> str: ...

    def subtree(self, labels: Sequence[str], name: str | None = None) -> Any: ...


@dataclass(frozen=True)
class NameMatch:
    """What one name resolved to."""

    name: str
    classes: tuple[str, ...]  # class ids in the tree's class order
    node: str | None = None  # the tree node the name is, if it is one
    concept: str | None = None  # the WordNet synset it resolved through, if not a node
    other_senses: tuple[str, ...] = ()  # further senses of the word that also cover classes

    @property
    def how(self) -> str:
        """A few words on the route: ``class``, ``node n01234567`` or ``WordNet shark.n.01``."""
        if self.concept is not None and self.node is not None:
            return f"node {self.node} and WordNet {self.concept}"
        if self.concept is not None:
            return f"WordNet {self.concept}"
        if len(self.classes) == 1 and self.node == self.classes[0]:
            return "class"
        return f"node {self.node}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "classes": list(self.classes)}
        if self.node is not None:
            out["node"] = self.node
        if self.concept is not None:
            out["wordnet"] = self.concept
        if self.other_senses:
            out["other_senses"] = list(self.other_senses)
        return out


@dataclass(frozen=True)
class Selection:
    """The classes a list of names selects, and what each name resolved to."""

    matches: tuple[NameMatch, ...]
    classes: tuple[str, ...]  # the union, in the tree's class order

    def overlaps(self) -> dict[str, list[str]]:
        """Class id -> the names that covered it, for classes covered by more than one name."""
        covered: dict[str, list[str]] = {}
        for match in self.matches:
            for c in match.classes:
                covered.setdefault(c, []).append(match.name)
        return {c: names for c, names in covered.items() if len(names) > 1}

    def notes(self, tree: Tree) -> list[str]:
        """Lines a person should read: overlapping names, and words with further senses."""
        lines = []
        overlaps = self.overlaps()
        if overlaps:
            shown = "; ".join(
                f"{tree.node(c).name!r} by {' and '.join(repr(n) for n in names)}"
                for c, names in list(overlaps.items())[:4]
            )
            more = f" and {len(overlaps) - 4} more" if len(overlaps) > 4 else ""
            lines.append(
                f"{counted(len(overlaps), 'class')} named more than once, each kept once: {shown}{more}"
            )
        for match in self.matches:
            if match.node is not None and match.concept is not None:
                in_node = len(tree.leaves(match.node))
                if len(match.classes) > in_node:
                    lines.append(
                        f"{match.name!r}: node {match.node} holds {counted(in_node, 'class')} and "
                        f"WordNet's {match.concept} puts {len(match.classes) - in_node} more of this tree "
                        f"below it; all {len(match.classes)} kept (name the node by its id for its own alone)"
                    )
            if match.other_senses:
                lines.append(
                    f"{match.name!r} read as {match.concept}; it also means "
                    f"{', '.join(match.other_senses)} (give the synset name to choose)"
                )
        return lines

    def subtree(self, tree: Tree, name: str | None = None) -> Any:
        """``tree`` restricted to the selected classes (the tree of an expert)."""
        return tree.subtree(list(self.classes), name=name)

    def to_dict(self) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.matches]


def class_wordnet_ids(tree: Tree) -> dict[str, str]:
    """Class id -> WordNet id, for the classes that carry one."""
    out = {}
    for c in tree.classes:
        wnid = tree.node(c).wnid
        if wnid:
            out[c] = wnid
    return out


def resolve_name(tree: Tree, name: str) -> NameMatch:
    """The classes ``name`` means in ``tree`` (see the module docstring for the order of routes).

    A class, or a node named by its id, means exactly its classes. On a tree whose classes carry
    WordNet ids, an inner node named by a word also takes the classes WordNet puts below that
    concept elsewhere in the tree, so ``covering`` means every covering, wherever compression
    placed it.
    """
    try:
        node = tree.resolve(name)
    except NhlError as exc:
        if "ambiguous" in str(exc):
            raise
        return _concept_match(tree, name, exc)
    leaves = tuple(tree.leaves(node))
    wnids = class_wordnet_ids(tree)
    if tree.node(node).is_leaf or name.strip() == node or not wnids:
        return NameMatch(name, leaves, node=node)
    from nhlcli.taxonomy.wordnet import covering_concepts

    own = tree.node(node).wnid
    try:
        concepts = covering_concepts(own or name, wnids)
    except NhlError:  # WordNet is not installed: the tree's node alone
        return NameMatch(name, leaves, node=node)
    if not concepts:
        return NameMatch(name, leaves, node=node)
    concept = concepts[0]
    chosen = set(leaves) | set(concept.classes)
    classes = tuple(c for c in tree.classes if c in chosen)
    others = () if own else tuple(c.synset for c in concepts[1:])
    return NameMatch(name, classes, node=node, concept=concept.synset, other_senses=others)


def _concept_match(tree: Tree, name: str, unknown: NhlError) -> NameMatch:
    """A name that is no node of the tree, read as a WordNet concept over the tree's classes."""
    wnids = class_wordnet_ids(tree)
    if not wnids:
        raise unknown
    from nhlcli.taxonomy.wordnet import concept_words, covering_concepts

    try:
        concepts = covering_concepts(name, wnids)
    except NhlError as exc:  # WordNet is not installed
        raise NhlError(
            f"{unknown}; WordNet concepts such as 'shark' resolve once WordNet is installed "
            "(nhl hierarchy setup-wordnet)"
        ) from exc
    if not concepts:
        close = difflib.get_close_matches(normalize_label(name), concept_words(wnids), n=5, cutoff=0.6)
        hint = f"; closest concepts that do: {', '.join(close)}" if close else ""
        raise NhlError(
            f"{quoted(name)} is neither a class or node of this tree nor a WordNet concept above its "
            f"classes{hint}"
        )
    first = concepts[0]
    classes = tuple(c for c in tree.classes if c in set(first.classes))
    return NameMatch(name, classes, concept=first.synset, other_senses=tuple(c.synset for c in concepts[1:]))


def select(tree: Tree, names: Sequence[str], option: str = "classes") -> Selection:
    """Resolve every name and union the classes; one-line errors for an empty list, an unknown
    name (with the closest matches) and a name given twice. ``option`` is the argument the
    names came in, for the messages."""
    if isinstance(names, str):  # a string is a sequence of letters: refuse it rather than read 's','h',...
        raise NhlError(f"is the string {names!r}; pass a list of names, e.g. {names.split(',')!r}", option)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise NhlError("is empty; name the classes to keep, e.g. shark,hammerhead", option)
    seen: dict[str, str] = {}
    for name in names:
        key = normalize_label(name)
        if key in seen:
            raise NhlError(f"names {quoted(name)} twice; name each class once", option)
        seen[key] = name
    matches = tuple(resolve_name(tree, n) for n in names)
    chosen = {c for m in matches for c in m.classes}
    return Selection(matches, tuple(c for c in tree.classes if c in chosen))
