"""WordNet 3.0 through nltk: class lookup, the hypernym tree, and installing the data offline.

ImageNet class ids are WordNet 3.0 noun offsets (``n01440764`` is offset 1440764, pos n), so an
ImageNet class list needs no name matching at all.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import networkx as nx

from nhlcli.errors import NhlError
from nhlcli.paths import check_output_dir
from nhlcli.taxonomy.classes import SYNSET_NAME_RE, WNID_RE, ClassEntry
from nhlcli.taxonomy.labels import quoted

MISSING_WORDNET = (
    "WordNet data for nltk was not found: run 'python -m nltk.downloader wordnet' (online), or "
    "'nhl hierarchy setup-wordnet' to use a WordNet 3.0 dict directory such as Debian's "
    "wordnet-base package (it reads /usr/share/wordnet unless told another)"
)

# The 45 lexicographer files of WordNet 3.0 (lexnames(5WN)); nltk's reader needs this file and
# Debian's packages do not ship it.
LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
REQUIRED_DICT_FILES = ("data.noun", "index.noun", "noun.exc", "index.sense")


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` for each lexicographer file."""
    return "".join(
        f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)
    )


def default_nltk_data_dir() -> Path:
    """The first directory nltk searches (normally ``~/nltk_data``)."""
    import nltk

    return Path(nltk.data.path[0])


def setup_wordnet(source: str | Path, target: str | Path | None = None) -> Path:
    """Lay out a WordNet 3.0 dict directory the way nltk expects, adding ``lexnames``.

    ``target`` is an nltk data directory (default: the first one nltk searches); the files go to
    ``target/corpora/wordnet``. Returns that directory.
    """
    src = Path(source)
    missing = [f for f in REQUIRED_DICT_FILES if not (src / f).is_file()]
    if not src.is_dir() or missing:
        raise NhlError(
            f"{src} is not a WordNet 3.0 dict directory (missing {', '.join(missing) or 'directory'}); "
            "on Debian: apt-get install wordnet-base wordnet-sense-index, then use /usr/share/wordnet"
        )
    if target is not None and not str(target).strip():
        raise NhlError("is empty; give an nltk data directory, or none for nltk's default", "to")
    root = Path(target) if target is not None else default_nltk_data_dir()
    dest = root / "corpora" / "wordnet"
    label = "`to`" if target is not None else "nltk's data directory"
    check_output_dir(root, label=label)
    here, there = src.resolve(), dest.resolve()
    if here.is_relative_to(there) or there.is_relative_to(here):  # copying onto or into itself
        raise NhlError(
            f"{label} {root}: the copy would go to {dest}, which is or overlaps the `from` directory "
            f"{src}; choose an nltk data directory outside it"
        )
    check_output_dir(dest, inputs=[src], label=label)
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, dest / f.name)
    (dest / "lexnames").write_text(lexnames_text(), encoding="utf-8")
    wordnet_reader.cache_clear()
    return dest


@lru_cache(maxsize=1)
def wordnet_reader() -> Any:
    """nltk's WordNet 3.0 reader, loaded once; a clear :class:`NhlError` when the data is missing.

    nltk's default loader also maps WordNet onto the Open Multilingual Wordnet, which reads
    ``index.sense`` twice and doubles the load time; nhl needs WordNet 3.0 itself only, so it
    opens the reader without that mapping.
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30Reader(WordNetCorpusReader):  # type: ignore[misc]
        def map_wn(self, version: str = "wordnet") -> None:
            return None

    try:
        root = nltk.data.find("corpora/wordnet")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available"
            wordnet = WordNet30Reader(root, None)
    except (LookupError, OSError) as exc:
        raise NhlError(MISSING_WORDNET) from exc
    version = wordnet.get_version()
    if version != "3.0":
        raise NhlError(f"nhl needs WordNet 3.0 (ImageNet's ids are its offsets); nltk found {version}")
    return wordnet


def synset_at(wnid: str) -> Any | None:
    """The noun synset whose WordNet id is ``wnid`` (``n01440764``), or ``None`` when there is none.

    nltk answers an offset without a synset with a ``UserWarning`` and ``None`` (or raises for
    some): the warning would be printed above nhl's own one-line error, so it is silenced here.
    """
    with quiet_nltk():
        try:
            return wordnet_reader().synset_from_pos_and_offset("n", int(wnid[1:]))
        except NhlError:
            raise
        except Exception:  # nltk raises WordNetError or a bare Exception on some bad offsets
            return None


@contextmanager
def quiet_nltk() -> Iterator[None]:
    """nltk's lookups without its warnings: nhl reports what they mean in its own words."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def synset_id(synset: Any) -> str:
    """ImageNet-style id of a noun synset: ``n`` and the 8-digit offset."""
    return f"{synset.pos()}{synset.offset():08d}"


def synset_name(synset: Any) -> str:
    return synset.lemma_names()[0].replace("_", " ")


def synset_aliases(synset: Any) -> tuple[str, ...]:
    """The synset's other words, so its node answers to each (``selachian`` for elasmobranch)."""
    return tuple(lemma.replace("_", " ") for lemma in synset.lemma_names()[1:])


