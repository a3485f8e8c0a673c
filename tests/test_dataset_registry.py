"""The data-set registry: a new data set is one module (``tests/tiny_shapes.py``) and one entry,
and then trains, evaluates and reports through nhl's library and commands; the built-in data
sets and image folders keep what their specs say."""

from __future__ import annotations

import pytest
import tiny_shapes
from conftest import make_tiny_data
from typer.testing import CliRunner

from nhlcli.data import (
    DATASETS,
    dataset_spec,
    default_workers,
    open_dataset,
    register_dataset,
    split_name,
)
from nhlcli.data.errors import DataError
from nhlcli.errors import NhlError
from nhlcli.evaluation import evaluate_file
from nhlcli.model.loading import open_model
from nhlcli.training.run import TrainRequest, run_training

QUICK = {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "lr": 1e-3, "warmup_epochs": 0.0}


@pytest.fixture
def shapes(tmp_path):
    """tiny-shapes registered for one test, with its tree saved as a file (its default tree)."""
    tree_file = tiny_shapes.shapes_tree().save(tmp_path / "shapes-tree.json")
    spec = register_dataset(tiny_shapes.spec(str(tree_file)))
    yield spec
    DATASETS.pop(spec.name)


def test_a_registered_data_set_trains_and_evaluates_from_its_spec_alone(tmp_path, shapes):
    out = tmp_path / "shapes.safetensors"
    said: list[str] = []
    request = TrainRequest(out, data="tiny-shapes", backbone="resnet10t", config=QUICK)
    run = run_training(request, say=said.append)
    # what the spec chose: its tree, grey input at its size, no loader workers, val called test
    model = open_model(out)
    assert model.tree.name == "tiny-shapes-l2" and model.tree.classes == ["ring", "disc", "bar", "column"]
    assert model.input_config.size == (1, 16, 16)
    assert run.config.workers == 0 and run.scored_on == "test"
    assert run.result.epochs_done == 1 and any(text.startswith("augmentation: small images") for text in said)
    report = evaluate_file(out, "tiny-shapes", workers=0)
    assert report["split"] == "test" and report["images"] == 4 * tiny_shapes.PER_CLASS["val"]
    assert set(report["per_class"]) == {"ring", "disc", "bar", "column"}


def test_the_commands_reach_a_registered_data_set(tmp_path, shapes):
    from nhlcli.cli import app

    out = tmp_path / "m.safetensors"
    args = ["--data", "tiny-shapes", "--backbone", "resnet10t", "--epochs", "1", "--batch-size", "8",
            "--max-steps-per-epoch", "2", "-o", str(out)]  # fmt: skip
    trained = CliRunner().invoke(app, ["train", *args], env={"COLUMNS": "200"})
    assert trained.exit_code == 0, trained.output
    # rich wraps long paths at any width: compare without the whitespace
    assert "".join(f"wrote {out}: test top-1".split()) in "".join(trained.output.split())
    evaluated = CliRunner().invoke(app, ["eval", str(out), "--data", "tiny-shapes"], env={"COLUMNS": "200"})
    assert evaluated.exit_code == 0, evaluated.output
    assert "m.safetensorsontiny-shapes(test,20images)" in "".join(evaluated.output.split())


def test_registering_a_name_twice_is_refused_unless_replaced(shapes):
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(shapes)
    assert register_dataset(shapes, replace=True) is shapes


def test_open_dataset_names_the_registered_data_sets(tmp_path, shapes):
    with pytest.raises(DataError, match="'fashion-mnist' or 'emoji' or 'tiny-shapes' or an ImageFolder"):
        open_dataset(tmp_path / "missing", "train")
    grey = open_dataset("tiny-shapes", "val")
    assert grey.load_image(0).mode == "L" and grey.load_image(0).size == (16, 16)
    assert open_dataset("tiny-shapes", "val", mode="RGB", image_size=24).load_image(0).size == (24, 24)


def test_a_data_set_without_a_demo_says_so(shapes):
    from nhlcli.demo import demo_task

    with pytest.raises(NhlError, match="no demo for 'tiny-shapes'; choose one of fashion-mnist, emoji"):
        demo_task("tiny-shapes")


def test_built_in_specs_and_an_image_folders_derived_one(tmp_path):
    fashion, emoji = dataset_spec("fashion-mnist"), dataset_spec("emoji")
    assert (fashion.in_chans, fashion.input_size) == (1, None)
    assert fashion.default_tree == "fashion-mnist-wordnet-l2"
    assert (emoji.in_chans, emoji.input_size, emoji.default_tree) == (3, 32, "emoji-unicode-l3")
    assert split_name("fashion-mnist", "val") == split_name("emoji", "validation") == "test"
    folder = make_tiny_data.make_image_folder(tmp_path / "d", ["a", "b"], per_class=2, size=8)
    derived = dataset_spec(folder)
    assert (derived.in_chans, derived.input_size, derived.default_tree, derived.demo) == (3, None, None, None)
    assert split_name(folder, "val") == "val" and split_name(folder, "train") == "train"
    assert default_workers("emoji", cores=16) == 0 and default_workers(folder, cores=16) == 8
