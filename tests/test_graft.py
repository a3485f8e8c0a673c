"""Grafting new classes onto a trained NHL (issue 39): every old logit bit-identical before and
after, experts of old classes unchanged, experts mixing old and new classes exact, the tree and
the file growing with the classes, and one-line refusals of what would break those promises."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import (
    CLASSES,
    QUICK,
    assert_one_line_error,
    make_tiny_data,
    nested_tree,
    run_nhl,
    tiny_model,
    two_level_tree,
)

from nhlcli.errors import NhlError
from nhlcli.experts import cut_model
from nhlcli.graft.branches import GraftBranches, frozen_forward, merge
from nhlcli.graft.run import GraftRequest, graft_model
from nhlcli.graft.tree import grow_tree, place_by_reference, place_under
from nhlcli.model.files import read_metadata, save_model
from nhlcli.model.loading import open_model
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.tree import Tree

NEW = ["grape", "kiwi"]
FRUIT = ["apple", "banana", "cherry", "fig"]  # the tiny tree's "fruit" node
NEW_ENTRIES = [ClassEntry(c, c) for c in NEW]


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _randomised(graft: GraftBranches) -> GraftBranches:
    """New branches with weights and BatchNorm statistics far from their initial values, as after
    training (zero-initialised last BN weights would hide a misplaced row)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in [*graft.parameters(), *graft.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) * 0.5 + 0.1)
    return graft.eval()


@pytest.mark.parametrize("variant", ["nhl", "nhl-lean", "nhl-scale"])
@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("where", ["beside old leaves", "in a new group"])
def test_every_old_logit_is_bit_identical_and_the_new_ones_are_the_new_branches(variant, levels, where):
    tree = nested_tree(levels)
    if where == "in a new group" and levels == 1:
        pytest.skip("a 1-level tree has no groups: its new classes always sit beside the old ones")
    model = tiny_model(tree, variant=variant, seed=0)
    node = tree.root if levels == 1 or where == "in a new group" else tree.level(levels - 1)[0]
    group = "berries" if where == "in a new group" else None
    grown = grow_tree(tree, place_under(tree, NEW_ENTRIES, node, group))
    graft = _randomised(GraftBranches(model, grown.tree))
    images = torch.randn(6, 3, 32, 32)
    maps, old = frozen_forward(model, images)
    with torch.no_grad():
        new = graft(maps)
        result = merge(model, grown.tree, graft)(images)
    assert torch.equal(result[:, : len(CLASSES)], old)
    assert torch.allclose(result[:, len(CLASSES) :], new, atol=1e-5)
    assert result.shape == (6, len(CLASSES) + len(NEW))


@pytest.mark.parametrize("variant", ["nhl", "nhl-scale"])
def test_experts_of_old_classes_are_unchanged_and_mixed_experts_are_exact(variant):
    tree = nested_tree(2)
    model = tiny_model(tree, variant=variant, seed=0)
    grown_tree = grow_tree(tree, place_under(tree, NEW_ENTRIES, "fruit")).tree
    grown = merge(model, grown_tree, _randomised(GraftBranches(model, grown_tree)))
    images = torch.randn(6, 3, 32, 32)
    before, after = cut_model(model, ["apple", "daisy"]), cut_model(grown, ["apple", "daisy"])
    assert before.tree.to_dict()["tree"] == after.tree.to_dict()["tree"]
    assert _same_state(before, after)
    mixed = cut_model(grown, ["banana", "kiwi", "elm"])
    index = torch.tensor([grown_tree.class_index(c) for c in mixed.tree.classes])
    with torch.no_grad():
        assert torch.equal(before(images), after(images))
        # as exact as any expert: the parent's logits up to the summation order of fewer nodes
        assert torch.allclose(mixed(images), grown(images).index_select(1, index), atol=1e-5)


def test_a_new_class_goes_under_its_node_and_a_higher_node_gets_a_new_group():
    tree = nested_tree(3)
    beside = grow_tree(tree, place_under(tree, NEW_ENTRIES, "apple~0")).tree
    assert [beside.parent(c) for c in NEW] == ["apple~0", "apple~0"]
    assert beside.classes == [*CLASSES, *NEW] and beside.levels == 3
    grouped = grow_tree(tree, place_under(tree, NEW_ENTRIES, "plant", "berries"))
    chain = grouped.tree.path("kiwi")
    assert chain[:2] == ["root", "plant"] and grouped.tree.node(chain[2]).name == "berries"
    assert grouped.new_groups == [chain[2]] and grouped.record()["parents"]["kiwi"] == chain[2]
    top = grow_tree(tree, place_under(tree, NEW_ENTRIES, "root", "berries")).tree
    assert [top.node(n).name for n in top.path("grape")[1:3]] == ["berries", "berries"]
    # old nodes keep their order; each new node comes last among its siblings
    for depth in (1, 2, 3):
        assert [n for n in top.level(depth) if n in set(tree.level(depth))] == tree.level(depth)


