"""The built-in emoji data set and Unicode's tree (Debian's unicode-data and fonts-noto-color-emoji,
which .ci/run installs): classes, merged glyphs, a fixed test set, new training images, the tree,
and a small subset through train, eval and cutout."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_nhl

from nhlcli.data import open_dataset, split_name
from nhlcli.data.emoji import EmojiDataset
from nhlcli.experts.cutout import cutout_file
from nhlcli.experts.other import OtherRequest, add_other_head
from nhlcli.taxonomy import build_tree, load_class_list, shipped_tree
from nhlcli.taxonomy.emoji import emoji_test_file, merged_glyphs, parse_emoji_test
from nhlcli.taxonomy.tree import Tree


def test_the_classes_are_unicodes_fully_qualified_emoji_without_skin_tones_identical_glyphs_merged():
    raw = parse_emoji_test(emoji_test_file())
    assert len(raw) == 1870  # Unicode 15.0: fully-qualified, no skin-tone variants
    assert len({g.group for g in raw}) == 9 and len({(g.group, g.subgroup) for g in raw}) == 99
    classes = load_class_list("emoji")
    merged = merged_glyphs()
    assert len(classes) == 1870 - sum(len(names) - 1 for names in merged) == 1861
    assert ("flag: Norway", "flag: Bouvet Island", "flag: Svalbard & Jan Mayen") in merged
    norway = next(c for c in classes if c.name == "flag: Norway")
    assert norway.id == "1F1F3-1F1F4" and "flag: Bouvet Island" in norway.aliases
    assert next(c for c in classes if c.name == "cat face").id == "1F431"  # ids from code points
    assert len({c.id for c in classes}) == len(classes)


def test_the_test_split_is_fixed_and_training_images_are_new_each_draw_but_seeded():
    first, again = EmojiDataset("val"), EmojiDataset("val")
    for index in (0, 777, len(first) - 1):
        assert np.array_equal(np.asarray(first.load_image(index)), np.asarray(again.load_image(index)))
    assert split_name("emoji", "val") == "test"
    train = EmojiDataset("train", size=48)
    torch.manual_seed(3)
    one = [np.asarray(train.load_image(i)) for i in range(4)]
    two = [np.asarray(train.load_image(i)) for i in range(4)]
    torch.manual_seed(3)
    replay = [np.asarray(train.load_image(i)) for i in range(4)]
    assert one[0].shape == (48, 48, 3)
    assert not any(np.array_equal(a, b) for a, b in zip(one, two, strict=True))  # a new epoch, new images
    assert all(np.array_equal(a, b) for a, b in zip(one, replay, strict=True))  # the same seed, the same
    assert open_dataset("emoji", "train", mode="L", image_size=40).load_image(0).mode == "L"


def test_unicodes_tree_ships_and_subsets_by_group_and_subgroup():
    tree = shipped_tree("emoji-unicode-l3")
    fresh = build_tree("emoji", load_class_list("emoji"), name="emoji-unicode-l3")
    assert fresh.to_dict()["tree"] == tree.to_dict()["tree"] and tree.classes == fresh.classes
    assert tree.levels == 3 and len(tree.level(1)) == 9 and len(tree.level(2)) == 99
    assert tree.source["params"]["unicode"] == "15.0"
    assert len(tree.select(["Animals & Nature"]).classes) == 152
    assert len(tree.select(["Flags"]).classes) == 269 - 8  # 8 flags merged into others
    smiling = tree.select(["face-smiling"]).classes  # a subgroup by its bare name
    assert len(smiling) == 14 and tree.node(smiling[0]).name == "grinning face"
    assert tree.select(["cat face"]).classes == ("1F431",)  # the emoji, not the subgroup cat-face
    two = build_tree("emoji", load_class_list("emoji")[:40], levels=2)
    assert two.levels == 2 and [two.node(n).name for n in two.level(1)] == ["Smileys & Emotion"]


@pytest.mark.slow
def test_missing_debian_packages_are_named_in_one_line(tmp_path):
    env = {**os.environ, "NHL_EMOJI_TEST": str(tmp_path / "missing.txt")}
    run = run_nhl("hierarchy", "build", "-s", "emoji", "-c", "emoji", "-o", tmp_path / "t.json", env=env)
    assert_one_line_error(run, "unicode-data")
    env = {**os.environ, "NHL_EMOJI_FONT": str(tmp_path / "missing.ttf")}
    run = run_nhl("train", "--data", "emoji", "-o", tmp_path / "m.safetensors", env=env)
    assert_one_line_error(run, "fonts-noto-color-emoji")
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_a_subgroup_of_emoji_trains_evaluates_and_cuts(tmp_path):
    model = tmp_path / "smiles.safetensors"
    train = run_nhl(
        "train", "--data", "emoji", "--classes", "face-smiling", "--backbone", "resnet18",
        "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16", "--workers", "0",
        "--input-size", "32", "-o", model, "--json",
    )  # fmt: skip
    assert train.code == 0, train.err
    evaluated = run_nhl("eval", model, "--data", "emoji", "--workers", "0", "--json")
    assert evaluated.code == 0, evaluated.err
    report = json.loads(evaluated.out)
    assert report["split"] == "test" and report["num_classes"] == 14 and report["images"] == 14 * 4
    expert = tmp_path / "two.safetensors"
    cut = run_nhl("cutout", model, "--classes", "grinning face,rolling on the floor laughing",
                  "-o", expert, "--no-latency", "--json")  # fmt: skip
    assert cut.code == 0, cut.err
    assert json.loads(cut.out)["kept_classes"] == ["grinning face", "rolling on the floor laughing"]
    # training images are drawn anew from torch's state: an other head fitted twice is the same
    heads = []
    for state in (1, 2):
        cut = cutout_file(model, ["grinning face", "rolling on the floor laughing"])
        parent = Tree.from_dict(cut.lineage["parent_tree"])
        torch.manual_seed(state)
        add_other_head(cut.model, parent, OtherRequest("emoji", budget=0.5, workers=0), torch.device("cpu"))
        heads.append(cut.model.other)
    assert torch.equal(heads[0].linear.weight, heads[1].linear.weight)
    assert heads[0].spec.threshold == heads[1].spec.threshold


def test_names_with_commas_go_in_double_quotes():
    """30 emoji names hold commas ("family: man, woman, boy"): the one list parser takes them quoted."""
    names = '"family: man, woman, boy",cat face'
    run = run_nhl("hierarchy", "resolve", "emoji-unicode-l3", names, "--json")
    assert run.code == 0, run.err
    assert len(json.loads(run.out)["classes"]) == 2
    assert_one_line_error(run_nhl("hierarchy", "resolve", "emoji-unicode-l3", '"family: man'), "not closed")
