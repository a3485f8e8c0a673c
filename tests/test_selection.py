"""What names mean as classes: concepts, overlaps and the card's own command (issue 21).

Needs WordNet 3.0 through nltk (``.ci/run`` installs Debian's wordnet-base and runs
``nhl hierarchy setup-wordnet``); every tree here ships with nhl.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, make_tiny_data, run_nhl, tiny_model

from nhlcli.errors import NhlError
from nhlcli.experts import cut_model
from nhlcli.model.attention import class_attention
from nhlcli.model.files import read_metadata, save_model
from nhlcli.taxonomy import Tree, shipped_tree
from nhlcli.taxonomy.wordnet import wordnet_reader

pytestmark = pytest.mark.needs_data  # WordNet

SHARKS = ["great white shark", "tiger shark", "hammerhead"]
IMAGENET_TREES = [
    "imagenet-1k-wordnet-l2",
    "imagenet-1k-wordnet-l3",
    "imagenet-1k-wordnet-l4",
    "imagenet-1k-breeds-l3",
    "imagenet-1k-superclass-l2",
]


def names(tree: Tree, classes) -> list[str]:
    return [tree.node(c).name for c in classes]


def hyponym_classes(tree: Tree, synset_name: str) -> set[str]:
    """The classes of ``tree`` below a synset, straight from nltk (the oracle)."""
    wn = wordnet_reader()
    below = {f"n{s.offset():08d}" for s in wn.synset(synset_name).closure(lambda s: s.hyponyms())}
    below |= {f"n{wn.synset(synset_name).offset():08d}"}
    return {c for c in tree.classes if tree.node(c).wnid in below}


@pytest.mark.parametrize("tree_name", IMAGENET_TREES)
def test_shark_hammerhead_keeps_the_three_sharks_on_every_shipped_imagenet_tree(tree_name):
    tree = shipped_tree(tree_name)
    selection = tree.select(["shark", "hammerhead"])
    assert names(tree, selection.classes) == SHARKS
    notes = selection.notes(tree)
    assert any("'hammerhead' by 'shark' and 'hammerhead'" in line for line in notes), notes


def test_concepts_resolve_to_their_hyponym_closure_whether_or_not_they_are_nodes():
    tree = shipped_tree("imagenet-1k-wordnet-l3")
    for word, synset in [("dog", "dog.n.01"), ("domestic cat", "domestic_cat.n.01"),
                         ("fish", "fish.n.01"), ("vehicle", "vehicle.n.01")]:  # fmt: skip
        got = set(tree.select([word]).classes)
        assert got == hyponym_classes(tree, synset), word
    assert len(tree.select(["dog"]).classes) == 118  # ImageNet's 118 dog breeds
    assert names(tree, tree.select(["domestic cat"]).classes) == [
        "tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"
    ]  # fmt: skip
    # a synset name, a WordNet id and a plural say the same
    for spelling in ["shark.n.01", "n01482330", "sharks", "Shark"]:
        assert names(tree, tree.select([spelling]).classes) == SHARKS, spelling


def test_a_word_with_several_senses_takes_the_first_that_covers_classes_and_says_so():
    tree = shipped_tree("imagenet-1k-wordnet-l3")
    selection = tree.select(["cat"])
    assert selection.matches[0].concept == "cat.n.01"
    assert "big_cat.n.01" in selection.matches[0].other_senses
    assert any("big_cat.n.01" in line for line in selection.notes(tree))


def test_an_inner_node_named_by_a_word_takes_every_class_wordnet_puts_below_it():
    tree = shipped_tree("imagenet-1k-superclass-l2")  # its node 'shark' holds only hammerhead
    match = tree.select(["shark"]).matches[0]
    assert match.node == "superclass-002" and names(tree, match.classes) == SHARKS
    assert any("superclass-002" in line for line in tree.select(["shark"]).notes(tree))
    # the node's id means exactly the node
    assert names(tree, tree.select(["superclass-002"]).classes) == ["hammerhead"]


def test_inner_nodes_answer_to_their_synsets_lemmas():
    tree = shipped_tree("imagenet-1k-wordnet-l2")
    assert tree.node(tree.resolve("hound dog")).name == "hound"
    assert tree.node(tree.resolve("hoofed mammal")).name == "ungulate"
    # a class's own name wins over a group's alias
    l3 = shipped_tree("imagenet-1k-wordnet-l3")
    assert l3.node(l3.resolve("screen")).is_leaf


def test_unknown_and_empty_concepts_and_literal_repeats_are_refused():
    tree = shipped_tree("imagenet-1k-wordnet-l3")
    with pytest.raises(NhlError, match="closest concepts that do: shark"):
        tree.select(["sharrk"])
    with pytest.raises(NhlError, match="galaxy"):  # a concept with no class below it
        tree.select(["galaxy"])
    with pytest.raises(NhlError, match="twice"):
        tree.select(["shark", "Shark"])
    with pytest.raises(NhlError, match="empty"):
        tree.select([" "])
    with pytest.raises(NhlError, match=r"pass a list of names, e.g. \['shark', 'ray'\]"):
        tree.select("shark,ray")  # a notebook's comma string, not read letter by letter


def test_trees_without_wordnet_ids_keep_their_own_names():
    tree = Tree.from_nested(
        {"id": "root", "name": "all", "children": [
            {"id": "fruit", "name": "fruit", "children": [{"id": "apple", "name": "apple"}]},
            {"id": "fish", "name": "fish", "children": [{"id": "shark", "name": "shark"}]},
        ]},
        ["apple", "shark"],
    )  # fmt: skip
    assert tree.select(["fish"]).classes == ("shark",)
    with pytest.raises(NhlError, match="unknown class or node 'dog'"):
        tree.select(["dog"])


@pytest.mark.slow
def test_the_cards_command_cuts_the_sharks_and_records_what_each_name_meant(tmp_path):
    """``nhl cutout --classes shark,hammerhead`` on a 1000-class model over a shipped tree."""
    tree = shipped_tree("imagenet-1k-wordnet-l3")
    parent = save_model(tiny_model(tree, width=4), tmp_path / "in1k.safetensors")
    out = tmp_path / "sharks.safetensors"
    run = run_nhl("cutout", parent, "--classes", "shark,hammerhead", "-o", out, "--no-latency")
    assert run.code == 0, run.err
    assert "named more than once" in run.out and "great white shark" in run.out
    meta = read_metadata(out)
    assert names(Tree.from_dict(meta["tree"]), Tree.from_dict(meta["tree"]).classes) == SHARKS
    recorded = meta["expert"]["selection"]
    assert recorded[0]["name"] == "shark" and recorded[0]["wordnet"] == "shark.n.01"
    assert len(recorded[0]["classes"]) == 3 and recorded[1]["classes"] == ["n01494475"]
    unknown = run_nhl("cutout", parent, "--classes", "sharrk", "-o", tmp_path / "x.safetensors")
    assert_one_line_error(unknown, "sharrk", "closest concepts")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_hierarchy_resolve_prints_what_names_mean():
    run = run_nhl("hierarchy", "resolve", "imagenet-1k-wordnet-l3", "shark", "hammerhead", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert [m["name"] for m in report["names"]] == ["shark", "hammerhead"]
    assert len(report["classes"]) == 3 and report["notes"]
    text = run_nhl("hierarchy", "resolve", "imagenet-1k-wordnet-l3", "domestic cat")
    assert text.code == 0 and "5 classes" in text.out and "domestic_cat.n.01" in text.out
    assert_one_line_error(run_nhl("hierarchy", "resolve", "imagenet-1k-wordnet-l3", "sharrk"), "closest")


def test_attend_on_a_concept_scales_each_node_of_its_classes_once():
    tree = shipped_tree("imagenet-1k-wordnet-l3")
    model = tiny_model(tree, width=4)
    sharks = tree.select(["shark"]).classes
    for depth, scale in class_attention(model, [("shark", 2.0)], level="path").items():
        nodes = {tree.path(c)[depth] for c in sharks}
        position = {n: i for i, n in enumerate(tree.level(depth))}
        expected = torch.ones(len(position))
        expected[[position[n] for n in nodes]] = 2.0  # shared ancestors once, not 2**3
        assert torch.equal(scale, expected), depth
    with pytest.raises(NhlError, match="same classes twice"):
        class_attention(model, [("shark", 2.0), ("shark.n.01", 3.0)])


@pytest.mark.slow
def test_train_and_eval_classes_take_concepts_and_refuse_a_repeat(tmp_path):
    folders = ["n01484850", "n01491361", "n01494475", "n01440764"]  # three sharks and a tench
    data = make_tiny_data.make_image_folder(tmp_path / "data", folders, per_class=2, size=16)
    tree_file = shipped_tree("imagenet-1k-wordnet-l3").subtree(folders).save(tmp_path / "t.json")
    out = tmp_path / "sharks.safetensors"
    common = ("--data", data, "--input-size", "16", "--epochs", "1", "--batch-size", "4", "--workers", "0")
    run = run_nhl("train", *common, "--hierarchy", tree_file, "--classes", "shark", "-o", out)
    assert run.code == 0, run.err
    assert read_metadata(out)["training"]["classes"] == ["shark"]
    assert Tree.from_dict(read_metadata(out)["tree"]).classes == folders[:3]
    whole = save_model(tiny_model(Tree.load(tree_file), width=4), tmp_path / "whole.safetensors")
    report = run_nhl("eval", whole, "--data", data, "--workers", "0", "--classes", "shark", "--json")
    assert report.code == 0, report.err
    assert json.loads(report.out)["num_classes"] == 3
    twice = run_nhl("eval", whole, "--data", data, "--workers", "0", "--classes", "shark,shark")
    assert_one_line_error(twice, "twice")
    assert cut_model(tiny_model(Tree.load(tree_file), width=4), ["teleost fish"]).tree.classes == [
        "n01440764"
    ]