def test_placement_by_a_reference_tree_reuses_existing_groups_and_brings_new_ones():
    tree = nested_tree(2)
    reference = Tree.from_dict({
        "format": "nhl-tree", "version": 1, "classes": [*CLASSES, "grape", "rose"],
        "nodes": [{"id": "root", "name": "all"}, {"id": "fruit", "name": "fruit", "parent": "root"},
                  {"id": "flower", "name": "flower", "parent": "root"},
                  *({"id": c, "name": c, "parent": "fruit"} for c in [*FRUIT, "grape"]),
                  *({"id": c, "name": c, "parent": "flower"} for c in ("daisy", "elm", "rose"))],
    })  # fmt: skip
    grown = grow_tree(tree, place_by_reference(tree, reference, ["grape", "rose"]))
    assert grown.tree.parent("grape") == "fruit"  # the model's own group
    assert grown.tree.parent("rose") == "flower" and grown.new_groups == ["flower"]  # the reference's


def test_new_classes_start_neutral():
    tree = two_level_tree()
    model = tiny_model(tree, variant="nhl-scale", seed=0)
    graft = GraftBranches(model, grow_tree(tree, place_under(tree, NEW_ENTRIES, "fruit")).tree)
    assert not graft.heads.weight.any()
    assert torch.allclose(graft.heads.bias, model.heads.bias.mean().expand(len(NEW)))


def test_names_that_cannot_be_grafted_are_refused():
    tree = two_level_tree()
    with pytest.raises(NhlError, match="already in the model"):
        grow_tree(tree, place_under(tree, [ClassEntry("apple", "apple")], "fruit"))
    with pytest.raises(NhlError, match="unknown class or node"):
        place_under(tree, NEW_ENTRIES, "tree-nuts")
    with pytest.raises(NhlError, match="is a class of the model"):
        place_under(tree, NEW_ENTRIES, "apple")
    with pytest.raises(NhlError, match="drop `group`"):
        place_under(tree, NEW_ENTRIES, "fruit", "berries")


