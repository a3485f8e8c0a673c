"""Linear leaves (the many-class default): each leaf a row reading its parent's pooled features.

What a user relies on: the chunked read gives each leaf exactly its parent's features times its
row, experts cut from such a model answer as the full model does on their classes, the file
round-trips, attention at the leaf level acts as scaling the leaf's read, and the shape is far
cheaper than leaf-level bottlenecks at many classes.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_model
from test_experts import kept_logits, random_tree, randomise

from nhlcli.errors import NhlError
from nhlcli.experts import count_macs, cut_model
from nhlcli.model.attention import class_attention
from nhlcli.model.branches import LeafHeads
from nhlcli.model.files import save_model
from nhlcli.model.loading import open_model
from nhlcli.model.nhl import BranchConfig
from nhlcli.model.registry import DEFAULT_VARIANT, VARIANTS, create_model, variant_branches
from nhlcli.model.trunk import TrunkConfig
from nhlcli.taxonomy import Tree

LINEAR = "nhl-scale"


def naive_read(heads: LeafHeads, x: torch.Tensor) -> torch.Tensor:
    """What a linear leaf means, written plainly: its parent's mean features times its row."""
    pooled = x.mean((2, 3)).view(x.shape[0], heads.num_inputs, heads.in_channels)
    return torch.einsum("blc,lc->bl", pooled[:, heads.parent_index], heads.weight) + heads.bias


@pytest.mark.parametrize("fanouts", [[1], [3, 1, 2], [17, 1, 40, 16, 5], [33] * 3])
@pytest.mark.parametrize("layout", ["contiguous", "shuffled"])
def test_chunked_read_equals_each_leaf_reading_its_parent(fanouts, layout):
    parents = [p for p, n in enumerate(fanouts) for _ in range(n)]
    if layout == "shuffled":  # leaves of one parent need not be neighbours in the level's order
        random.Random(len(parents)).shuffle(parents)
    torch.manual_seed(0)
    heads = LeafHeads(len(parents), 8, parent_index=parents)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(5, len(fanouts) * 8, 3, 3).contiguous(memory_format=memory_format)
        assert torch.allclose(heads(x), naive_read(heads, x), atol=1e-6)
    # gradients reach every real row and nothing else
    x = torch.randn(4, len(fanouts) * 8, 2, 2, requires_grad=True)
    heads(x).square().sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    ref = LeafHeads(len(parents), 8, parent_index=parents)
    ref.load_state_dict(heads.state_dict())
    naive_read(ref, ref_x).square().sum().backward()
    assert torch.allclose(heads.weight.grad, ref.weight.grad, atol=1e-5)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5)


def test_leaf_scale_multiplies_the_read_not_the_bias():
    heads = LeafHeads(4, 6, parent_index=[0, 0, 1, 1])
    x = torch.randn(2, 12, 2, 2)
    scale = torch.tensor([1.0, 0.0, 2.0, 1.0])
    plain = heads(x) - heads.bias
    assert torch.allclose(heads(x, scale), plain * scale + heads.bias, atol=1e-6)
    with pytest.raises(ValueError, match="scale must have shape"):
        heads(x, torch.ones(3))


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_linear_leaf_model_has_one_branch_level_fewer_and_reads_parents(levels):
    tree = random_tree(levels, 14, seed=levels)
    model = tiny_model(tree, variant=LINEAR)
    assert model.branch_config.linear_leaves
    assert len(model.levels) == levels - 1
    above = len(tree.level(levels - 1)) if levels > 1 else 1  # level 1's leaves read the trunk
    assert model.heads.num_inputs == above
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 14)


