"""One entry point for every tree source, so the CLI and notebooks build trees the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import ClassEntry, class_list_path, load_class_list
from nhlcli.taxonomy.compress import check_levels
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted


@dataclass(frozen=True)
class SourceInputs:
    """What a source may need beyond the class list: LLM settings, or a flat model's class weights."""

    llm: Any = None
    class_weights: np.ndarray | None = None
    weights_name: str = ""


@dataclass(frozen=True)
class TreeSource:
    """A registry entry: how a source builds a tree and which level counts it accepts."""

    build: Callable[[Sequence[ClassEntry], int, str | None, str, SourceInputs], Tree]
    default_levels: int
    description: str
    fixed_levels: int | None = None
    takes_groups: bool = False


def _wordnet(entries, levels, groups, name, inputs):  # noqa: ANN001, ANN202 (registry adapters)
    from nhlcli.taxonomy.sources import build_wordnet_tree

    return build_wordnet_tree(entries, levels, groups, name=name)


def _superclass(entries, levels, groups, name, inputs):  # noqa: ANN001, ANN202
    from nhlcli.taxonomy.sources import build_superclass_tree

    return build_superclass_tree(entries, name=name)


def _breeds(entries, levels, groups, name, inputs):  # noqa: ANN001, ANN202
    from nhlcli.taxonomy.sources import build_breeds_tree

    return build_breeds_tree(entries, levels, groups, name=name)


def _flat(entries, levels, groups, name, inputs):  # noqa: ANN001, ANN202
    from nhlcli.taxonomy.sources import build_flat_tree

    return build_flat_tree(entries, name=name)


def _emoji(entries, levels, groups, name, inputs):  # noqa: ANN001, ANN202
    from nhlcli.taxonomy.sources import build_emoji_tree

    return build_emoji_tree(entries, levels, name=name)


def _llm_settings(inputs: SourceInputs) -> Any:
    from nhlcli.taxonomy.llm import LLMSettings

    return inputs.llm if isinstance(inputs.llm, LLMSettings) else LLMSettings()


def _llm(entries, levels, groups, name, inputs):  # noqa: ANN001, ANN202
    from nhlcli.taxonomy.llm import build_llm_tree

    return build_llm_tree(entries, levels, _llm_settings(inputs), name=name)


def _hybrid(entries, levels, groups, name, inputs):  # noqa: ANN001, ANN202
    from nhlcli.taxonomy.hybrid import build_hybrid_tree

    return build_hybrid_tree(entries, levels, _llm_settings(inputs), groups=groups, name=name)


def _induced(entries, levels, groups, name, inputs):  # noqa: ANN001, ANN202
    from nhlcli.taxonomy.induced import build_induced_tree

    if inputs.class_weights is None:
        raise NhlError(
            "the induced source needs a flat model's class weights: a flat model trained with "
            "'nhl train' and `flat` (nhlcli.model.loading.classifier_weights reads them from its file)"
        )
    return build_induced_tree(
        inputs.class_weights, entries, levels, groups, name=name, origin=inputs.weights_name
    )


# Every tree source by name: a new source is one entry here (and its builder in its own module).
TREE_SOURCES: dict[str, TreeSource] = {
    "wordnet": TreeSource(_wordnet, 3, "WordNet 3.0 hypernyms (nltk)", takes_groups=True),
    "superclass": TreeSource(_superclass, 2, "a dataset's published superclasses", fixed_levels=2),
    "breeds": TreeSource(_breeds, 3, "BREEDS' calibrated WordNet hierarchy", takes_groups=True),
    "llm": TreeSource(_llm, 3, "groups an LLM chose (cached to JSON)"),
    "hybrid": TreeSource(_hybrid, 3, "WordNet where it knows the class, an LLM elsewhere", takes_groups=True),
    "flat": TreeSource(_flat, 1, "one level: every class under the root", fixed_levels=1),
    "emoji": TreeSource(_emoji, 3, "Unicode's emoji groups and subgroups (emoji-test.txt)"),
    "induced": TreeSource(_induced, 3, "clusters of a trained flat model's class weights", takes_groups=True),
}
SOURCES = tuple(TREE_SOURCES)
DEFAULT_LEVELS = {name: source.default_levels for name, source in TREE_SOURCES.items()}