@dataclass(frozen=True)
class Placement:
    """Where WordNet puts one class: its synset, or ``None``, and whether the match is ambiguous."""

    synset: Any
    ambiguous: bool


def place_class(entry: ClassEntry) -> Placement:
    """Find a class's noun synset: by WordNet id, synset name, or (last resort) name and aliases.

    A name with several noun senses takes the most frequent one and is marked ambiguous; the
    hybrid source hands those to an LLM.
    """
    wn = wordnet_reader()
    ref = entry.wordnet
    if ref and WNID_RE.match(ref):
        synset = synset_at(ref)
        if synset is None:
            raise NhlError(
                f"class {quoted(entry.id)}: {ref} is not a WordNet 3.0 noun id; fix it in the class list"
            )
        return Placement(synset, False)
    with quiet_nltk():
        if ref and SYNSET_NAME_RE.match(ref):
            try:
                return Placement(wn.synset(ref), False)
            except Exception as exc:
                raise NhlError(
                    f"class {quoted(entry.id)}: {quoted(ref)} is not a WordNet 3.0 synset"
                ) from exc
        for label in (entry.name, entry.id, *entry.aliases):
            senses = wn.synsets(label.strip().replace(" ", "_"), pos="n")
            if senses:
                return Placement(senses[0], len(senses) > 1)
    return Placement(None, True)


def _parent(synset: Any) -> Any | None:
    """The one hypernym a synset hangs below: the deepest, so taxonomic chains win over roles."""
    parents = synset.hypernyms() + synset.instance_hypernyms()
    if not parents:
        return None
    return max(parents, key=lambda p: (p.max_depth(), p.name()))


def _add_concept(graph: nx.DiGraph, synset: Any) -> None:
    wnid = synset_id(synset)
    graph.add_node(wnid, name=synset_name(synset), wnid=wnid, aliases=synset_aliases(synset))


def hypernym_graph(synsets: Sequence[Any]) -> tuple[nx.DiGraph, str]:
    """The tree of chosen hypernyms above ``synsets``, keyed by WordNet id, and its root."""
    graph = nx.DiGraph()
    for synset in synsets:
        node = synset
        _add_concept(graph, node)
        while (up := _parent(node)) is not None:
            _add_concept(graph, up)
            if graph.has_edge(synset_id(up), synset_id(node)):
                break
            graph.add_edge(synset_id(up), synset_id(node))
            node = up
    roots = [n for n in graph if graph.in_degree(n) == 0]
    if len(roots) != 1:
        raise NhlError(f"WordNet hypernyms of these classes end in {len(roots)} roots: {roots[:3]}")
    return graph, roots[0]


def place_classes(entries: Sequence[ClassEntry]) -> dict[str, Placement]:
    return {e.id: place_class(e) for e in entries}


# ---------------------------------------------------------------------- concepts -> classes
@dataclass(frozen=True)
class Concept:
    """A WordNet noun concept and the classes of a tree below it (its hyponym closure)."""

    synset: str  # e.g. "shark.n.01"
    wnid: str  # e.g. "n01482330"
    lemmas: tuple[str, ...]
    classes: tuple[str, ...]  # class ids, in the tree's class order


def _up(synset: Any) -> list[Any]:
    return synset.hypernyms() + synset.instance_hypernyms()


@lru_cache(maxsize=4096)
def concepts_above(wnid: str) -> frozenset[str]:
    """The WordNet ids of ``wnid`` and every concept above it (all hypernym paths, not just one)."""
    synset = synset_at(wnid)
    if synset is None:
        return frozenset()
    return frozenset({wnid, *(synset_id(s) for s in synset.closure(_up))})


def _senses(name: str) -> list[Any]:
    """The noun synsets ``name`` may mean: a WordNet id, a synset name, or a word (most frequent first)."""
    wn = wordnet_reader()
    text = name.strip()
    if WNID_RE.match(text):
        synset = synset_at(text)
        return [] if synset is None else [synset]
    with quiet_nltk():
        try:
            if SYNSET_NAME_RE.match(text):
                return [wn.synset(text)]
            return wn.synsets(text.replace(" ", "_"), pos="n")
        except Exception:  # nltk's WordNetError for an unknown synset name
            return []


def covering_concepts(name: str, class_wnids: dict[str, str]) -> list[Concept]:
    """The noun senses of ``name`` that have classes of ``class_wnids`` (class id -> WordNet id)
    below them, most frequent sense first. Empty when no sense covers a class."""
    found = []
    for synset in _senses(name):
        wnid = synset_id(synset)
        covered = tuple(c for c, w in class_wnids.items() if wnid in concepts_above(w))
        if covered:
            lemmas = tuple(lemma.replace("_", " ") for lemma in synset.lemma_names())
            found.append(Concept(synset.name(), wnid, lemmas, covered))
    return found


def concept_words(class_wnids: dict[str, str]) -> list[str]:
    """Every word (lemma) of every concept above the classes: the names that would resolve."""
    ids = set().union(*(concepts_above(w) for w in class_wnids.values()))
    words = set()
    for wnid in ids:
        synset = synset_at(wnid)
        if synset is None:
            continue
        words.update(lemma.replace("_", " ").lower() for lemma in synset.lemma_names())
    return sorted(words)
