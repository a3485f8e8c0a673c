"""The tensor operations behind batched branch levels: channels-last node views and oneDNN's
fused convolutions (what ``torch.compile``'s CPU backend emits), with plain-op fallbacks.

Kept apart from :mod:`nhlcli.model.branches` so that the level reads as the model it is and
the kernels as the speed-ups they are (measured in ``benchmarks/bench_branches.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_CL = torch.channels_last


def channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=_CL)


def node_view(x: Tensor, n: int) -> Tensor:
    """``[B, n*C, H, W]`` channels-last as a ``[B*H*W, n, C]`` view (never a copy)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).view(b * h * w, n, c // n)


def select_groups(x: Tensor, groups: int, index: Tensor) -> Tensor:
    """Channel groups ``index`` of ``x`` (``groups`` groups), channels-last in and out."""
    b, c, h, w = x.shape
    v = x.permute(0, 2, 3, 1).reshape(b, h, w, groups, c // groups).index_select(3, index)
    return v.flatten(3).permute(0, 3, 1, 2)


def repeat_groups(x: Tensor, groups: int, repeats: int) -> Tensor:
    """Each channel group of ``x`` repeated ``repeats`` times (identity shortcut of children)."""
    b, c, h, w = x.shape
    v = x.permute(0, 2, 3, 1).reshape(b, h, w, groups, 1, c // groups).expand(-1, -1, -1, -1, repeats, -1)
    return v.reshape(b, h, w, c * repeats).permute(0, 3, 1, 2)


# torch.ops.mkldnn._convolution_pointwise* are what torch.compile's CPU backend emits for fused
# convolutions; if this torch lacks them we fall back to plain ops (set once, on first failure).
_ONEDNN_FUSED = [
    hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise_")
]


def use_onednn(x: Tensor) -> bool:
    """Whether oneDNN's fused convolution ops (conv + bias + ReLU, conv + add + ReLU) apply."""
    return (
        _ONEDNN_FUSED[0]
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def conv(
    x: Tensor, w: Tensor, bias: Tensor | None, groups: int, padding: int, relu: bool, fused: bool
) -> Tensor:
    """Grouped convolution (stride 1) + bias [+ ReLU], fused by oneDNN where available."""
    if fused:
        try:
            return torch.ops.mkldnn._convolution_pointwise(
                x, w, bias, [padding] * 2, [1, 1], [1, 1], groups, "relu" if relu else "none", [], ""
            )
        except (RuntimeError, AttributeError):
            _ONEDNN_FUSED[0] = False
    y = F.conv2d(x, w, bias, padding=padding, groups=groups)
    return y.relu_() if relu else y


def conv_add_relu_(s: Tensor, u: Tensor, w: Tensor, groups: int, fused: bool) -> Tensor:
    """``s = relu(s + grouped_conv1x1(u, w))`` in place: the bottleneck's last 1x1 + residual."""
    if fused:
        try:  # oneDNN: one pass over s
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                s, u, w, None, [0, 0], [1, 1], [1, 1], groups, "add", 1.0, "relu", [], None
            )
        except (RuntimeError, AttributeError):
            _ONEDNN_FUSED[0] = False
    # s[node] += u[node] @ w[node]^T for all nodes at once (one strided batched GEMM).
    wt = w.view(groups, -1, w.shape[1]).transpose(1, 2)
    node_view(s, groups).transpose(0, 1).baddbmm_(node_view(u, groups).transpose(0, 1), wt)
    return s.relu_()
