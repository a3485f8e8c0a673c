"""The oracle for batched branch levels: ordinary per-node ``nn.Conv2d``/``nn.BatchNorm2d``
modules holding the same weights, run one node at a time in a Python loop.

Tests compare :class:`nhlcli.model.branches.BranchLevel` against it; ``benchmarks/bench_branches.py``
uses it as the per-node baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nhlcli.model.branches import BranchLevel, LeafHeads, NodeBatchNorm


class _RefBottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (stride 1) written out, for one node."""

    def __init__(self, in_channels: int, width: int, out_channels: int, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _copy_bn(dst: nn.BatchNorm2d, src: NodeBatchNorm, i: int) -> None:
    dst.eps, dst.momentum = src.eps, src.momentum
    dst.weight.copy_(src.weight[i])
    dst.bias.copy_(src.bias[i])
    dst.running_mean.copy_(src.running_mean[i])
    dst.running_var.copy_(src.running_var[i])


class _EntryPool(nn.AvgPool2d):
    """Average pooling (ceil mode) of maps at least ``min_side`` pixels a side; smaller pass."""

    def __init__(self, stride: int, min_side: int) -> None:
        super().__init__(stride, ceil_mode=True)
        self.min_side = min_side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if min(x.shape[-2:]) >= self.min_side else x


def per_node_modules(level: BranchLevel) -> nn.ModuleList:
    """One ordinary ``nn.Sequential`` of bottlenecks per node, carrying the level's weights
    (after an ``nn.AvgPool2d`` where the level pools its input)."""
    nodes = []
    with torch.no_grad():
        for i in range(level.num_nodes):
            seq: list[nn.Module] = []
            if level.entry_stride > 1:
                seq.append(_EntryPool(level.entry_stride, level.entry_min_side))
            for blk in level.blocks:
                ref = _RefBottleneck(blk.in_channels, blk.width, blk.out_channels, level.groups_per_node)
                ref.conv1.weight.copy_(blk.conv1.weight[i].view_as(ref.conv1.weight))
                ref.conv2.weight.copy_(blk.conv2.weight[i])
                ref.conv3.weight.copy_(blk.conv3.weight[i].view_as(ref.conv3.weight))
                _copy_bn(ref.bn1, blk.bn1, i)
                _copy_bn(ref.bn2, blk.bn2, i)
                _copy_bn(ref.bn3, blk.bn3, i)
                if blk.downsample is not None and ref.downsample is not None:
                    ref.downsample[0].weight.copy_(
                        blk.downsample["conv"].weight[i].view_as(ref.downsample[0].weight)
                    )
                    _copy_bn(ref.downsample[1], blk.downsample["bn"], i)
                seq.append(ref)
            nodes.append(nn.Sequential(*seq))
    ref_param = next(iter(level.parameters()))
    return nn.ModuleList(nodes).to(device=ref_param.device, dtype=ref_param.dtype).train(level.training)


def per_leaf_linears(heads: LeafHeads) -> nn.ModuleList:
    """One ``nn.Linear(C, 1)`` per leaf, carrying the heads' weights."""
    linears = []
    with torch.no_grad():
        for i in range(heads.num_leaves):
            lin = nn.Linear(heads.in_channels, 1)
            lin.weight.copy_(heads.weight[i].view(1, -1))
            lin.bias.copy_(heads.bias[i].view(1))
            linears.append(lin)
    return nn.ModuleList(linears).to(device=heads.weight.device, dtype=heads.weight.dtype)


def loop_forward(
    node_modules: Sequence[nn.ModuleList],
    parent_indices: Sequence[Sequence[int] | None],
    x: Tensor,
    leaf_linears: nn.ModuleList | None = None,
    scales: Sequence[Tensor | None] | None = None,
) -> tuple[list[list[Tensor]], Tensor | None]:
    """The plain way: a Python loop over every node of every level (the oracle and baseline).

    Returns the per-level lists of node outputs and, with ``leaf_linears``, the leaf logits.
    """
    prev: list[Tensor] | None = None
    outputs: list[list[Tensor]] = []
    for depth, (mods, parents) in enumerate(zip(node_modules, parent_indices, strict=True)):
        scale = scales[depth] if scales is not None else None
        level_out = []
        for i, mod in enumerate(mods):
            inp = x if parents is None or prev is None else prev[parents[i]]
            out = mod(inp)
            if scale is not None:
                out = out * scale[i]
            level_out.append(out)
        outputs.append(level_out)
        prev = level_out
    logits = None
    if leaf_linears is not None and prev is not None:
        logits = torch.cat(
            [lin(out.mean(dim=(2, 3))) for lin, out in zip(leaf_linears, prev, strict=True)], dim=1
        )
    return outputs, logits


class ReferenceStack(nn.Module):
    """Per-node module copies of a stack of levels (+ heads), run by :func:`loop_forward`."""

    def __init__(self, levels: Sequence[BranchLevel], heads: LeafHeads | None = None) -> None:
        super().__init__()
        self.nodes = nn.ModuleList(per_node_modules(level) for level in levels)
        self.parent_indices = [level.parent_index for level in levels]
        self.leaves = per_leaf_linears(heads) if heads is not None else None

    def forward(
        self, x: Tensor, scales: Sequence[Tensor | None] | None = None
    ) -> tuple[list[list[Tensor]], Tensor | None]:
        return loop_forward(list(self.nodes), self.parent_indices, x, self.leaves, scales)
