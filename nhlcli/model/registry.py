"""Models by name: the kinds a file can hold, and the paper's variants as presets (like timm's registry)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhlcli.errors import NhlError
from nhlcli.model import DEFAULT_VARIANT
from nhlcli.model.contract import NhlModel
from nhlcli.model.files import damaged_metadata
from nhlcli.model.nhl import BranchConfig, FlatModel, NHLModel, TrunkFlatModel, preset_branches
from nhlcli.model.trunk import TrunkConfig
from nhlcli.taxonomy.tree import Tree

# Model classes by the ``kind`` their files record; each implements the contract (model/contract.py).
MODEL_KINDS: dict[str, type[NhlModel]] = {}


def register_kind(model_class: type[NhlModel]) -> type[NhlModel]:
    """Make a model class openable from files naming its ``kind`` (usable as a class decorator)."""
    MODEL_KINDS[model_class.kind] = model_class
    return model_class


@dataclass(frozen=True)
class Variant:
    """A named architecture: the model kind it builds and the keyword arguments it presets there
    (as timm registers its models). For the NHL kind the preset keys are ``BranchConfig`` fields,
    plus ``levels`` (the tree depth it needs), ``later_split`` (split one stage later) and the
    lean knobs ``common_output`` (every level outputs this many times the last width) and
    ``pooled_entry`` (level 1 pools the trunk output by 2)."""

    kind: str
    description: str
    preset: Mapping[str, Any] = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {}


def register_variant(name: str, kind: str, description: str, **preset: Any) -> Variant:
    """Name a preset of a model kind: ``nhl train --variant NAME`` and ``create_model(tree, NAME)``."""
    if kind not in MODEL_KINDS:
        raise NhlError(f"variant {name}: unknown model kind {kind!r}; register the kind first")
    VARIANTS[name] = Variant(kind, description, dict(preset))
    return VARIANTS[name]


for _kind in (NHLModel, FlatModel, TrunkFlatModel):
    register_kind(_kind)

register_variant(
    "nhl", "nhl", "nested branches, one level per tree level (N2HL-N4HL; widths 128/64/32 for 3 levels)"
)
register_variant(
    "nhl-lean",
    "nhl",
    "NHL whose cost grows gently with the classes: every level outputs 8x the last width "
    "(identity shortcuts below level 1), level 1 pools the trunk output by 2 where it is 8 px or more",
    common_output=8,
    pooled_entry=True,
    pool_min_side=8,
)
register_variant(
    "nhl-scale",
    "nhl",
    "NHL for many classes: the lean levels above the leaves (every level outputs 4x the last "
    "width, level 1 pools the trunk output by 2 where it is 8 px or more), and each leaf one "
    "linear read of its parent's pooled features instead of a branch of its own",
    common_output=4,
    pooled_entry=True,
    pool_min_side=8,
    linear_leaves=True,
)
register_variant(
    "phl-small", "nhl", "one level of parallel branches, width 32 (PHL small)", levels=1, widths=(32,)
)
register_variant(
    "phl-big", "nhl", "one level of parallel branches, width 128 (PHL big)", levels=1, widths=(128,)
)
register_variant(
    "phl-latesp",
    "nhl",
    "PHL small with the split point one stage later (PHL lateSP)",
    levels=1,
    widths=(32,),
    later_split=True,
)
register_variant(
    "phl-1branch",
    "nhl",
    "one sequential branch (width 128) feeding every class logit (PHL 1branch, the sequential control)",
    levels=1,
    widths=(128,),
    single_branch=True,
)
register_variant("flat", "flat", "the plain timm classifier (baseline)")
register_variant(
    "flat-trunk",
    "flat-trunk",
    "the plain classifier on the NHL's trunk: the stages up to the split point, pooling, one linear "
    "layer (the control for the stages an NHL drops)",
)
FLAT_VARIANT = "flat"  # what ``flat=True`` (``nhl train --flat``) names


def resolve_variant(variant: str | None, flat: bool = False) -> str:
    """The variant a run builds: ``flat`` names the plain classifier, nothing names the default."""
    if flat and variant not in (None, FLAT_VARIANT):
        raise NhlError(f"trains the plain classifier, not `variant` {variant}; give one of the two", "flat")
    name = FLAT_VARIANT if flat else variant or DEFAULT_VARIANT
    if name not in VARIANTS:
        raise NhlError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return name


def variant_class(name: str) -> type[NhlModel]:
    """The model class a variant builds (its capabilities: ``branch_shaped``, ``keeps_every_stage``)."""
    return MODEL_KINDS[VARIANTS[resolve_variant(name)].kind]


def model_kind(meta: Mapping[str, Any], path: str | Path = "") -> type[NhlModel]:
    """The model class a file's ``kind`` names (its ``from_config``, ``config_problem``, ``cut_problem``)."""
    kind = meta.get("kind")
    if kind not in MODEL_KINDS:
        raise NhlError(
            f"{path or 'the file'}: unknown model kind {kind!r}; this nhl knows {', '.join(MODEL_KINDS)}"
        )
    return MODEL_KINDS[kind]


def model_from_config(meta: Mapping[str, Any], skeleton: bool = False, path: str | Path = "") -> NhlModel:
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
) -> NhlModel:
    """Build a model for ``tree`` from a variant name; explicit configs override the preset."""
    spec = VARIANTS[resolve_variant(variant)]
    return MODEL_KINDS[spec.kind].from_variant(variant, spec.preset, tree, trunk, branches, **kwargs)


def variant_branches(variant: str, levels: int, given: BranchConfig | None = None) -> BranchConfig:
    """The branch shape of an NHL variant for a ``levels``-deep tree; ``given`` settings (widths,
    blocks, any lean knob) win over the preset's."""
    return preset_branches(variant, VARIANTS[variant].preset, levels, given)
