"""Batched branch levels: every node of one tree level runs as a handful of tensor operations.

An NHL level holds one small residual bottleneck stack per tree node, each fed by its parent's
output (level 1: the trunk output). Hundreds of small ``nn.Module`` calls in a Python loop
waste the CPU, so a :class:`BranchLevel` stores the weights of all its nodes stacked along a
leading node dimension and runs them together (choices measured on a 2-core AVX-512 CPU, see
``benchmarks/bench_branches.py``):

* Layout: activations stay channels-last ``[B, n*C, H, W]`` (memory ``[B, H, W, n, C]``), so a
  node's channels are contiguous, every node-wise view is free, and oneDNN picks its fast
  channels-last kernels (grouped convolutions run 1.5-2x faster than in NCHW).
* First 1x1 convolution and projection shortcut: children read their parent's features, so
  both run once per *parent* as a grouped 1x1 convolution (``groups`` = parents), each group
  producing all of that parent's children: large GEMMs near the CPU's peak (level 1 is one
  dense convolution; all its nodes share the trunk output). Grouped convolutions need equal
  groups, so parents are bucketed by fan-out: a level sorted by parent with equal fan-out is one
  bucket and copies nothing; otherwise one scatter per 1x1 output puts nodes in order.
* 3x3 and last 1x1 convolutions: grouped convolutions with ``groups`` = nodes.
* Inference (eval mode, no autograd): BatchNorm is folded into the convolution weights (cached
  until any state tensor changes). On CPU, oneDNN's fused ops (what ``torch.compile`` emits)
  add bias + ReLU inside each convolution and compute ``relu(shortcut + conv3(u))`` in place in
  one pass; elsewhere the last 1x1 is one strided batched matmul accumulated into the shortcut.
* Training (or eval with autograd): the same convolutions, then per-node BatchNorm as one
  ``F.batch_norm`` over ``[B, n*C, H, W]`` (exactly ``BatchNorm2d`` per node), with autograd.

The level allocates few but large tensors (800 MB for 1000 leaves at batch 8, 14x14), so CPU
speed depends on the process allocator: first-touch page faults can cost as much as the
arithmetic. :func:`nhlcli.memory.keep_freed_cpu_memory` (and ``THP_MEM_ALLOC_ENABLE=1``, set before importing
torch) make it fast and steady; see the benchmark.

Contract relied on by expert cutouts: every parameter and buffer has the node dimension first,
so slicing (:mod:`nhlcli.model.slicing`) is ``index_select(0)`` on every state tensor.
``tests/branch_oracle.py`` builds ordinary per-node ``nn.Conv2d``/``nn.BatchNorm2d`` modules
with the same weights: the test oracle and the benchmark baseline.

Initialisation follows torchvision's ResNet (Kaiming normal, fan-out, for convolutions; BN
weight 1, bias 0) and, like timm's ResNet, zero-initialises the last BN weight of every
bottleneck (``zero_init_last``) so that each block starts as its shortcut.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nhlcli.model.branch_kernels import (
    channels_last,
    conv,
    conv_add_relu_,
    repeat_groups,
    select_groups,
    use_onednn,
)

__all__ = ["BranchLevel", "LeafHeads"]

_CL = torch.channels_last


# --------------------------------------------------------------------------- state containers
class NodeConv(nn.Module):
    """Weights of one convolution for ``n`` nodes: ``[n, out, in]`` (1x1) or ``[n, out, in, k, k]``."""

    def __init__(self, num_nodes: int, out_channels: int, in_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        shape = (num_nodes, out_channels, in_channels) + (
            (kernel_size, kernel_size) if kernel_size > 1 else ()
        )
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchvision ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu"), per node.
        fan_out = self.weight.shape[1] * self.kernel_size * self.kernel_size
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / fan_out))

    def as_conv(self, weight: Tensor | None = None) -> Tensor:
        """The stacked weights as one grouped ``conv2d`` weight ``[n*out, in, k, k]``."""
        w = self.weight if weight is None else weight
        n, o, i = w.shape[:3]
        return w.reshape(n * o, i, self.kernel_size, self.kernel_size)


class NodeBatchNorm(nn.Module):
    """``BatchNorm2d`` for ``n`` nodes of ``C`` channels each; all state shaped ``[n, C]``.

    No ``num_batches_tracked`` (it would break the node-first contract); the momentum is fixed,
    as in ``BatchNorm2d``'s default.
    """

    def __init__(self, num_nodes: int, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_nodes, channels))
        self.bias = nn.Parameter(torch.zeros(num_nodes, channels))
        self.register_buffer("running_mean", torch.zeros(num_nodes, channels))
        self.register_buffer("running_var", torch.ones(num_nodes, channels))

    def fold(self) -> tuple[Tensor, Tensor]:
        """Eval-mode BN as ``y = x * scale + shift``, both ``[n, C]``."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def normalize(self, x: Tensor, training: bool) -> Tensor:
        """Per-node BN of ``x`` ``[B, n*C, H, W]``; updates the running stats when training."""
        return F.batch_norm(
            x,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.view(-1),
            self.bias.view(-1),
            training,
            self.momentum,
            self.eps,
        )


