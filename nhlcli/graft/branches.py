"""The new classes' branches, trained beside a frozen model, then merged into the grown model.

:class:`GraftBranches` holds only the new nodes of each level (stacked like any
:class:`~nhlcli.model.branches.BranchLevel`) and the new leaves. It reads the frozen model's
level outputs, computed in eval mode without autograd: a new node under an old parent reads that
parent's features exactly as the grown model will, BatchNorm statistics included. So the trunk
and every old branch are untouched by construction (no gradient masks, no optimizer state on
them), and BatchNorm trains on the new nodes alone.

:func:`merge` then writes each new row into its place in the grown model's stacked tensors (the
node dimension is first in every state tensor, the contract expert cutting relies on); old rows
are copied, never recomputed, so every old class's logit is the old model's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nhlcli.errors import NhlError
from nhlcli.model.branch_kernels import select_groups
from nhlcli.model.branches import BranchLevel, LeafHeads
from nhlcli.model.nhl import NHLModel
from nhlcli.taxonomy.tree import Tree

__all__ = ["GraftBranches", "frozen_forward", "merge", "level_rows"]


def level_rows(old: Tree, grown: Tree, depth: int) -> tuple[list[int], list[int]]:
    """Positions in the grown tree's level ``depth`` of the old nodes (in the old level's order)
    and of the new nodes (in the grown order)."""
    position = {n: i for i, n in enumerate(grown.level(depth))}
    old_nodes = old.level(depth)
    kept = set(old_nodes)
    return [position[n] for n in old_nodes], [i for n, i in position.items() if n not in kept]


def _parents(old: Tree, grown: Tree, depth: int, new_nodes: Sequence[str]) -> tuple[list[int], list[int]]:
    """For new nodes at ``depth``: the old parents they read (positions in the old level above),
    and each node's index into ``[those old parents..., new nodes of the level above]``."""
    above_old = {n: i for i, n in enumerate(old.level(depth - 1))}
    above_new = [n for n in grown.level(depth - 1) if n not in above_old]
    parents = [grown.parent(n) for n in new_nodes]
    old_read = sorted({above_old[p] for p in parents if p in above_old})
    slot = {p: i for i, p in enumerate(old_read)}
    index = [slot[above_old[p]] if p in above_old else len(old_read) + above_new.index(p) for p in parents]
    return old_read, index


