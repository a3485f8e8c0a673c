"""Models by name: the kinds a file can hold, and the paper's variants as presets (like timm's registry)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from nhlcli.errors import NhlError
from nhlcli.model import DEFAULT_VARIANT
from nhlcli.model.files import damaged_metadata
from nhlcli.model.nhl import BranchConfig, FlatModel, NHLModel, TrunkFlatModel, default_widths
from nhlcli.model.trunk import TrunkConfig
from nhlcli.taxonomy.tree import Tree

MODEL_KINDS: dict[str, type[nn.Module]] = {"nhl": NHLModel, "flat": FlatModel, "flat-trunk": TrunkFlatModel}


@dataclass(frozen=True)
class Variant:
    """A named architecture of paper 003: tree depth it needs, branch widths, split point."""

    description: str
    levels: int | None = None  # required tree depth; None = any
    widths: tuple[int, ...] = ()
    later_split: bool = False
    flat: bool = False
    cut_trunk: bool = False  # flat: on the trunk an NHL model would have, not the whole network
    single_branch: bool = False
    common_output: int = 0  # every level outputs this many times the last width (identity shortcuts)
    pooled_entry: bool = False  # level 1 average-pools the trunk output by 2 ...
    pool_min_side: int = 0  # ... where that map is at least this many pixels a side
    group_size: int = 0  # channels per group of the 3x3 convolutions (0: dense)
    # no leaf-level branches: each leaf is a linear read of its parent; the levels above keep the
    # widths they have in the tree's ladder (its leaf entry dropped)
    linear_leaves: bool = False


VARIANTS: dict[str, Variant] = {
    "nhl": Variant("nested branches, one level per tree level (N2HL-N4HL; widths 128/64/32 for 3 levels)"),
    "nhl-lean": Variant(
        "NHL whose cost grows gently with the classes: every level outputs 8x the last width "
        "(identity shortcuts below level 1), level 1 pools the trunk output by 2 where it is 8 px or more",
        common_output=8,
        pooled_entry=True,
        pool_min_side=8,
    ),
    "nhl-scale": Variant(
        "NHL for many classes: the lean levels above the leaves (every level outputs 4x the last "
        "width, level 1 pools the trunk output by 2 where it is 8 px or more), and each leaf one "
        "linear read of its parent's pooled features instead of a branch of its own",
        common_output=4,
        pooled_entry=True,
        pool_min_side=8,
        linear_leaves=True,
    ),
    "phl-small": Variant("one level of parallel branches, width 32 (PHL small)", levels=1, widths=(32,)),
    "phl-big": Variant("one level of parallel branches, width 128 (PHL big)", levels=1, widths=(128,)),
    "phl-latesp": Variant(
        "PHL small with the split point one stage later (PHL lateSP)",
        levels=1,
        widths=(32,),
        later_split=True,
    ),
    "phl-1branch": Variant(
        "one sequential branch (width 128) feeding every class logit (PHL 1branch, the sequential control)",
        levels=1,
        widths=(128,),
        single_branch=True,
    ),
    "flat": Variant("the plain timm classifier (baseline)", flat=True),
    "flat-trunk": Variant(
        "the plain classifier on the NHL's trunk: the stages up to the split point, pooling, one linear "
        "layer (the control for the stages an NHL drops)",
        flat=True,
        cut_trunk=True,
    ),
}


def model_kind(meta: Mapping[str, Any], path: str | Path = "") -> Any:
    """The model class a file's ``kind`` names (its ``from_config``, ``config_problem``, ``cut_problem``)."""
    kind = meta.get("kind")
    if kind not in MODEL_KINDS:
        raise NhlError(
            f"{path or 'the file'}: unknown model kind {kind!r}; this nhl knows {', '.join(MODEL_KINDS)}"
        )
    return MODEL_KINDS[kind]


def model_from_config(meta: Mapping[str, Any], skeleton: bool = False, path: str | Path = "") -> nn.Module:
    """Rebuild a model from file metadata (weights are loaded by the caller).

    ``skeleton``: leave the large weights unallocated; the caller must then load every weight
    with ``load_state_dict(state, strict=True, assign=True)``. ``path`` names the file in errors.
    """
    model_class = model_kind(meta, path)
    problem = model_class.config_problem(meta)
    if problem:
        raise damaged_metadata(path or "the file", problem)
    return model_class.from_config(meta, skeleton=skeleton)


def create_model(
    tree: Tree,
    variant: str = DEFAULT_VARIANT,
    trunk: TrunkConfig | None = None,
    branches: BranchConfig | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model for ``tree`` from a variant name; explicit configs override the preset."""
    if variant not in VARIANTS:
        raise NhlError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    trunk = trunk or TrunkConfig()
    if spec.cut_trunk:
        return TrunkFlatModel(tree, trunk, **kwargs)
    if spec.flat:
        return FlatModel(tree, trunk, **kwargs)
    if spec.levels is not None and tree.levels != spec.levels:
        raise NhlError(
            f"variant {variant} needs a {spec.levels}-level tree but this tree has {tree.levels}; "
            "build one with 'nhl hierarchy build --source flat'"
        )
    if spec.later_split and trunk.split is None:
        trunk = replace(trunk, split=-1)  # after the last stage instead of before it
    return NHLModel(tree, trunk, variant_branches(variant, tree.levels, branches), **kwargs)


def variant_branches(variant: str, levels: int, given: BranchConfig | None = None) -> BranchConfig:
    """The branch shape of a variant for a ``levels``-deep tree; ``given`` settings (widths,
    blocks, any lean knob) win over the preset's."""
    spec = VARIANTS[variant]
    branches = given or BranchConfig()
    if not branches.widths and spec.widths:
        branches = replace(branches, widths=spec.widths)
    if spec.single_branch:
        branches = replace(branches, single_branch=True)
    if spec.linear_leaves:
        branches = replace(branches, linear_leaves=True)
        if not branches.widths:
            branches = replace(branches, widths=default_widths(levels)[:-1])
    branches = branches.resolved(levels)
    if spec.common_output and branches.widths and not given_field(given, "expansions"):
        out = branches.widths[-1] * spec.common_output
        if not given_field(given, "widths"):  # the ladder capped at the common output
            branches = replace(branches, widths=tuple(min(w, out) for w in branches.widths))
        if any(out % w for w in branches.widths):
            raise NhlError(
                f"must each divide {out} in variant {variant}, whose levels all output {out} channels "
                f"({spec.common_output}x the last width); got {', '.join(map(str, branches.widths))}",
                "widths",
            )
        branches = replace(branches, expansions=tuple(out // w for w in branches.widths))
    if spec.pooled_entry and not given_field(given, "entry_strides") and branches.widths:
        branches = replace(branches, entry_strides=(2,) + (1,) * (len(branches.widths) - 1))
        if not given_field(given, "pool_min_side"):
            branches = replace(branches, pool_min_side=spec.pool_min_side)
    if spec.group_size and not given_field(given, "group_size"):
        branches = replace(branches, group_size=spec.group_size)
    return branches.resolved(levels)


def given_field(given: BranchConfig | None, name: str) -> bool:
    """Whether the caller set ``name`` (a non-default value) in its branch config."""
    return given is not None and bool(getattr(given, name))