class NodeBottleneck(nn.Module):
    """State of one ResNet bottleneck (1x1, 3x3, 1x1 [+ projection]) for every node of a level.

    ``group_size``: channels per group of the 3x3 convolution (0: dense, as in the paper).
    """

    def __init__(
        self, num_nodes: int, in_channels: int, width: int, expansion: int, group_size: int = 0
    ) -> None:
        super().__init__()
        out_channels = width * expansion
        self.in_channels, self.width, self.out_channels = in_channels, width, out_channels
        self.group_size = group_size or width
        self.conv1 = NodeConv(num_nodes, width, in_channels)
        self.bn1 = NodeBatchNorm(num_nodes, width)
        self.conv2 = NodeConv(num_nodes, width, self.group_size, 3)
        self.bn2 = NodeBatchNorm(num_nodes, width)
        self.conv3 = NodeConv(num_nodes, out_channels, width)
        self.bn3 = NodeBatchNorm(num_nodes, out_channels)
        self.downsample: nn.ModuleDict | None = None
        if in_channels != out_channels:
            self.downsample = nn.ModuleDict(
                {
                    "conv": NodeConv(num_nodes, out_channels, in_channels),
                    "bn": NodeBatchNorm(num_nodes, out_channels),
                }
            )


def _state_key(module: nn.Module, device: torch.device, dtype: torch.dtype) -> tuple | None:
    """Identity + version of every state tensor: a cache key that changes with any update."""
    try:
        state = [*module.parameters(), *module.buffers()]
        return (device, dtype, tuple((t.data_ptr(), t._version) for t in state))
    except RuntimeError:  # inference tensors have no version counter: do not cache
        return None


# --------------------------------------------------------------------------- execution plan
@dataclass(frozen=True)
class _Bucket:
    """Parents with one fan-out and their children: one grouped convolution per 1x1 layer."""

    parents: tuple[int, ...]  # into the previous level (empty for level 1: the shared trunk input)
    nodes: tuple[int, ...]  # this level's nodes, grouped by parent in ``parents`` order
    fanout: int

    @property
    def groups(self) -> int:
        return max(1, len(self.parents))


def _plan(num_nodes: int, parent_index: Sequence[int] | None) -> tuple[_Bucket, ...]:
    if parent_index is None:
        return (_Bucket((), tuple(range(num_nodes)), num_nodes),)
    children: dict[int, list[int]] = {}
    for node, parent in enumerate(parent_index):
        children.setdefault(int(parent), []).append(node)
    by_fanout: dict[int, list[int]] = {}
    for parent in sorted(children):
        by_fanout.setdefault(len(children[parent]), []).append(parent)
    return tuple(
        _Bucket(tuple(parents), tuple(n for p in parents for n in children[p]), fanout)
        for fanout, parents in sorted(by_fanout.items())
    )