class GraftBranches(nn.Module):
    """The new nodes of every level and the new leaves; ``forward`` gives the new classes'
    logits (in class order) from the frozen model's level outputs."""

    def __init__(self, model: NHLModel, grown: Tree) -> None:
        super().__init__()
        config = model.branch_config
        if config.single_branch:
            raise NhlError("a single-branch model (phl-1branch) has no per-class branches to graft onto")
        old = model.tree
        self.levels = nn.ModuleDict()
        self._reads: dict[int, tuple[list[int], list[int] | None]] = {}
        in_channels = model.trunk.out_channels
        for depth, width in enumerate(config.widths, start=1):
            old_level = set(old.level(depth))
            new_nodes = [n for n in grown.level(depth) if n not in old_level]
            if new_nodes:
                old_read, index = ([], None) if depth == 1 else _parents(old, grown, depth, new_nodes)
                self._reads[depth] = (old_read, index)
                self.levels[str(depth)] = BranchLevel(
                    len(new_nodes),
                    index,
                    in_channels,
                    width,
                    config.blocks,
                    config.expansions[depth - 1],
                    entry_stride=config.entry_strides[depth - 1],
                    group_size=config.group_size,
                    entry_min_side=config.pool_min_side,
                )
            in_channels = width * config.expansions[depth - 1]
        leaves = grown.levels
        old_classes = set(old.classes)
        new_leaves = [n for n in grown.level(leaves) if n not in old_classes]
        self._leaf_reads: tuple[list[int], list[int]] | None = None
        if config.linear_leaves:  # each new leaf reads its parent's pooled features
            if leaves == 1:
                self._leaf_reads, index = ([0], [0] * len(new_leaves))
            else:
                self._leaf_reads = _parents(old, grown, leaves, new_leaves)
                index = self._leaf_reads[1]
            self.heads = LeafHeads(len(new_leaves), in_channels, parent_index=index)
        else:  # each new leaf reads its own branch (the leaf level above)
            self.heads = LeafHeads(len(new_leaves), in_channels)
        with torch.no_grad():  # new classes start neutral: every image scores them as an average class
            self.heads.weight.zero_()
            self.heads.bias.fill_(float(model.heads.bias.mean()))
        order = {n: i for i, n in enumerate(new_leaves)}
        self.register_buffer(
            "class_to_leaf",
            torch.tensor([order[c] for c in grown.classes[old.num_classes :]]),
            persistent=False,
        )
        self.depths = len(config.widths)
        self.old_nodes = [len(old.level(d)) for d in range(1, self.depths + 1)]

    def _input(self, frozen: Tensor, new: Tensor | None, old_read: list[int], groups: int) -> Tensor:
        """The old parents' maps a level reads, then the new level above's."""
        parts = []
        if old_read:
            index = torch.tensor(old_read, device=frozen.device)
            parts.append(select_groups(frozen, groups, index))
        if new is not None:
            parts.append(new.to(frozen.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        """``maps``: the frozen trunk output, then every old level's output (:func:`frozen_forward`)."""
        new: Tensor | None = None
        for depth in range(1, self.depths + 1):
            level = self.levels[str(depth)] if str(depth) in self.levels else None  # noqa: SIM401
            if level is None:
                new = None
                continue
            old_read, index = self._reads[depth]
            x = (
                maps[0]
                if index is None
                else self._input(maps[depth - 1], new, old_read, self.old_nodes[depth - 2])
            )
            new = level(x)
        if self._leaf_reads is None:  # each new leaf reads its own branch (the last level)
            x = new
        elif self.depths == 0:  # linear leaves of a 1-level tree: every leaf reads the trunk
            x = maps[0]
        else:  # linear leaves: each reads its parent's features, old or new
            x = self._input(maps[self.depths], new, self._leaf_reads[0], self.old_nodes[-1])
        return self.heads(x).index_select(1, self.class_to_leaf)


def frozen_forward(model: NHLModel, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """The model's trunk output and every level's output, and its logits (eval, no autograd)."""
    maps: list[Tensor] = []
    with torch.no_grad():
        logits = model.forward_branches(model.trunk(x), maps=maps)
    return maps, logits


def merge(model: NHLModel, grown: Tree, graft: GraftBranches) -> NHLModel:
    """The grown model: the old model's weights with the graft's new rows in place."""
    result = NHLModel(grown, model.trunk.config, model.branch_config, model.input_config, init_branches=False)
    old_state, new_state = model.state_dict(), graft.state_dict()
    state: dict[str, Tensor] = {}
    rows: dict[int, tuple[list[int], list[int]]] = {}  # per depth: where the old and new rows go
    for key, target in result.state_dict().items():
        if not key.startswith(("levels.", "heads.")):
            state[key] = old_state[key].clone()
            continue
        if key.startswith("levels."):
            _, index, rest = key.split(".", 2)
            depth = int(index) + 1
            new_key = f"levels.{depth}.{rest}"
        else:
            depth, new_key = grown.levels, key
        if depth not in rows:
            rows[depth] = level_rows(model.tree, grown, depth)
        old_rows, new_rows = rows[depth]
        merged = torch.empty(target.shape, dtype=old_state[key].dtype)
        merged[old_rows] = old_state[key]
        if new_rows:
            merged[new_rows] = new_state[new_key].detach().to(merged.dtype)
        state[key] = merged
    result.load_state_dict(state, strict=True, assign=True)
    return result.eval()
