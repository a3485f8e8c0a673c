"""The nested high-level features network (NHL) and the plain timm baseline, one interface.

``NHLModel``: a timm trunk cut at the split point, then one :class:`BranchLevel` per tree level
(each node a residual bottleneck stack fed by its parent), and one logit per leaf. All leaf
logits, in the tree's class order, go into one softmax. ``FlatModel``: the same trunk family as
an ordinary timm classifier (the papers' baselines), saved in the same file format so every
comparison is like for like. ``TrunkFlatModel``: a flat classifier on the NHL's own cut trunk,
the control that separates what the branches give from what the dropped stages give.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from timm.data import resolve_model_data_config
from torch import nn

from nhlcli.errors import NhlError
from nhlcli.model.branches import BranchLevel, LeafHeads
from nhlcli.model.contract import Inference, NhlModel, forward_macs, module_device
from nhlcli.model.files import positive_int
from nhlcli.model.other import OtherHead, head_features
from nhlcli.model.slicing import SlicePlan, slice_state
from nhlcli.model.stages import HEAD_MODULES, StagedNetwork, stage_channels, stage_segments
from nhlcli.model.trunk import PretrainedLoad, Trunk, TrunkConfig, create_timm_model, probe_input_size
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted

# Branch widths by depth: the last ``levels`` of these (paper: 128, 64, 32 for three levels).
WIDTH_LADDER = (256, 128, 64, 32)


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def default_widths(levels: int) -> tuple[int, ...]:
    return WIDTH_LADDER[-levels:] if levels > 0 else ()


@dataclass(frozen=True)
class BranchConfig:
    """Branch shape per level: bottleneck width (outputs ``width * expansion``), blocks per node,
    and the lean variant's knobs (per-level expansions, pooled entries, grouped 3x3).

    ``expansions`` (default: ``expansion`` on every level) lets every level output the same
    channels, so levels below the first get identity shortcuts instead of projections;
    ``entry_strides`` (default 1) average-pools a level's input, where its smaller side is at
    least ``pool_min_side`` pixels (0: always); ``group_size`` (0: dense) is the channels per
    group of every 3x3 convolution. ``linear_leaves``: the leaf level has no branches; each leaf
    is one linear read of its parent's pooled features (level 1's leaves read the trunk's), so
    ``widths`` name the levels above the leaves and a class costs a row, not a bottleneck stack.
    """

    widths: tuple[int, ...] = ()
    blocks: int = 1
    expansion: int = 4
    single_branch: bool = False  # one branch feeds every class logit (PHL 1branch)
    expansions: tuple[int, ...] = ()
    entry_strides: tuple[int, ...] = ()
    group_size: int = 0
    pool_min_side: int = 0
    linear_leaves: bool = False

    def branch_levels(self, levels: int) -> int:
        """How many branch levels a ``levels``-deep tree gets (the leaves are none with
        ``linear_leaves``)."""
        return levels - 1 if self.linear_leaves else levels

    def resolved(self, levels: int) -> BranchConfig:
        if self.single_branch and self.linear_leaves:
            raise NhlError("a single-branch model (phl-1branch) cannot also have linear leaves")
        tree_levels, levels = levels, self.branch_levels(levels)
        widths = tuple(self.widths) or default_widths(levels)
        if len(widths) != levels:
            above = " above the leaves (its leaves are linear)" if self.linear_leaves else ""
            raise NhlError(
                f"gives {counted(len(widths), 'value')} but the tree has "
                f"{counted(levels, 'branch level')}{above}",
                "widths",
            )
        if any(w < 1 for w in widths) or self.blocks < 1:
            raise NhlError("branch widths and blocks must be positive")
        if self.single_branch and tree_levels != 1:
            raise NhlError("a single-branch model (phl-1branch) needs a flat, 1-level tree")
        expansions = tuple(self.expansions) or (self.expansion,) * levels
        strides = tuple(self.entry_strides) or (1,) * levels
        for name, values in (("expansions", expansions), ("entry strides", strides)):
            if len(values) != levels or any(v < 1 for v in values):
                raise NhlError(
                    f"branch {name} must be {counted(levels, 'positive integer')}, got {list(values)}"
                )
        if self.group_size < 0 or any(w % self.group_size for w in widths if self.group_size):
            raise NhlError(
                f"a 3x3 group size of {self.group_size} channels must divide every branch width "
                f"({', '.join(map(str, widths))})",
                "widths",
            )
        if self.pool_min_side < 0:
            raise NhlError(f"the pooling threshold must be 0 or more pixels, got {self.pool_min_side}")
        return BranchConfig(
            widths,
            self.blocks,
            self.expansion,
            self.single_branch,
            expansions,
            strides,
            self.group_size,
            self.pool_min_side,
            self.linear_leaves,
        )

    def level_outputs(self) -> tuple[int, ...]:
        """Output channels per node, level by level (of a resolved config)."""
        return tuple(w * e for w, e in zip(self.widths, self.expansions, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "widths": list(self.widths),
            "expansions": list(self.expansions),
            "entry_strides": list(self.entry_strides),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BranchConfig:
        """A file's ``branches`` section; files written before the lean knobs lack them."""
        return cls(
            tuple(data["widths"]),
            int(data["blocks"]),
            int(data["expansion"]),
            bool(data.get("single_branch", False)),
            tuple(data.get("expansions", ())),
            tuple(data.get("entry_strides", ())),
            int(data.get("group_size", 0)),
            int(data.get("pool_min_side", 0)),
            bool(data.get("linear_leaves", False)),
        )


