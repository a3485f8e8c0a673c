"""Batched branch levels agree with a plain per-node module loop, cut out exactly, and train."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from branch_oracle import ReferenceStack, per_node_modules

from nhlcli.model import branch_kernels
from nhlcli.model.branches import BranchLevel, LeafHeads, NodeBatchNorm

IN = 12  # trunk channels
P2 = [0, 1, 1, 2, 2, 2, 2, 2]  # level-1 parents with 1, 2 and 5 children
P3 = [0, 1, 1, 2, 3, 3, 3, 3, 3, 4, 5, 6, 7, 7]  # fan-outs 1, 2, 1, 5, 1, 1, 1, 2


def randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN state, so that every BN parameter and statistic matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, NodeBatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# The lean variant's shapes: every level outputs 24 channels (identity shortcuts below level 1),
# level 1 pools its input by 2, 3x3 convolutions in groups of 2 channels.
LEAN = {"widths": (6, 4, 4), "expansions": (4, 6, 6), "entry_strides": (2, 1, 1), "group_size": 2}


def make_stack(
    blocks: int = 1,
    parents: tuple[list[int] | None, ...] = (None, P2, P3),
    widths: tuple[int, ...] = (6, 4, 3),
    expansions: tuple[int, ...] | None = None,
    entry_strides: tuple[int, ...] | None = None,
    group_size: int = 0,
) -> tuple[list[BranchLevel], LeafHeads]:
    torch.manual_seed(0)
    levels, cin = [], IN
    expansions = expansions or (4,) * len(widths)
    entry_strides = entry_strides or (1,) * len(widths)
    for k, (pidx, width) in enumerate(zip(parents, widths, strict=True)):
        n = 3 if pidx is None else len(pidx)
        if k + 1 < len(parents) and parents[k + 1] is not None:
            n = max(n, max(parents[k + 1]) + 1)
        levels.append(
            BranchLevel(
                n,
                pidx,
                cin,
                width,
                blocks,
                expansions[k],
                entry_stride=entry_strides[k],
                group_size=group_size,
            )
        )
        cin = width * expansions[k]
    for level in levels:
        randomize_bn(level)
    return levels, LeafHeads(levels[-1].num_nodes, cin)


def run_batched(levels, heads, x, scales=None):
    outs, y = [], x
    for k, level in enumerate(levels):
        y = level(y, scale=None if scales is None else scales[k])
        outs.append(y)
    return outs, heads(y)


def assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    tol = rel * max(1.0, b.abs().max().item())
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol:.3g}"


@pytest.fixture(params=[True, False], ids=["onednn", "plain"])
def fused(request, monkeypatch):
    """Run the inference path with and without oneDNN's fused convolutions."""
    monkeypatch.setattr(branch_kernels, "_ONEDNN_FUSED", [request.param and branch_kernels._ONEDNN_FUSED[0]])
    return request.param


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("shape", ["paper", "lean"])
def test_eval_matches_per_node_loop(blocks, batch, grad, shape, fused):
    levels, heads = make_stack(blocks, **(LEAN if shape == "lean" else {}))
    ref = ReferenceStack(levels, heads)
    for m in (*levels, heads, ref):
        m.eval()
    x = torch.randn(batch, IN, 5, 4)
    with torch.set_grad_enabled(grad):
        outs, logits = run_batched(levels, heads, x)
        ref_outs, ref_logits = ref(x)
    if shape == "lean":  # a pooled entry (ceil mode: 5x4 -> 3x2), identity shortcuts below level 1
        assert [lv.blocks[0].downsample is None for lv in levels] == [False, True, True]
    hw = (3, 2) if shape == "lean" else (5, 4)
    for out, ref_out in zip(outs, ref_outs, strict=True):
        assert out.shape == (batch, sum(r.shape[1] for r in ref_out), *hw)
        assert_close(out, torch.cat(ref_out, 1))
    assert logits.shape == (batch, 14)
    assert_close(logits, ref_logits)


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("shape", ["paper", "lean"])
def test_train_mode_batch_norm_matches(blocks, shape):
    levels, heads = make_stack(blocks, **(LEAN if shape == "lean" else {}))
    ref = ReferenceStack(levels, heads)
    for m in (*levels, heads, ref):
        m.train()
    x = torch.randn(3, IN, 4, 4)
    for _ in range(2):  # two steps: running statistics must accumulate identically
        outs, logits = run_batched(levels, heads, x)
        ref_outs, ref_logits = ref(x)
        for out, ref_out in zip(outs, ref_outs, strict=True):
            assert_close(out, torch.cat(ref_out, 1))
        assert_close(logits, ref_logits)
    for level, nodes in zip(levels, ref.nodes, strict=True):
        for b, blk in enumerate(level.blocks):
            pairs = [(blk.bn1, "bn1"), (blk.bn2, "bn2"), (blk.bn3, "bn3")]
            if blk.downsample is not None:
                pairs.append((blk.downsample["bn"], "downsample"))
            for bn, name in pairs:
                for i, node in enumerate(nodes):
                    ref_bn = getattr(node[b + (level.entry_stride > 1)], name)  # after the pooling
                    ref_bn = ref_bn[1] if name == "downsample" else ref_bn
                    assert torch.allclose(bn.running_mean[i], ref_bn.running_mean, atol=1e-5)
                    assert torch.allclose(bn.running_var[i], ref_bn.running_var, atol=1e-5)
    # after training-mode updates, eval mode (folded, cached) still agrees with the loop
    for m in (*levels, heads, ref):
        m.eval()
    with torch.no_grad():
        outs, logits = run_batched(levels, heads, x)
        assert_close(logits, ref(x)[1])


