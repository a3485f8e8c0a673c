"""One entry point for every tree source, so the CLI and notebooks build trees the same way."""

from __future__ import annotations

from collections.abc import Sequence

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.compress import check_levels
from nhlcli.taxonomy.tree import Tree, counted

SOURCES = ("wordnet", "superclass", "breeds", "llm", "hybrid", "flat", "induced")
DEFAULT_LEVELS = {"wordnet": 3, "superclass": 2, "breeds": 3, "llm": 3, "hybrid": 3, "flat": 1, "induced": 3}
FIXED_LEVELS = {"superclass": 2, "flat": 1}


def build_tree(
    source: str,
    entries: Sequence[ClassEntry],
    levels: int | None = None,
    groups: str | None = None,
    name: str = "",
    llm: object | None = None,
    model_file: str | None = None,
) -> Tree:
    """Build a tree for ``entries`` from ``source`` (one of :data:`SOURCES`).

    ``levels`` defaults per source; ``groups`` (``"10,100"``) sets the number of groups per
    inner level for the sources that compress a hierarchy (wordnet, breeds, hybrid); ``llm`` is
    an :class:`nhlcli.taxonomy.llm.LLMSettings` for the llm and hybrid sources; ``model_file``
    the trained flat model the induced source clusters (its classes replace ``entries``).
    """
    if source not in SOURCES:
        raise NhlError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if source != "induced" and not entries:
        raise NhlError("the class list is empty")
    levels = DEFAULT_LEVELS[source] if levels is None else levels
    check_levels(levels)
    if source in FIXED_LEVELS and levels != FIXED_LEVELS[source]:
        raise NhlError(f"the {source} source gives {counted(FIXED_LEVELS[source], 'level')}, not {levels}")
    if groups and source not in ("wordnet", "breeds", "hybrid", "induced"):
        raise NhlError(f"--groups applies to the wordnet, breeds, hybrid and induced sources, not {source}")
    if source == "induced":
        from nhlcli.taxonomy.induced import build_induced_tree

        if not model_file:
            raise NhlError(
                "the induced source needs --model FILE: a flat model trained with 'nhl train --flat'"
            )
        return build_induced_tree(model_file, levels, groups, name=name)
    if source == "wordnet":
        from nhlcli.taxonomy.wordnet import build_wordnet_tree

        return build_wordnet_tree(entries, levels, groups, name=name)
    if source == "superclass":
        from nhlcli.taxonomy.sources import build_superclass_tree

        return build_superclass_tree(entries, name=name)
    if source == "breeds":
        from nhlcli.taxonomy.sources import build_breeds_tree

        return build_breeds_tree(entries, levels, groups, name=name)
    if source == "flat":
        from nhlcli.taxonomy.sources import build_flat_tree

        return build_flat_tree(entries, name=name)
    from nhlcli.taxonomy.llm import LLMSettings

    settings = llm if isinstance(llm, LLMSettings) else LLMSettings()
    if source == "llm":
        from nhlcli.taxonomy.llm import build_llm_tree

        return build_llm_tree(entries, levels, settings, name=name)
    from nhlcli.taxonomy.hybrid import build_hybrid_tree

    return build_hybrid_tree(entries, levels, settings, groups=groups, name=name)


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