@dataclass(frozen=True)
class InputConfig:
    """What the model expects: input size (C, H, W) and normalisation, from timm's config."""

    size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 3 or not all(_positive_int(v) for v in size):
            raise NhlError(f"input size must be 3 positive integers (channels, height, width), got {size}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputConfig:
        return cls(
            size=tuple(data["size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=data.get("interpolation", "bilinear"),
            crop_pct=float(data.get("crop_pct", 0.875)),
        )


def tree_parent_index(tree: Tree, depth: int) -> list[int] | None:
    """For each node at ``depth``, the position of its parent in level ``depth - 1``."""
    if depth == 1:
        return None
    position = {n: i for i, n in enumerate(tree.level(depth - 1))}
    return [position[tree.parent(n)] for n in tree.level(depth)]


def build_branches(
    tree: Tree, config: BranchConfig, in_channels: int, init: bool = True
) -> tuple[nn.ModuleList, LeafHeads]:
    """The branch levels and leaf heads of ``tree`` on a trunk with ``in_channels`` outputs.

    ``init=False`` leaves the weights unallocated (meta tensors), for ``load_state_dict(...,
    assign=True)``.
    """
    levels = []
    with torch.device("cpu" if init else "meta"):
        for depth, width in enumerate(config.widths, start=1):  # (none above linear leaves of a 1-level tree)
            nodes = [tree.root] if config.single_branch else tree.level(depth)
            parents = None if config.single_branch else tree_parent_index(tree, depth)
            expansion = config.expansions[depth - 1]
            levels.append(
                BranchLevel(
                    len(nodes),
                    parents,
                    in_channels,
                    width,
                    config.blocks,
                    expansion,
                    entry_stride=config.entry_strides[depth - 1],
                    group_size=config.group_size,
                    entry_min_side=config.pool_min_side,
                )
            )
            in_channels = width * expansion
        leaf_parents = None
        if config.linear_leaves:  # each leaf reads its parent (level 1's: the trunk output)
            leaf_parents = tree_parent_index(tree, tree.levels) or [0] * tree.num_classes
        heads = LeafHeads(tree.num_classes, in_channels, config.single_branch, leaf_parents)
    return nn.ModuleList(levels), heads


# The most branch parameters a model may have: 8 GB of float32 weights, ten times the largest
# paper shape at 1000 classes (nhl, 4 levels: 189 million); more is a typo like --widths 100000.
MAX_BRANCH_PARAMETERS = 2_000_000_000


def preset_branches(
    name: str, preset: Mapping[str, Any], levels: int, given: BranchConfig | None = None
) -> BranchConfig:
    """The branch shape a variant preset gives a ``levels``-deep tree; ``given`` settings
    (widths, blocks, any lean knob) win over the preset's."""
    branches = given or BranchConfig()
    if not branches.widths and preset.get("widths"):
        branches = replace(branches, widths=tuple(preset["widths"]))
    for flag in ("single_branch", "linear_leaves"):
        if preset.get(flag):
            branches = replace(branches, **{flag: True})
    if preset.get("linear_leaves") and not branches.widths:
        branches = replace(branches, widths=default_widths(levels)[:-1])
    branches = branches.resolved(levels)
    common = preset.get("common_output", 0)
    if common and branches.widths and not _given(given, "expansions"):
        out = branches.widths[-1] * common
        if not _given(given, "widths"):  # the ladder capped at the common output
            branches = replace(branches, widths=tuple(min(w, out) for w in branches.widths))
        if any(out % w for w in branches.widths):
            raise NhlError(
                f"must each divide {out} in variant {name}, whose levels all output {out} channels "
                f"({common}x the last width); got {', '.join(map(str, branches.widths))}",
                "widths",
            )
        branches = replace(branches, expansions=tuple(out // w for w in branches.widths))
    if preset.get("pooled_entry") and not _given(given, "entry_strides") and branches.widths:
        branches = replace(branches, entry_strides=(2,) + (1,) * (len(branches.widths) - 1))
        if not _given(given, "pool_min_side"):
            branches = replace(branches, pool_min_side=preset.get("pool_min_side", 0))
    if preset.get("group_size") and not _given(given, "group_size"):
        branches = replace(branches, group_size=preset["group_size"])
    return branches.resolved(levels)


def _given(given: BranchConfig | None, name: str) -> bool:
    """Whether the caller set ``name`` (a non-default value) in its branch config."""
    return given is not None and bool(getattr(given, name))


def check_branch_size(tree: Tree, config: BranchConfig, in_channels: int) -> None:
    """Refuse branches too large to allocate, counted on unallocated (meta) tensors first, so that
    ``widths=(100000, 100000)`` is a one-line error instead of gigabytes allocated or a crash."""
    try:
        levels, heads = build_branches(tree, config, in_channels, init=False)
        count = sum(p.numel() for module in (levels, heads) for p in module.parameters())
    except (RuntimeError, OverflowError, ValueError, TypeError):  # sizes beyond what a tensor can have
        count = None
    if count is not None and count <= MAX_BRANCH_PARAMETERS:
        return
    if count is None:
        size = "more parameters than a tensor can hold"
    else:
        size = f"{count:,} parameters ({count * 4 / 1e9:,.0f} GB of float32 weights)"
    raise NhlError(
        f"{','.join(map(str, config.widths))} would give the branches {size}; at most "
        f"{MAX_BRANCH_PARAMETERS:,} ({MAX_BRANCH_PARAMETERS * 4 / 1e9:.0f} GB) are built: give smaller "
        f"widths (the default is {','.join(map(str, default_widths(tree.levels)))}) or fewer `blocks`",
        "widths",
    )


class NHLModel(NhlModel):
    """Trunk + nested branches; ``forward`` returns one logit per class in ``tree.classes`` order."""

    kind = "nhl"
    branch_shaped = True
    cut_problem: str | None = None  # experts are cut from NHL models

    def __init__(
        self,
        tree: Tree,
        trunk: TrunkConfig | None = None,
        branches: BranchConfig | None = None,
        input_config: InputConfig | None = None,
        pretrained: bool = False,
        pretrained_file: str | Path | None = None,
        init_branches: bool = True,
    ) -> None:
        """``init_branches=False`` leaves the branch weights unallocated (meta tensors): a skeleton
        for ``load_state_dict(..., assign=True)``, so loading or cutting a 1000-class model does not
        first initialise weights it then overwrites."""
        super().__init__()
        self.tree = tree
        self.trunk = Trunk(trunk or TrunkConfig(), pretrained=pretrained, pretrained_file=pretrained_file)
        self.branch_config = (branches or BranchConfig()).resolved(tree.levels)
        self._input_config = input_config or input_from_timm(self.trunk, self.trunk.config.in_chans)
        if init_branches:
            check_branch_size(tree, self.branch_config, self.trunk.out_channels)
        self.levels, self.heads = build_branches(
            tree, self.branch_config, self.trunk.out_channels, init=init_branches
        )
        leaf_position = {c: i for i, c in enumerate(tree.level(tree.levels))}
        self.register_buffer(
            "class_to_leaf",
            torch.tensor([leaf_position[c] for c in tree.classes], dtype=torch.long),
            persistent=False,
        )
        self.other: OtherHead | None = None  # an expert's "none of my classes" test (model/other.py)

    @property
    def input_config(self) -> InputConfig:
        return self._input_config

    @input_config.setter
    def input_config(self, config: InputConfig) -> None:
        """A new input size is tried on the trunk first: a backbone that cannot take it (a
        transformer with a fixed patch grid, too few pixels) fails here in one line."""
        if tuple(config.size) != tuple(self._input_config.size):
            probe_input_size(self.trunk, self.trunk.config.backbone, config.size)
        self._input_config = config

    @property
    def pretrained_load(self) -> PretrainedLoad | None:
        """What ``pretrained_file`` gave the trunk (``None`` without one)."""
        return self.trunk.pretrained_load

    @property
    def attention_problem(self) -> str | None:
        """Why top-down attention cannot steer this model (``None``: it can)."""
        if self.branch_config.single_branch:
            return (
                "this phl-1branch model has one branch shared by all classes; attention needs "
                "per-class branches (any other variant)"
            )
        return None

    def forward(self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits ``[B, num_classes]``; ``attention`` maps a level (1-based) to per-node scales."""
        return self.forward_branches(self.trunk(x), attention)

    def forward_branches(
        self,
        features: torch.Tensor,
        attention: Mapping[int, torch.Tensor] | None = None,
        pooled: list[torch.Tensor] | None = None,
        maps: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Trunk output -> logits: every branch level, then the leaf heads in class order.
        ``pooled`` collects the globally pooled trunk output and every level's (the other head's
        input); ``maps`` the trunk output and every level's output themselves (what grafted
        branches read)."""
        if pooled is not None:
            pooled.append(features.mean(dim=(2, 3)))
        if maps is not None:
            maps.append(features)
        for depth, level in enumerate(self.levels, start=1):
            scale = attention.get(depth) if attention else None
            features = level(features, scale=scale)
            if pooled is not None:
                pooled.append(features.mean(dim=(2, 3)))
            if maps is not None:
                maps.append(features)
        leaf_scale = None  # linear leaves: the leaf level's attention scales each leaf's read
        if attention and self.branch_config.linear_leaves:
            leaf_scale = attention.get(self.tree.levels)
        return self.heads(features, leaf_scale).index_select(1, self.class_to_leaf)

    def config(self) -> dict[str, Any]:
        config = {
            "kind": self.kind,
            "trunk": self.trunk.config.to_dict(),
            "branches": self.branch_config.to_dict(),
            "tree": self.tree.to_dict(),
            "input": self.input_config.to_dict(),
        }
        if self.other is not None:
            config["other"] = self.other.spec.to_dict()
        return config

    # -- the "other" answer (model/other.py) ------------------------------------------------------
    def attach_other(self, head: OtherHead | None) -> None:
        self.other = head

    @property
    def has_other(self) -> bool:
        return self.other is not None

    def other_features(
        self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and, in the same pass, the other head's input features."""
        pooled: list[torch.Tensor] = []
        logits = self.forward_branches(self.trunk(x), attention, pooled)
        return logits, head_features(pooled, logits)

    def other_scores(
        self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and each image's "one of mine" score (higher: more likely)."""
        if self.other is None:
            raise NhlError("this model has no other head; cut the expert with `other`")
        logits, features = self.other_features(x, attention)
        return logits, self.other(features)

    @property
    def graft_problem(self) -> str | None:  # type: ignore[override]
        if self.branch_config.single_branch:
            return (
                "is a phl-1branch model, whose classes share one branch; grafting needs per-class "
                "branches (any other variant)"
            )
        if self.other is not None:
            return (
                "has an other head fitted to its old classes; graft onto the model the expert was cut "
                "from, then cut the expert again with `other`"
            )
        return None

    @property
    def gating_problem(self) -> str | None:  # type: ignore[override]
        if self.other is not None:
            return (
                "has an other head, which gated inference would skip; fit gates on the expert cut "
                "without `other`"
            )
        return None

    def infer(
        self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None, count_macs: bool = True
    ) -> Inference:
        """As every kind's, plus, with an other head, which images answer "other"."""
        if self.other is None:
            return super().infer(x, attention, count_macs)
        logits, scores = self.other_scores(x, attention)
        n = x.shape[0]
        macs = None
        if count_macs:
            per_image = self.other_macs_per_image(tuple(x.shape[1:]))
            macs = torch.full((n,), float(per_image), dtype=torch.float64)
        return Inference(logits, torch.zeros(n, dtype=torch.long, device=logits.device), macs,
                         other=self.other.rejects(scores))  # fmt: skip

    def other_macs_per_image(self, shape: tuple[int, ...]) -> int:
        """MACs of one image through the network and the other head (logits and score)."""
        cache: dict[tuple[int, ...], int] = self.__dict__.setdefault("_other_macs_per_shape", {})
        if shape not in cache:
            probe = torch.zeros(1, *shape, device=module_device(self))
            cache[shape] = forward_macs(lambda t: self.other_scores(t)[1], probe)[0]
        return cache[shape]

    def export_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.other is None:
            return super().export_outputs(x)
        return self.other_scores(x)

    def export_output_names(self) -> list[str]:
        return ["logits"] if self.other is None else ["logits", "mine_score"]

    def export_metadata(self) -> dict[str, Any]:
        if self.other is None:
            return {}
        return {
            "other_threshold": self.other.spec.threshold,
            "other": "an image whose mine_score is below other_threshold is none of the classes",
        }

    @staticmethod
    def config_problem(meta: Mapping[str, Any]) -> str | None:
        """What is wrong with the NHL-only part of a file's metadata (``None``: nothing)."""
        branches = meta.get("branches")
        if branches is None:
            return "the key 'branches' is missing"
        if not isinstance(branches, dict):
            return "'branches' is not an object"
        widths = branches.get("widths")
        linear_leaves = branches.get("linear_leaves", False)  # a 1-level tree then has no branch level
        if not (
            isinstance(widths, list)
            and (widths or linear_leaves is True)
            and all(positive_int(w) for w in widths)
        ):
            return f"'branches.widths' must be a list of positive integers, got {widths!r}"
        for key in ("blocks", "expansion"):
            if not positive_int(branches.get(key)):
                return f"'branches.{key}' must be a positive integer, got {branches.get(key)!r}"
        for key in ("expansions", "entry_strides"):
            values = branches.get(key, [])
            if not (isinstance(values, list) and all(positive_int(v) for v in values)):
                return f"'branches.{key}' must be a list of positive integers, got {values!r}"
            if values and len(values) != len(widths):
                return f"'branches.{key}' has {len(values)} entries for {len(widths)} levels"
        if not isinstance(branches.get("linear_leaves", False), bool):
            return f"'branches.linear_leaves' must be true or false, got {branches.get('linear_leaves')!r}"
        for key in ("group_size", "pool_min_side"):
            value = branches.get(key, 0)
            if not (value == 0 or positive_int(value)) or isinstance(value, bool):
                return f"'branches.{key}' must be 0 or a positive integer, got {value!r}"
        group_size = branches.get("group_size", 0)
        if group_size and any(w % group_size for w in widths):
            return f"'branches.group_size' {group_size} does not divide every width {widths}"
        return None

    @classmethod
    def from_config(cls, meta: Mapping[str, Any], skeleton: bool = False) -> NHLModel:
        """The model a file's metadata describes; ``skeleton`` leaves the branch weights
        unallocated (the caller loads every weight with ``assign=True``)."""
        return cls(
            Tree.from_dict(meta["tree"]),
            TrunkConfig(**meta["trunk"]),
            BranchConfig.from_dict(meta["branches"]),
            InputConfig.from_dict(meta["input"]),
            init_branches=not skeleton,
        )

    @classmethod
    def from_variant(
        cls,
        name: str,
        preset: Mapping[str, Any],
        tree: Tree,
        trunk: TrunkConfig | None = None,
        branches: BranchConfig | None = None,
        **kwargs: Any,
    ) -> NHLModel:
        """An NHL model shaped by the preset: the tree depth it needs, the split one stage later,
        the branch shape (explicit ``branches`` settings win over the preset's)."""
        levels = preset.get("levels")
        if levels is not None and tree.levels != levels:
            raise NhlError(
                f"variant {name} needs a {levels}-level tree but this tree has {tree.levels}; "
                "build one with 'nhl hierarchy build' and `source` flat"
            )
        trunk = trunk or TrunkConfig()
        if preset.get("later_split") and trunk.split is None:
            trunk = replace(trunk, split=-1)  # after the last stage instead of before it
        return cls(tree, trunk, preset_branches(name, preset, tree.levels, branches), **kwargs)

    @classmethod
    def cut_plan(cls, meta: Mapping[str, Any], parent: Tree, expert: Tree) -> SlicePlan:
        """An expert keeps the branches on its classes' paths: their rows of every level."""
        return SlicePlan.build(parent, expert, bool(meta["branches"].get("single_branch", False)))

    def sliced_branches(self, kept: Tree) -> tuple[nn.ModuleList, nn.Module]:
        """The branch levels and leaf heads for the classes of ``kept`` only (no trunk): what
        routing runs for the groups an image is sent to."""
        plan = SlicePlan.build(self.tree, kept, self.branch_config.single_branch)
        levels, heads = build_branches(kept, self.branch_config, self.trunk.out_channels, init=False)
        levels.load_state_dict(slice_state(self.state_dict(), plan, "levels."), assign=True)
        heads.load_state_dict(slice_state(self.state_dict(), plan, "heads."), assign=True)
        return levels.train(self.training), heads.train(self.training)

    def staged(self) -> StagedNetwork:
        """The trunk's stages up to the split point, then every branch as the last segment:
        exits may follow any of these stages, routing picks among the level-1 branches."""
        timm_model, backbone = self.trunk.model, self.trunk.config.backbone
        stages, _ = stage_segments(timm_model, backbone, self.trunk.config.split)
        single = self.branch_config.single_branch
        return StagedNetwork(
            stages,
            _Branches(self),
            stage_channels(timm_model, len(stages)),
            backbone,
            last_exit=len(stages) - 1,
            last_exit_name="the split point",
            route_problem="routing needs per-node branches; a single-branch model (phl-1branch) has one"
            if single
            else None,
        )

    def freeze_trunk(self, split: int | None = None) -> list[str]:
        """Freeze the whole trunk (it ends at the split point already): only the branches train."""
        self.trunk.freeze()
        return [f"trunk.{name}" for name, _ in self.trunk.named_parameters()]

    def parameter_groups(self) -> dict[str, int]:
        """Parameter counts: total, trunk, branches (levels and leaf heads)."""
        trunk = sum(p.numel() for p in self.trunk.parameters())
        branches = sum(p.numel() for p in self.levels.parameters()) + sum(
            p.numel() for p in self.heads.parameters()
        )
        return {"total": trunk + branches, "trunk": trunk, "branches": branches}


class FlatModel(NhlModel):
    """A plain timm classifier over the tree's classes (the papers' baselines), same file format."""

    kind = "flat"
    keeps_every_stage = True
    cut_problem: str | None = (
        "is a flat model, which has no per-class branches to cut; train an NHL model ('nhl train' "
        "without `flat`), or evaluate the flat model on your classes ('nhl eval' with `classes`)"
    )
    attention_problem: str | None = (
        "top-down attention needs an NHL model; a flat model has no per-class branches"
    )

    def __init__(
        self,
        tree: Tree,
        trunk: TrunkConfig | None = None,
        input_config: InputConfig | None = None,
        pretrained: bool = False,
        pretrained_file: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        timm_model = self.build_network(trunk or TrunkConfig(), pretrained, pretrained_file)
        self._input_config = input_config or input_from_timm(timm_model, self.trunk_config.in_chans)

    def build_network(
        self, trunk: TrunkConfig, pretrained: bool, pretrained_file: str | Path | None
    ) -> nn.Module:
        """The whole timm network with its classifier reset to the tree's classes; subclasses
        build other networks here and share the rest of ``__init__``. Returns the timm model the
        input config is read from."""
        self.trunk_config = TrunkConfig(trunk.backbone, None, trunk.in_chans)
        self.model = create_timm_model(trunk.backbone, trunk.in_chans, pretrained, pretrained_file)
        self._pretrained_load: PretrainedLoad | None = getattr(self.model, "nhl_pretrained_load", None)
        self.model.reset_classifier(self.tree.num_classes)
        return self.model

    @property
    def pretrained_load(self) -> PretrainedLoad | None:
        """What ``pretrained_file`` gave the network (``None`` without one)."""
        return self._pretrained_load

    @property
    def input_config(self) -> InputConfig:
        return self._input_config

    @input_config.setter
    def input_config(self, config: InputConfig) -> None:
        """A new input size is tried on the network first (see ``NHLModel.input_config``)."""
        if tuple(config.size) != tuple(self._input_config.size):
            probe_input_size(self, self.trunk_config.backbone, config.size)
        self._input_config = config

    def forward(self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        if attention:
            raise NhlError("top-down attention needs an NHL model; a flat model has no class branches")
        return self.model(x)

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "trunk": self.trunk_config.to_dict(),
            "tree": self.tree.to_dict(),
            "input": self.input_config.to_dict(),
        }

    @classmethod
    def from_config(cls, meta: Mapping[str, Any], skeleton: bool = False) -> FlatModel:
        """The model a file's metadata describes (a timm classifier is small: ``skeleton`` is moot)."""
        return cls(
            Tree.from_dict(meta["tree"]), TrunkConfig(**meta["trunk"]), InputConfig.from_dict(meta["input"])
        )

    def staged(self) -> StagedNetwork:
        """Every stage, then the rest of the network and timm's ``forward_head``; an exit after
        the last stage would stop where the model stops, so exits end one stage earlier."""
        backbone = self.trunk_config.backbone
        stages, rest = stage_segments(self.model, backbone, skip=HEAD_MODULES)
        return StagedNetwork(
            stages,
            _Head(self.model, rest),
            stage_channels(self.model, len(stages)),
            backbone,
            last_exit=len(stages) - 2,
            last_exit_name="the last stage",
            route_problem="routing needs an NHL model: a flat model has no tree of branches to route through",
        )

    def freeze_trunk(self, split: int | None = None) -> list[str]:
        """Freeze the layers an NHL trunk cut at ``split`` would hold (default: every stage but
        the last), so a frozen-trunk flat baseline trains the same part of the network as an
        NHL model on that trunk: the last stage and the classifier. Frozen layers keep their
        normalisation statistics. Returns the frozen parameter names."""
        from nhlcli.model.trunk import Trunk

        trunk = Trunk(TrunkConfig(self.trunk_config.backbone, split, self.trunk_config.in_chans))
        names = {name for name, _ in trunk.model.named_parameters()}
        frozen = []
        for name, param in self.model.named_parameters():
            if name in names:
                param.requires_grad_(False)
                frozen.append(name)
        self._frozen_modules = []
        for module in self.model.modules():
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                self._frozen_modules.append(module)
        self.train(self.training)
        return frozen

    def train(self, mode: bool = True) -> FlatModel:
        super().train(mode)
        for module in getattr(self, "_frozen_modules", ()):
            module.eval()
        return self

    def classifier(self) -> nn.Module:
        """The layer that maps features to class logits."""
        return self.model.get_classifier()

    def class_weight_rows(self) -> torch.Tensor:
        """The classifier's weight rows: what an induced tree clusters."""
        return self.classifier().weight

    def parameter_groups(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.model.parameters())
        head = sum(p.numel() for p in self.classifier().parameters())
        return {"total": total, "trunk": total - head, "branches": head}


class TrunkFlatModel(FlatModel):
    """A flat classifier on an NHL trunk: the timm stages up to the split point, global average
    pooling and one linear layer (timm's ``ClassifierHead``). The control for an NHL's savings:
    how much of them the dropped stages alone give, with no branches."""

    kind = "flat-trunk"
    keeps_every_stage = False

    def build_network(
        self, trunk: TrunkConfig, pretrained: bool, pretrained_file: str | Path | None
    ) -> nn.Module:
        """The timm stages up to the split point and a pooled linear head."""
        from timm.layers import ClassifierHead

        self.trunk = Trunk(trunk, pretrained, pretrained_file)
        self.trunk_config = self.trunk.config
        self._pretrained_load = self.trunk.pretrained_load
        self.head = ClassifierHead(self.trunk.out_channels, self.tree.num_classes, pool_type="avg")
        return self.trunk.model

    def forward(self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        if attention:
            raise NhlError(self.attention_problem)
        return self.head(self.trunk(x))

    @staticmethod
    def config_problem(meta: Mapping[str, Any]) -> str | None:
        """The trunk must say where it is cut."""
        split = meta.get("trunk", {}).get("split")
        if isinstance(split, numbers.Integral) and not isinstance(split, bool) and split >= 0:
            return None
        return f"'trunk.split' is {split!r}, expected the stage the trunk is cut after"

    def classifier(self) -> nn.Linear:
        return self.head.fc

    def staged(self) -> StagedNetwork:
        """The trunk's stages, then pooling and the linear layer; like the plain classifier, exits
        end one stage before the model does."""
        timm_model, backbone = self.trunk.model, self.trunk_config.backbone
        stages, _ = stage_segments(timm_model, backbone, self.trunk_config.split)
        return StagedNetwork(
            stages,
            self.head,
            stage_channels(timm_model, len(stages)),
            backbone,
            last_exit=len(stages) - 2,
            last_exit_name="the stage before the split point",
            route_problem="routing needs an NHL model: a flat model has no tree of branches to route through",
        )

    def freeze_trunk(self, split: int | None = None) -> list[str]:
        """Freeze the whole (cut) trunk: only the linear layer trains."""
        self.trunk.freeze()
        return [f"trunk.{name}" for name, _ in self.trunk.named_parameters()]

    def parameter_groups(self) -> dict[str, int]:
        trunk = sum(p.numel() for p in self.trunk.parameters())
        head = sum(p.numel() for p in self.head.parameters())
        return {"total": trunk + head, "trunk": trunk, "branches": head}


def input_from_timm(model: nn.Module, in_chans: int) -> InputConfig:
    """The input size and normalisation timm records for a backbone
    (``timm.data.resolve_model_data_config``), for ``in_chans`` channels."""
    cfg = resolve_model_data_config(model)
    size, mean, std = tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"])
    if in_chans != len(mean):  # e.g. grey images: one channel with the average statistics
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return InputConfig(
        size=(in_chans, int(size[1]), int(size[2])),
        mean=mean,
        std=std,
        interpolation=cfg["interpolation"],
        crop_pct=float(cfg["crop_pct"]),
    )


def with_input_size(config: InputConfig, size: int | Sequence[int]) -> InputConfig:
    """The same normalisation at another input resolution (``--input-size``).

    Refuses sizes below 1 pixel here, so that no caller turns 0 into "the default" by accident.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if not all(_positive_int(v) for v in (h, w)):
        raise NhlError(f"must be a positive number of pixels, got {size}", "input_size")
    return InputConfig(
        (config.size[0], int(h), int(w)), config.mean, config.std, config.interpolation, config.crop_pct
    )


class _Branches(nn.Module):
    """An NHL model's branches and leaf heads: trunk output -> logits."""

    def __init__(self, model: NHLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_branches(features)


class _Head(nn.Module):
    """What follows a flat model's last stage: leftover modules, then timm's ``forward_head``."""

    def __init__(self, timm_model: nn.Module, rest: Sequence[nn.Module]) -> None:
        super().__init__()
        self.rest = nn.Sequential(*rest)
        self.timm_model = timm_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.timm_model.forward_head(self.rest(x))