def test_unsorted_parents_identity_shortcut_and_tiny_maps(fused):
    # children not grouped by parent; level 2 has in == out (identity shortcut, repeated per child)
    levels, heads = make_stack(1, parents=(None, [2, 0, 1, 0, 2, 2]), widths=(4, 4))
    assert levels[1].blocks[0].downsample is None and levels[0].blocks[0].downsample is not None
    ref = ReferenceStack(levels, heads)
    for m in (*levels, heads, ref):
        m.eval()
    for shape in [(2, IN, 3, 3), (1, IN, 1, 1)]:
        x = torch.randn(shape)
        with torch.no_grad():
            outs, logits = run_batched(levels, heads, x)
            ref_outs, ref_logits = ref(x)
        assert_close(outs[1], torch.cat(ref_outs[1], 1))
        assert_close(logits, ref_logits)


def test_level_one_identity_shortcut():
    level = BranchLevel(3, None, 16, 4)  # 16 -> 4 -> 16: no projection
    randomize_bn(level)
    level.eval()
    x = torch.randn(2, 16, 3, 3)
    ref = per_node_modules(level).eval()
    with torch.no_grad():
        assert_close(level(x), torch.cat([m(x) for m in ref], 1))


def keep_rows(module, rows, *args):
    """``module`` rebuilt for the nodes ``rows`` only, by row selection on its node-first state
    (what :mod:`nhlcli.model.slicing` does to every branch tensor)."""
    kind = type(module)
    new = (
        kind(len(rows), *args)
        if kind is LeafHeads
        else kind(
            len(rows),
            *args,
            module.in_channels,
            module.width,
            module.blocks_per_node,
            module.expansion,
            entry_stride=module.entry_stride,
            entry_min_side=module.entry_min_side,
            group_size=module.width // module.groups_per_node if module.groups_per_node > 1 else 0,
        )
    )
    index = torch.tensor(rows)
    new.load_state_dict({k: v.index_select(0, index) for k, v in module.state_dict().items()})
    return new.eval()