# --------------------------------------------------------------------------- the level
class BranchLevel(nn.Module):
    """All nodes of one tree level as batched tensor ops.

    ``parent_index[i]`` is the index (into the previous level's nodes) of node ``i``'s parent;
    ``None`` for level 1, whose nodes all read the shared trunk output. Each node is ``blocks``
    bottlenecks (``in -> width -> width -> width * expansion``, stride 1, projection shortcut
    where the channel count changes, identity shortcut where it does not). Output:
    ``[B, num_nodes * out_channels, H', W']``, channels-last, node ``i`` in channels
    ``i*out : (i+1)*out``.

    Two knobs of the lean variant (paper NHL: both off): ``entry_stride`` average-pools the
    level's input by that factor first (ceil mode): every node then runs on a quarter of the
    positions, and the pooling has no weights, so slicing is untouched. It pools only maps whose
    smaller side is at least ``entry_min_side`` (0: any), so a small input (a 2x2 map at 32 px)
    keeps its few positions. ``group_size`` splits each node's 3x3 convolution into groups of
    that many channels.
    """

    def __init__(
        self,
        num_nodes: int,
        parent_index: Sequence[int] | None,
        in_channels: int,
        width: int,
        blocks: int = 1,
        expansion: int = 4,
        zero_init_last: bool = True,
        entry_stride: int = 1,
        group_size: int = 0,
        entry_min_side: int = 0,
    ) -> None:
        super().__init__()
        if min(num_nodes, in_channels, width, blocks, expansion, entry_stride) < 1:
            raise ValueError(
                "num_nodes, in_channels, width, blocks, expansion and entry_stride must be positive"
            )
        if entry_min_side < 0:
            raise ValueError(f"entry_min_side must be >= 0, got {entry_min_side}")
        if group_size < 0 or (group_size and width % group_size):
            raise ValueError(f"group_size {group_size} must divide the width {width} (0: dense)")
        if parent_index is not None:
            parent_index = [int(p) for p in parent_index]
            if len(parent_index) != num_nodes:
                raise ValueError(f"parent_index has {len(parent_index)} entries for {num_nodes} nodes")
            if any(p < 0 for p in parent_index):
                raise ValueError("parent_index entries must be >= 0")
        self.num_nodes = num_nodes
        self.parent_index: list[int] | None = parent_index
        self.in_channels = in_channels
        self.width = width
        self.blocks_per_node = blocks
        self.expansion = expansion
        self.out_channels = width * expansion
        self.entry_stride = entry_stride
        self.entry_min_side = entry_min_side
        self.groups_per_node = width // group_size if group_size else 1
        self.blocks = nn.ModuleList(
            NodeBottleneck(
                num_nodes, in_channels if b == 0 else self.out_channels, width, expansion, group_size
            )
            for b in range(blocks)
        )
        if zero_init_last:
            for blk in self.blocks:
                nn.init.zeros_(blk.bn3.weight)
        self._buckets = _plan(num_nodes, parent_index)
        self._index_cache: dict[tuple[torch.device, tuple[int, ...]], Tensor] = {}
        self._folded: tuple[tuple, list[dict[str, Any]]] | None = None

    def extra_repr(self) -> str:
        return (
            f"nodes={self.num_nodes}, in={self.in_channels}, width={self.width}, out={self.out_channels}, "
            f"blocks={self.blocks_per_node}, buckets={len(self._buckets)}"
            + (f", entry_stride={self.entry_stride}" if self.entry_stride > 1 else "")
            + (f", entry_min_side={self.entry_min_side}" if self.entry_min_side else "")
            + (f", groups={self.groups_per_node}" if self.groups_per_node > 1 else "")
        )

    @property
    def num_parents(self) -> int:
        """Parents this level needs in its input (1 for level 1: the trunk output)."""
        return 1 if self.parent_index is None else max(self.parent_index) + 1

    # ----------------------------------------------------------------- helpers
    def _index(self, values: tuple[int, ...], device: torch.device) -> Tensor:
        key = (device, values)
        t = self._index_cache.get(key)
        if t is None:
            with torch.inference_mode(False):  # a normal tensor, usable later under autograd
                t = self._index_cache[key] = torch.tensor(values, dtype=torch.long, device=device)
        return t

    @property
    def _in_order(self) -> bool:
        """One bucket whose nodes are already in public order: no scatter needed."""
        return len(self._buckets) == 1 and self._buckets[0].nodes == tuple(range(self.num_nodes))

    def _bucket_input(self, x: Tensor, bucket: _Bucket, groups_in: int) -> Tensor:
        if not bucket.parents or bucket.parents == tuple(range(groups_in)):
            return x
        return select_groups(x, groups_in, self._index(bucket.parents, x.device))

    def _bucket_weights(self, weight: Tensor, bias: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
        """Per bucket: a 1x1 weight ``[n, C, K]`` (and bias ``[n, C]``) as grouped conv arguments."""
        k = weight.shape[2]
        if self._in_order:
            return [(weight.reshape(-1, k, 1, 1), None if bias is None else bias.reshape(-1))]
        out = []
        for bucket in self._buckets:
            idx = self._index(bucket.nodes, weight.device)
            w = weight.index_select(0, idx).reshape(-1, k, 1, 1)
            out.append((w, None if bias is None else bias.index_select(0, idx).reshape(-1)))
        return out

    def _per_parent(
        self,
        x: Tensor,
        groups_in: int,
        weights: list[tuple[Tensor, Tensor | None]],
        conv: Callable[[Tensor, Tensor, Tensor | None, int], Tensor],
    ) -> Tensor:
        """A 1x1 convolution of every node's parent features, computed once per parent.

        Each bucket is one grouped convolution (``groups`` = its parents, each group producing
        all of that parent's children); results are scattered into node order unless the
        single bucket already is in order.
        """
        if self._in_order:
            bucket = self._buckets[0]
            w, b = weights[0]
            return conv(self._bucket_input(x, bucket, groups_in), w, b, bucket.groups)
        bsz, _, h, wd = x.shape
        c = weights[0][0].shape[0] // len(self._buckets[0].nodes)
        out = x.new_empty((bsz, h, wd, self.num_nodes, c))
        for bucket, (w, b) in zip(self._buckets, weights, strict=True):
            part = channels_last(conv(self._bucket_input(x, bucket, groups_in), w, b, bucket.groups))
            part = part.permute(0, 2, 3, 1).unflatten(3, (len(bucket.nodes), c))
            out.index_copy_(3, self._index(bucket.nodes, x.device), part)
        return out.flatten(3).permute(0, 3, 1, 2)

    def _parent_features(self, x: Tensor, groups_in: int) -> Tensor:
        """Each node's parent features (identity shortcut of a level's first block)."""
        if self.parent_index is None:
            return repeat_groups(x, 1, self.num_nodes)
        return select_groups(x, groups_in, self._index(tuple(self.parent_index), x.device))

    def _check_input(self, x: Tensor) -> int:
        if x.dim() != 4:
            raise ValueError(f"expected a [B, C, H, W] input, got shape {tuple(x.shape)}")
        c = x.shape[1]
        if self.parent_index is None:
            if c != self.in_channels:
                raise ValueError(f"level 1 expects {self.in_channels} input channels, got {c}")
            return 1
        if c % self.in_channels or c // self.in_channels < self.num_parents:
            raise ValueError(
                f"expected the previous level's output ({self.num_parents}+ nodes x {self.in_channels} "
                f"channels), got {c} channels"
            )
        return c // self.in_channels

    def pools(self, size: Sequence[int]) -> bool:
        """Whether an input map of ``size`` (H, W) is pooled on entry."""
        return self.entry_stride > 1 and min(int(s) for s in size) >= self.entry_min_side

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        """Run every node; ``scale`` (``[num_nodes]``, or ``[B, num_nodes]`` per sample) multiplies
        each node's output maps (top-down attention)."""
        groups_in = self._check_input(x)
        if self.pools(x.shape[-2:]):
            x = F.avg_pool2d(x, self.entry_stride, ceil_mode=True)
        x = channels_last(x)
        infer = not (self.training or torch.is_grad_enabled())
        if infer:
            y = self._run_infer(x, groups_in, self._folded_params(x.device, x.dtype))
        else:
            y = self._run_train(x, groups_in)
        if scale is not None:
            scale = torch.as_tensor(scale, dtype=y.dtype, device=y.device)
            if scale.shape not in ((self.num_nodes,), (y.shape[0], self.num_nodes)):
                raise ValueError(
                    f"scale must have shape [{self.num_nodes}] or [batch, {self.num_nodes}], "
                    f"got {tuple(scale.shape)}"
                )
            factor = scale.view(-1, self.num_nodes).repeat_interleave(self.out_channels, dim=1)
            factor = factor.view(factor.shape[0], -1, 1, 1)
            y = y.mul_(factor) if infer else y * factor
        return y

    def _run_train(self, x: Tensor, groups_in: int) -> Tensor:
        """Autograd path: grouped convolutions and per-node BatchNorm (batch stats in training)."""
        n, training = self.num_nodes, self.training

        def conv(inp: Tensor, w: Tensor, b: Tensor | None, groups: int) -> Tensor:
            return F.conv2d(inp, w, b, groups=groups)

        for i, blk in enumerate(self.blocks):
            if i == 0:
                u = self._per_parent(x, groups_in, self._bucket_weights(blk.conv1.weight, None), conv)
            else:
                u = F.conv2d(x, blk.conv1.as_conv(), groups=n)
            u = F.relu(blk.bn1.normalize(u, training), inplace=True)
            u = F.conv2d(u, blk.conv2.as_conv(), padding=1, groups=n * self.groups_per_node)
            u = F.relu(blk.bn2.normalize(u, training), inplace=True)
            u = blk.bn3.normalize(F.conv2d(u, blk.conv3.as_conv(), groups=n), training)
            if blk.downsample is not None:  # only ever in the first block
                wp = self._bucket_weights(blk.downsample["conv"].weight, None)
                s = blk.downsample["bn"].normalize(self._per_parent(x, groups_in, wp, conv), training)
            else:
                s = self._parent_features(x, groups_in) if i == 0 else x
            x = F.relu(u + s, inplace=True)
        return x

    def _run_infer(self, x: Tensor, groups_in: int, params: list[dict[str, Any]]) -> Tensor:
        """No-grad eval path: folded BN; the last 1x1 adds into the shortcut in place, then ReLU."""
        n = self.num_nodes
        fused = use_onednn(x)

        def conv_relu(inp: Tensor, w: Tensor, b: Tensor | None, groups: int) -> Tensor:
            return conv(inp, w, b, groups, 0, relu=True, fused=fused)

        def conv_plain(inp: Tensor, w: Tensor, b: Tensor | None, groups: int) -> Tensor:
            return conv(inp, w, b, groups, 0, relu=False, fused=fused)

        for i, p in enumerate(params):
            if i == 0:
                u = self._per_parent(x, groups_in, p["w1_buckets"], conv_relu)
            else:
                u = conv_relu(x, p["w1"], p["b1"], n)
            u = conv(channels_last(u), p["w2"], p["b2"], n * self.groups_per_node, 1, relu=True, fused=fused)
            u = channels_last(u)
            if "wp_buckets" in p:
                s = channels_last(self._per_parent(x, groups_in, p["wp_buckets"], conv_plain))
            else:
                s = self._parent_features(x, groups_in) if i == 0 else x
                s = channels_last(s + p["bp"].view(1, -1, 1, 1))
            x = conv_add_relu_(s, u, p["w3"], n, fused)
        return x

    def _folded_params(self, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
        """BN folded into the conv weights, per block; cached until any state tensor changes."""
        key = _state_key(self, device, dtype)
        if key is not None and self._folded is not None and self._folded[0] == key:
            return self._folded[1]
        with torch.no_grad():
            result = []
            for i, blk in enumerate(self.blocks):
                s1, t1 = blk.bn1.fold()
                s2, t2 = blk.bn2.fold()
                s3, t3 = blk.bn3.fold()
                w1 = (blk.conv1.weight * s1[:, :, None]).to(device=device, dtype=dtype)
                t1 = t1.to(device=device, dtype=dtype)
                w2 = blk.conv2.weight * s2[:, :, None, None, None]
                p: dict[str, Any] = {
                    "w2": channels_last(blk.conv2.as_conv(w2)).to(device=device, dtype=dtype),
                    "b2": t2.reshape(-1).to(device=device, dtype=dtype),
                    "w3": blk.conv3.as_conv(blk.conv3.weight * s3[:, :, None]).to(device=device, dtype=dtype),
                }
                if i == 0:
                    p["w1_buckets"] = self._bucket_weights(w1, t1)
                else:
                    p["w1"], p["b1"] = blk.conv1.as_conv(w1), t1.reshape(-1)
                if blk.downsample is not None:
                    sp, tp = blk.downsample["bn"].fold()
                    wp = (blk.downsample["conv"].weight * sp[:, :, None]).to(device=device, dtype=dtype)
                    p["wp_buckets"] = self._bucket_weights(wp, (tp + t3).to(device=device, dtype=dtype))
                else:
                    p["bp"] = t3.reshape(-1).to(device=device, dtype=dtype)
                result.append(p)
        self._folded = (key, result) if key is not None else None
        return result

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        # Moving or casting the module invalidates cached index tensors and folded weights.
        self._index_cache = {}
        self._folded = None
        return super()._apply(fn, recurse)


class LeafHeads(nn.Module):
    """Global average pooling + one linear unit per leaf: logits ``[B, num_leaves]``.

    Each leaf reads its own branch (``[B, num_leaves * C, H, W]`` in, the paper's shape), or, with
    ``parent_index`` (the linear-leaf shape), the pooled features of its parent node:
    ``[B, num_parents * C, H, W]`` in, leaf ``i`` reading parent ``parent_index[i]``. A leaf is then
    a row of ``weight`` and nothing else, so a class costs ``C`` multiply-adds instead of a
    bottleneck stack, and slicing still keeps whole rows.
    """

    def __init__(
        self,
        num_leaves: int,
        in_channels: int,
        shared: bool = False,
        parent_index: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.num_leaves, self.in_channels = num_leaves, in_channels
        # shared: every leaf reads the same single branch (PHL 1branch, the sequential control)
        self.shared = shared
        if parent_index is not None:
            parent_index = [int(p) for p in parent_index]
            if len(parent_index) != num_leaves or any(p < 0 for p in parent_index):
                raise ValueError(f"parent_index needs {num_leaves} entries >= 0, got {len(parent_index)}")
        self.parent_index: list[int] | None = parent_index
        self.num_inputs = (max(parent_index) + 1) if parent_index else (1 if shared else num_leaves)
        self.weight = nn.Parameter(torch.empty(num_leaves, in_channels))
        self.bias = nn.Parameter(torch.empty(num_leaves))
        self._layout = _chunk_layout(parent_index) if parent_index else None
        self._index_cache: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear(in_channels, 1)'s default, per leaf.
        bound = 1.0 / math.sqrt(self.in_channels)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        reads = "shared branch" if self.shared else "parents" if self.parent_index else "own branch"
        return f"leaves={self.num_leaves}, in={self.in_channels}, reads={reads}"

    def _pool(self, x: Tensor) -> Tensor:
        """``[B, C', H, W]`` -> ``[B, C']`` by global average pooling."""
        b, c = x.shape[:2]
        if x.is_contiguous(memory_format=_CL):
            # Pool over the [B, H*W, C] view: its backward then yields a channels-last gradient
            # (x.mean((2, 3)) would yield an NCHW one, and every op below would mix layouts).
            return x.permute(0, 2, 3, 1).reshape(b, -1, c).mean(1)
        return x.mean(dim=(2, 3))

    def _indices(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The chunk layout's index tensors on ``device`` (made once per device)."""
        cached = self._index_cache.get(device)
        if cached is None:
            assert self._layout is not None
            with torch.inference_mode(False):  # normal tensors, usable later under autograd
                cached = tuple(torch.tensor(v, dtype=torch.long, device=device) for v in self._layout[1:])
            self._index_cache[device] = cached  # type: ignore[assignment]
        return cached  # type: ignore[return-value]

    def _read_parents(self, pooled: Tensor) -> Tensor:
        """Leaf logits (no bias) from pooled parent features ``[B, P, C]``.

        Leaves are laid out in chunks of up to ``_CHUNK`` siblings; one batched matmul multiplies
        each chunk's parent features by its leaves' rows (padding rows are zeros). Gathering
        every leaf's parent features first (``[B, leaves, C]``) would move 1,861 x 256 values
        per image at the emoji scale and cost more than the rest of the branches.
        """
        chunk_size = self._layout[0]  # type: ignore[index]
        chunk_parent, slot_leaf, leaf_slot = self._indices(pooled.device)
        b = pooled.shape[0]
        rows = torch.cat([self.weight, self.weight.new_zeros(1, self.in_channels)])
        rows = rows.index_select(0, slot_leaf).view(-1, chunk_size, self.in_channels)  # [n, K, C]
        inputs = pooled.index_select(1, chunk_parent).transpose(0, 1)  # [n, B, C]
        out = torch.bmm(inputs, rows.transpose(1, 2))  # [n, B, K]
        return out.transpose(0, 1).reshape(b, -1).index_select(1, leaf_slot)

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        """Logits; ``scale`` (``[num_leaves]`` or ``[B, num_leaves]``) multiplies each leaf's
        read of its features, as scaling its branch's output maps would (top-down attention)."""
        b, c = x.shape[:2]
        if c != self.num_inputs * self.in_channels:
            raise ValueError(f"expected {self.num_inputs} x {self.in_channels} channels, got {c}")
        pooled = self._pool(x)
        if self.shared:
            logits = F.linear(pooled, self.weight)
        else:
            pooled = pooled.view(b, self.num_inputs, self.in_channels)
            if self.parent_index is not None:
                logits = self._read_parents(pooled)
            else:
                logits = torch.einsum("blc,lc->bl", pooled, self.weight)
        if scale is not None:
            scale = torch.as_tensor(scale, dtype=logits.dtype, device=logits.device)
            if scale.shape not in ((self.num_leaves,), (b, self.num_leaves)):
                raise ValueError(
                    f"scale must have shape [{self.num_leaves}] or [batch, {self.num_leaves}], "
                    f"got {tuple(scale.shape)}"
                )
            logits = logits * scale
        return logits + self.bias

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self._index_cache = {}
        return super()._apply(fn, recurse)


# Siblings per chunk of a linear-leaf read: small enough that padding wastes little (a parent of
# 17 leaves pads 15 rows), large enough that a batched matmul has work per chunk. Fixed, whatever
# the fan-out: every chunk is then the same [C, 16] matmul, so a leaf's logit does not depend on
# how many siblings it has or how many chunks there are (BLAS picks other kernels, and other
# roundings, for other shapes), which is what keeps old logits bit-identical when classes are
# grafted (nhlcli.graft).
_CHUNK = 16


def _chunk_layout(parent_index: Sequence[int]) -> tuple[int, list[int], list[int], list[int]]:
    """Leaves in chunks of ``_CHUNK`` slots, siblings only: (chunk size, each chunk's parent, each
    slot's leaf (``len(parent_index)``: a padding slot), each leaf's slot)."""
    children: dict[int, list[int]] = {}
    for leaf, parent in enumerate(parent_index):
        children.setdefault(parent, []).append(leaf)
    size = _CHUNK
    chunk_parent: list[int] = []
    slot_leaf: list[int] = []
    for parent in sorted(children):
        leaves = children[parent]
        for start in range(0, len(leaves), size):
            part = leaves[start : start + size]
            chunk_parent.append(parent)
            slot_leaf.extend(part + [len(parent_index)] * (size - len(part)))
    leaf_slot = [0] * len(parent_index)
    for slot, leaf in enumerate(slot_leaf):
        if leaf < len(parent_index):
            leaf_slot[leaf] = slot
    return size, chunk_parent, slot_leaf, leaf_slot
