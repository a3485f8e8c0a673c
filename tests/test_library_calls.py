"""The library functions behind ``nhl hierarchy build|show`` and the training checks, called as a
notebook calls them: the same trees and files as the commands, and errors that name the
argument at fault (the CLI prints it as the flag)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import nested_tree, run_nhl, tiny_model, two_level_tree

from nhlcli.errors import NhlError
from nhlcli.gates.workflow import load_gated
from nhlcli.model.files import save_model
from nhlcli.taxonomy import Tree
from nhlcli.taxonomy.build import build_tree_for, llm_settings
from nhlcli.taxonomy.render import render_text, write_tree
from nhlcli.training.loop import TrainConfig, check_seed, resume_changes, validate_config


def _flags_free(exc: NhlError) -> None:
    assert "--" not in str(exc), str(exc)  # the library names arguments, never flags


def test_build_tree_for_gives_the_tree_the_command_writes(tmp_path):
    out = tmp_path / "t.json"
    run = run_nhl("hierarchy", "build", "--source", "flat", "--classes", "fashion-mnist", "-o", out)
    assert run.code == 0, run.err
    tree = build_tree_for("flat", "fashion-mnist")
    assert tree.name == "fashion-mnist-flat-l1" == Tree.load(out).name
    assert tree.to_dict() == json.loads(out.read_text())


def test_build_tree_for_names_a_class_file_by_its_stem_and_takes_a_given_name(tmp_path):
    classes = tmp_path / "fruit.txt"
    classes.write_text("apple\nbanana\ncherry\n")
    assert build_tree_for("flat", classes).name == "fruit-flat-l1"
    assert build_tree_for("flat", classes, name="mine").name == "mine"


def test_the_induced_source_asks_for_the_classifier_by_its_argument():
    with pytest.raises(NhlError, match="give `classifier`") as info:
        build_tree_for("induced")
    _flags_free(info.value)


@pytest.mark.parametrize(
    ("settings", "option", "printed"),
    [({"timeout": 0.0}, "timeout", "--timeout 0: give the seconds"), ({"max_retries": -1}, "max_retries",
                                                                        "--max-retries -1: give 0")],
)  # fmt: skip
def test_llm_settings_refuse_limits_that_cannot_work(settings, option, printed):
    with pytest.raises(NhlError) as info:
        llm_settings(**settings)
    assert info.value.option == option
    assert info.value.for_command_line().startswith(printed)
    _flags_free(info.value)
    assert llm_settings(model="m", timeout=5).timeout == 5


def test_write_tree_writes_text_formats_and_pictures(tmp_path):
    tree = nested_tree(3)
    newick = write_tree(tree, tmp_path / "t.nwk", "newick")
    assert newick == {"output": str(tmp_path / "t.nwk")}
    assert (tmp_path / "t.nwk").read_text() == render_text(tree, "newick")
    dot = tmp_path / "t.dot"
    write_tree(tree, dot, "dot", depth=1)
    assert dot.read_text() == render_text(tree, "dot", 1) != render_text(tree, "dot")
    picture = write_tree(tree, tmp_path / "t.svg", "svg", depth=2, highlight=[tree.classes[0]])
    assert picture["depth"] == 2 and picture["highlighted_classes"] == [tree.node(tree.classes[0]).name]
    assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")


def test_write_tree_refuses_a_depth_the_tree_lacks_and_writes_nothing(tmp_path):
    tree = nested_tree(2)
    with pytest.raises(NhlError) as info:
        write_tree(tree, tmp_path / "t.png", "png", depth=3)
    assert info.value.for_command_line() == "--depth 3: the tree has 2 levels; give a depth from 1 to 2"
    with pytest.raises(NhlError, match="'rich'"):
        write_tree(tree, tmp_path / "t.txt", "rich")
    assert list(tmp_path.iterdir()) == []


def test_training_checks_name_the_argument_and_the_cli_prints_the_flag():
    with pytest.raises(NhlError) as info:
        check_seed(-1)
    assert str(info.value).startswith("seed must be a whole number")
    assert info.value.for_command_line().startswith("--seed must be a whole number")
    with pytest.raises(NhlError) as info:
        validate_config(TrainConfig(warmup_epochs=-1.0))
    assert str(info.value) == "warmup_epochs must be 0 or more, got -1.0"
    assert info.value.for_command_line() == "--warmup-epochs must be 0 or more, got -1.0"
    stored = json.loads(json.dumps(TrainConfig(batch_size=64).__dict__))
    with pytest.raises(NhlError) as info:
        resume_changes(stored, TrainConfig(batch_size=32))
    _flags_free(info.value)
    assert "--batch-size 32 (the run's: 64)" in info.value.for_command_line()
    assert resume_changes(stored, TrainConfig(batch_size=64, epochs=3)) == {"epochs": [10, 3]}


def test_an_ungated_file_is_refused_with_the_command_that_gates_it(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model(two_level_tree()), path)
    with pytest.raises(NhlError, match="has no gates") as info:
        load_gated(path, torch.device("cpu"))
    _flags_free(info.value)
    assert f"'nhl gates fit {path}' and --output gated.safetensors" in info.value.for_command_line()