def build_tree(
    source: str,
    entries: Sequence[ClassEntry],
    levels: int | None = None,
    groups: Sequence[int] | None = None,
    name: str = "",
    llm: object | None = None,
    class_weights: np.ndarray | None = None,
    weights_name: str = "",
) -> Tree:
    """Build a tree for ``entries`` from ``source`` (a name in :data:`TREE_SOURCES`).

    ``levels`` defaults per source; ``groups`` (``"10,100"``) sets the number of groups per
    inner level for the sources that compress a hierarchy (wordnet, breeds, hybrid, induced);
    ``llm`` is an :class:`nhlcli.taxonomy.llm.LLMSettings` for the llm and hybrid sources;
    ``class_weights`` the ``[classes, features]`` classifier rows of a flat model for the
    induced source (``entries`` are then that model's classes).
    """
    if source not in TREE_SOURCES:
        raise NhlError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    spec = TREE_SOURCES[source]
    if not entries:
        raise NhlError("the class list is empty")
    levels = spec.default_levels if levels is None else levels
    check_levels(levels)
    if spec.fixed_levels is not None and levels != spec.fixed_levels:
        raise NhlError(f"the {source} source gives {counted(spec.fixed_levels, 'level')}, not {levels}")
    if groups and not spec.takes_groups:
        takes = ", ".join(n for n, s in TREE_SOURCES.items() if s.takes_groups)
        raise NhlError(f"group counts apply to the {takes} sources, not {source}")
    inputs = SourceInputs(llm=llm, class_weights=class_weights, weights_name=weights_name)
    return spec.build(entries, levels, groups, name, inputs)


def build_tree_for(
    source: str,
    classes: str | Path = "fashion-mnist",
    levels: int | None = None,
    groups: Sequence[int] | None = None,
    name: str | None = None,
    llm: object | None = None,
    classifier: tuple[np.ndarray, Sequence[ClassEntry]] | None = None,
    classifier_file: str | Path | None = None,
) -> Tree:
    """A named tree for a class list, as ``nhl hierarchy build`` writes it (``tree.save(path)``).

    ``classes``: a preset, a class-list file or an ImageFolder directory. The induced source
    clusters a flat model's classifier rows instead: ``classifier`` holds them with the model's
    classes, as :func:`nhlcli.model.loading.classifier_weights` reads them from
    ``classifier_file``. ``name`` defaults to ``<classes>-<source>-l<levels>``, changed where a
    shipped tree has that name but other content (:func:`unshipped_name`). ``levels``,
    ``groups`` and ``llm`` as in :func:`build_tree`.
    """
    if source == "induced":
        if classifier is None:
            raise NhlError(
                "the induced source clusters a flat model's classifier rows: give `classifier` "
                "(nhlcli.model.loading.classifier_weights reads them from a model file)"
            )
        weights, entries = classifier
        label = Path(classifier_file or "model").stem
    else:
        weights, entries = None, load_class_list(classes)
        class_file = class_list_path(classes) if str(classes).strip() else None
        label = class_file.stem if class_file is not None and class_file.exists() else str(classes)
    tree = build_tree(
        source,
        entries,
        levels=levels,
        groups=groups,
        name="",
        llm=llm,
        class_weights=weights,
        weights_name=Path(classifier_file).name if classifier_file else "",
    )
    tree.name = name or unshipped_name(f"{label}-{source}-l{tree.levels}", tree)
    return tree


def llm_settings(
    model: str | None = None,
    base_url: str | None = None,
    cache: str | Path | None = None,
    max_retries: int = 3,
    timeout: float = 120.0,
) -> Any:
    """The :class:`nhlcli.taxonomy.llm.LLMSettings` of the llm and hybrid sources (``model``
    defaults to gpt-4o-mini), refusing a timeout or retry count that cannot work."""
    from nhlcli.taxonomy.llm import LLMSettings

    if timeout <= 0:
        raise NhlError(f"{timeout:g}: give the seconds to wait for each LLM answer, e.g. 120", "timeout")
    if max_retries < 0:
        raise NhlError(f"{max_retries}: give 0 (no retry) or more", "max_retries")
    return LLMSettings(
        model=model or "gpt-4o-mini",
        base_url=base_url,
        cache=None if cache is None else Path(cache),
        max_retries=max_retries,
        timeout=timeout,
    )


def built_groups(tree: Tree) -> list[int]:
    """The number of groups each inner level really got (a compressing source may make more
    than ``--groups`` asked for, to keep group sizes balanced)."""
    return [len(tree.level(depth)) for depth in range(1, tree.levels)]


def requested_groups(tree: Tree) -> list[int] | None:
    """The group counts a build asked for (``--groups`` or the default), as its source records them."""
    groups = tree.source.get("params", {}).get("groups")
    return [int(g) for g in groups] if isinstance(groups, list) else None


def unshipped_name(name: str, tree: Tree) -> str:
    """``name``, unless a shipped tree has that name but other classes, parameters or nodes.

    A built tree must not pass for a shipped one: ``--groups 12,120`` on ImageNet-1k is not
    ``imagenet-1k-wordnet-l3``, so it gets the requested counts appended (``-g12-120``), or
    ``-custom`` when something other than the counts differs.
    """
    from nhlcli.taxonomy.sources import shipped_tree, shipped_tree_names

    if name not in shipped_tree_names():
        return name
    shipped = shipped_tree(name)

    def content(t: Tree) -> dict:
        data = t.to_dict()
        return {**data, "name": "", "source": {k: v for k, v in t.source.items() if k != "tool"}}

    if content(shipped) == content(tree):
        return name
    groups = requested_groups(tree)
    if groups and groups != requested_groups(shipped):
        return f"{name}-g{'-'.join(map(str, groups))}"
    return f"{name}-custom"