@pytest.mark.parametrize("shape", ["paper", "lean"])
def test_row_selection_on_node_first_state_is_exact(shape, fused):
    levels, heads = make_stack(2, **(LEAN if shape == "lean" else {}))
    for m in (*levels, heads):
        m.eval()
    x = torch.randn(2, IN, 4, 4)
    with torch.no_grad():
        full, full_logits = run_batched(levels, heads, x)
    # keep level-1 nodes 2 and 1, their children 3,5,6 (under 2) and 1 (under 1), and leaves below
    keep1, keep2 = [2, 1], [3, 5, 6, 1]
    par2 = [keep1.index(P2[i]) for i in keep2]
    keep3 = [i for i, p in enumerate(P3) if p in keep2]
    par3 = [keep2.index(P3[i]) for i in keep3]
    cut = [
        keep_rows(levels[0], keep1, None),
        keep_rows(levels[1], keep2, par2),
        keep_rows(levels[2], keep3, par3),
    ]
    cut_heads = keep_rows(heads, keep3, heads.in_channels)
    with torch.no_grad():
        outs, logits = run_batched(cut, cut_heads, x)
    for level, out, ref, keep in zip(cut, outs, full, (keep1, keep2, keep3), strict=True):
        c = level.out_channels
        expect = torch.cat([ref[:, i * c : (i + 1) * c] for i in keep], 1)
        assert (out - expect).abs().max().item() <= 1e-5
    assert (logits - full_logits[:, keep3]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("training", [False, True])
def test_scale_multiplies_one_node(training):
    levels, heads = make_stack(1)
    level = levels[1]
    level.train(training)
    x = torch.randn(2, levels[0].num_nodes * levels[0].out_channels, 3, 3)
    scale = torch.ones(level.num_nodes)
    scale[3], scale[5] = 2.5, 0.0
    c = level.out_channels
    with torch.set_grad_enabled(training):
        torch.manual_seed(1)
        base = level(x)
        scaled = level(x, scale=scale)
    if training:  # batch statistics are the same for both calls; only the output is scaled
        base, scaled = base.detach(), scaled.detach()
    expect = base.clone()
    expect[:, 3 * c : 4 * c] *= 2.5
    expect[:, 5 * c : 6 * c] = 0
    assert_close(scaled, expect, rel=1e-6)
    with pytest.raises(ValueError):
        level(x, scale=torch.ones(level.num_nodes + 1))


def test_gradients_flow_and_sgd_reduces_loss():
    levels, heads = make_stack(1)
    params = [p for m in (*levels, heads) for p in m.parameters()]
    for m in (*levels, heads):
        m.train()
    torch.manual_seed(3)
    x = torch.randn(8, IN, 4, 4)
    target = torch.randint(0, heads.num_leaves, (8,))
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        _, logits = run_batched(levels, heads, x)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert all(p.grad is not None for p in params)
    assert any(p.grad.abs().sum() > 0 for p in levels[0].parameters())
    assert losses[-1] < losses[0] * 0.8, losses


def test_inference_mode_then_training():
    # cached index tensors made under inference_mode must not leak into autograd later
    levels, heads = make_stack(1)
    x = torch.randn(2, IN, 3, 3)
    with torch.inference_mode():
        run_batched([m.eval() for m in levels], heads, x)
    for m in levels:
        m.train()
    _, logits = run_batched(levels, heads, x)
    logits.sum().backward()
    assert levels[2].blocks[0].conv1.weight.grad is not None


def test_eval_cache_follows_weight_updates(fused):
    levels, heads = make_stack(1)
    for m in (*levels, heads):
        m.eval()
    x = torch.randn(2, IN, 3, 3)
    with torch.no_grad():
        run_batched(levels, heads, x)  # fills the folded-weight cache
        levels[2].blocks[0].conv1.weight.mul_(-1.5)
        levels[1].blocks[0].bn2.running_var.add_(0.7)
        _, logits = run_batched(levels, heads, x)
        assert_close(logits, ReferenceStack(levels, heads).eval()(x)[1])


def test_every_state_tensor_is_node_first():
    for blocks in (1, 2):
        levels, heads = make_stack(blocks)
        for level in levels:
            state = level.state_dict()
            assert state, "no state"
            for name, t in state.items():
                assert t.shape[0] == level.num_nodes, name
            for name, t in [*level.named_parameters(), *level.named_buffers()]:
                assert t.shape[0] == level.num_nodes, name
        assert all(t.shape[0] == heads.num_leaves for t in heads.state_dict().values())
    keys = set(levels[0].state_dict())
    for key in (
        "blocks.0.conv1.weight",
        "blocks.0.conv2.weight",
        "blocks.0.conv3.weight",
        "blocks.0.bn1.running_mean",
        "blocks.0.bn3.running_var",
        "blocks.0.downsample.conv.weight",
        "blocks.0.downsample.bn.weight",
        "blocks.1.conv1.weight",
    ):
        assert key in keys
    assert levels[0].blocks[0].conv2.weight.shape == (3, 6, 6, 3, 3)
    assert levels[0].blocks[0].conv1.weight.shape == (3, 6, IN)


def test_init_follows_resnet():
    level = BranchLevel(50, None, 64, 16)
    blk = level.blocks[0]
    assert torch.all(blk.bn1.weight == 1) and torch.all(blk.bn1.bias == 0)
    assert torch.all(blk.bn3.weight == 0)  # zero_init_last
    std = blk.conv2.weight.std().item()
    assert abs(std - (2 / (16 * 9)) ** 0.5) < 0.1 * std  # kaiming normal, fan-out
    assert torch.all(BranchLevel(2, None, 8, 2, zero_init_last=False).blocks[0].bn3.weight == 1)


def test_input_checks():
    level = BranchLevel(4, [0, 0, 1, 1], 8, 2)
    with pytest.raises(ValueError):
        level(torch.randn(1, 8, 3, 3))  # one parent's worth of channels, needs two
    with pytest.raises(ValueError):
        BranchLevel(3, [0, 1], 8, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    levels, heads = make_stack(2)
    for m in (*levels, heads):
        m.eval()
    x = torch.randn(2, IN, 5, 5)
    with torch.no_grad():
        _, cpu_logits = run_batched(levels, heads, x)
        gpu = [copy.deepcopy(m).cuda() for m in levels]
        _, gpu_logits = run_batched(gpu, copy.deepcopy(heads).cuda(), x.cuda())
    assert_close(gpu_logits.cpu(), cpu_logits, rel=1e-3)