@pytest.mark.parametrize("backbone", ["resnet18", "convnextv2_atto"])
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_expert_of_a_linear_leaf_model_answers_as_the_full_model(backbone, levels):
    tree = random_tree(levels, 14, seed=levels)
    parent = randomise(tiny_model(tree, backbone, variant=LINEAR))
    x = torch.randn(3, 3, 32, 32)
    rng = random.Random(levels)
    for k in (1, 2, 5, 13):
        labels = rng.sample(tree.classes, k)
        expert = cut_model(parent, labels)
        assert expert.tree.classes == [c for c in tree.classes if c in labels]
        full, cut = kept_logits(parent, expert, x)
        assert (full - cut).abs().max().item() <= 1e-5
        assert torch.allclose(cut.softmax(1), full.softmax(1), atol=1e-6)
        if k < 13:
            assert count_macs(expert) <= count_macs(parent)


def test_linear_leaf_model_round_trips_and_routes(tmp_path):
    tree = random_tree(3, 14, seed=3)
    model = randomise(tiny_model(tree, variant=LINEAR))
    loaded = open_model(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.branch_config == model.branch_config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        # routing runs one level-1 node's branches: the same logits for that node's classes
        node = tree.level(1)[0]
        levels, heads = model.sliced_branches(tree.subtree([node]))
        features = model.trunk(x)
        for level in levels:
            features = level(features)
        sub = tree.subtree([node])
        routed = heads(features)
        leaf_order = sub.level(sub.levels)
        full = model(x)[:, [tree.class_index(c) for c in leaf_order]]
        assert torch.allclose(routed, full, atol=1e-5)


def test_attention_on_a_class_scales_its_logit_read():
    tree = random_tree(2, 10, seed=2)
    model = randomise(tiny_model(tree, variant=LINEAR))
    target = tree.classes[3]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        muted = model(x, class_attention(model, [(target, 0.0)]))
    column = tree.class_index(target)
    leaf = tree.level(tree.levels).index(target)
    assert torch.allclose(muted[:, column], model.heads.bias[leaf].expand(2), atol=1e-6)
    others = [i for i in range(tree.num_classes) if i != column]
    assert torch.allclose(muted[:, others], plain[:, others], atol=1e-6)


def test_linear_leaf_configs_are_checked():
    with pytest.raises(NhlError, match="branch level"):
        BranchConfig(widths=(8, 8, 8), linear_leaves=True).resolved(3)  # 2 levels above the leaves
    with pytest.raises(NhlError, match="single-branch"):
        BranchConfig(single_branch=True, linear_leaves=True).resolved(1)
    assert BranchConfig(linear_leaves=True).resolved(1).widths == ()


def balanced_tree(groups: int, subgroups: int, leaves: int) -> Tree:
    """``groups`` x ``subgroups`` x ``leaves`` classes, the shape of Unicode's emoji tree."""
    nested = {"id": "root", "name": "all", "children": [
        {"id": f"g{g}", "name": f"g{g}", "children": [
            {"id": f"g{g}s{s}", "name": f"g{g}s{s}", "children": [
                {"id": f"g{g}s{s}c{c}", "name": f"g{g}s{s}c{c}"} for c in range(leaves)]}
            for s in range(subgroups)]}
        for g in range(groups)]}  # fmt: skip
    classes = [f"g{g}s{s}c{c}" for g in range(groups) for s in range(subgroups) for c in range(leaves)]
    return Tree.from_nested(nested, classes, name="balanced")


def test_default_variant_has_linear_leaves_and_is_cheap_at_many_classes():
    """At 600 classes under 30 subgroups the default costs far less than leaf bottlenecks would,
    and under twice the flat network."""
    assert DEFAULT_VARIANT == LINEAR and VARIANTS[LINEAR].preset["linear_leaves"]
    assert len(variant_branches(LINEAR, 3).widths) == 2
    tree = balanced_tree(3, 10, 20)
    trunk = TrunkConfig("resnet18")
    linear = create_model(tree, LINEAR, trunk).eval()
    lean = create_model(tree, "nhl-lean", trunk).eval()
    flat = create_model(tree, "flat", trunk).eval()
    shape = (3, 32, 32)
    assert count_macs(linear, shape) < 0.5 * count_macs(lean, shape)
    assert count_macs(linear, shape) < 2 * count_macs(flat, shape)