# --------------------------------------------------------------------------- training on images
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny NHL over six classes and an image folder with those and two new ones."""
    root = tmp_path_factory.mktemp("graft")
    save_model(tiny_model(two_level_tree(), seed=0), root / "m.safetensors")
    make_tiny_data.make_image_folder(root / "data", [*CLASSES, *NEW], per_class=6, size=32)
    return root


def _request(root, **changes):
    base = dict(data=root / "data", classes=NEW, under="fruit", epochs=2, batch_size=4, workers=0, amp=False)
    return GraftRequest(**{**base, **changes})


def test_training_moves_only_the_new_rows_and_repeats_with_its_seed(files):
    model = open_model(files / "m.safetensors")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = graft_model(model, _request(files), measure=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input untouched
    grown = first.model.state_dict()
    for key, old in before.items():
        if key.startswith(("levels.1.", "heads.")):  # the leaf level: new rows appended under fruit
            rows = [first.grown.tree.level(2).index(c) for c in model.tree.level(2)]
            assert torch.equal(grown[key][rows], old)
        elif key.startswith("levels."):
            assert torch.equal(grown[key], old)  # no new group: level 1 is the old one
        else:
            assert torch.equal(grown[key], old), key  # trunk weights and BatchNorm statistics
    again = graft_model(open_model(files / "m.safetensors"), _request(files), measure=False)
    assert _same_state(first.model, again.model)
    assert len(first.history) == 2 and first.record["images"]["new"] == 12
    # 12 of the 36 old training images an epoch: the old logits trained shifted by log(12/36)
    assert first.record["images"]["old_logit_shift"] == pytest.approx(math.log(12 / 36), abs=1e-4)


def test_nhl_graft_writes_a_grown_model_that_answers_old_classes_as_before(files, tmp_path):
    out, tree_out = tmp_path / "grown.safetensors", tmp_path / "grown-tree.json"
    run = run_nhl("graft", files / "m.safetensors", "--data", files / "data", "--classes", "grape,kiwi",
                  "--under", "root", "--group", "berries", "-o", out, "--save-tree", tree_out,
                  "--epochs", "1", "--batch-size", "4", "--workers", "0", "--json")  # fmt: skip
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert summary["classes"] == NEW and summary["old_classes"] == len(CLASSES)
    assert summary["measured"]["images_new"] == 6 and summary["measured"]["images_old"] == 18
    old, grown = open_model(files / "m.safetensors"), open_model(out)
    assert grown.tree.classes == [*CLASSES, *NEW] and Tree.load(tree_out) == grown.tree
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(grown(images)[:, : len(CLASSES)], old(images))
    record = read_metadata(out)["graft"]
    assert len(record) == 1 and record[0]["parent_file"] == "m.safetensors" and record[0]["when"]
    assert record[0]["new_groups"] and record[0]["parents"]["grape"] == record[0]["new_groups"][0]
    # a second graft appends its record; the file keeps both
    twice = tmp_path / "twice.safetensors"
    data = tmp_path / "more"
    make_tiny_data.make_image_folder(data, [*CLASSES, *NEW, "lime"], per_class=4, size=32)
    run = run_nhl("graft", out, "--data", data, "--classes", "lime", "--under", "fruit", "-o", twice,
                  "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-measure")  # fmt: skip
    assert run.code == 0, run.err
    assert [r["classes"] for r in read_metadata(twice)["graft"]] == [NEW, ["lime"]]
    run = run_nhl("eval", twice, "--data", data, "--workers", "0", "--json")
    assert run.code == 0, run.err


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--classes", "apple", "--under", "fruit"), ["'apple' is already a class of the model"]),
        (("--classes", "grape", "--under", "nuts"), ["unknown class or node", "nuts"]),
        (("--classes", "grape", "--under", "apple"), ["is a class of the model", "name the group above it"]),
        (("--classes", "mango", "--under", "fruit"), ["'mango' not among the classes"]),
        (("--classes", "grape"), ["say where the new classes go", "--under NODE"]),
        (("--classes", "grape", "--group", "x"), ["--group", "give --under too"]),
        (("--classes", "grape", "--under", "fruit", "--tree", "t.json"), ["--under NODE or --tree"]),
        (("--classes", "grape", "--under", "fruit", "--negatives", "0"), ["--negatives", "positive"]),
    ],
)
def test_graft_requests_that_would_break_a_promise_are_refused(files, tmp_path, args, fragments):
    out = tmp_path / "g.safetensors"
    run = run_nhl("graft", files / "m.safetensors", "--data", files / "data", *args, "-o", out,
                  "--workers", "0", cwd=tmp_path)  # fmt: skip
    assert_one_line_error(run, *fragments)
    assert not out.exists()


def test_data_without_images_of_a_new_class_is_refused(files, tmp_path):
    data = tmp_path / "data"
    make_tiny_data.make_image_folder(data, [*CLASSES, "grape"], per_class=4, size=32)
    grown = grow_tree(two_level_tree(), place_under(two_level_tree(), NEW_ENTRIES, "fruit")).tree
    grown.save(tmp_path / "all.json")  # a reference that knows kiwi, which the data lacks
    out = tmp_path / "g.safetensors"
    run = run_nhl("graft", files / "m.safetensors", "--data", data, "--classes", "grape,kiwi", "--tree",
                  tmp_path / "all.json", "-o", out, "--workers", "0")  # fmt: skip
    assert_one_line_error(run, "has no images of the new class 'kiwi'")
    assert not out.exists()


def test_gated_and_flat_models_are_refused(files, tmp_path):
    gated, old_data = tmp_path / "gated.safetensors", tmp_path / "old"
    make_tiny_data.make_image_folder(old_data, CLASSES, per_class=4, size=32)
    run = run_nhl("gates", "fit", files / "m.safetensors", "-o", gated, "--data", old_data,
                  "--epochs", str(QUICK.epochs), "--workers", "0")  # fmt: skip
    assert run.code == 0, run.err
    out = tmp_path / "g.safetensors"
    run = run_nhl("graft", gated, "--data", files / "data", "--classes", "grape", "--under", "fruit",
                  "-o", out)  # fmt: skip
    assert_one_line_error(run, "gated file", "nhl gates fit GROWN")
    save_model(tiny_model(two_level_tree(), kind="flat"), tmp_path / "flat.safetensors")
    run = run_nhl("graft", tmp_path / "flat.safetensors", "--data", files / "data", "--classes", "grape",
                  "--under", "fruit", "-o", out)  # fmt: skip
    assert_one_line_error(run, "has no per-class branches", "needs an NHL model")
    assert not out.exists()


def test_the_command_line_defaults_are_the_librarys():
    import inspect

    from nhlcli.cli.graft import graft_command
    from nhlcli.graft.run import GRAFT_EPOCHS, GRAFT_LR

    options = inspect.signature(graft_command).parameters
    assert options["epochs"].default.default == GRAFT_EPOCHS == GraftRequest(data="d", classes=["c"]).epochs
    assert f"{GRAFT_LR:g}" in options["lr"].default.help
