"""``nhl demo`` end to end on a tiny generated Fashion-MNIST (same file format as the real one)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, make_tiny_data, run_nhl
from PIL import Image
from rich.console import Console

from nhlcli.cli.demo import closing_table
from nhlcli.data.emoji import EmojiDataset
from nhlcli.data.fashion_mnist import read_idx_images
from nhlcli.demo import DEFAULT_WORKDIR, DEMOS, FOOTWEAR, DemoResult, demo_tree, recipe_args, run_demo
from nhlcli.errors import NhlError
from nhlcli.model.loading import open_model


@pytest.mark.slow
def test_demo_trains_cuts_the_footwear_expert_and_compares(tmp_path):
    data = make_tiny_data.make_fashion_mnist_idx(tmp_path / "fm", n_train=256, n_test=60)
    env = {**os.environ, "NHL_DATA": str(data), "NHL_OFFLINE": "1", "COLUMNS": "300"}
    work = tmp_path / "my work"
    run = run_nhl("demo", "--epochs", "1", "--workdir", work, env=env, timeout=900)
    assert run.code == 0, run.err
    summary = json.loads((work / "report.json").read_text())  # the report the demo promises
    assert summary["tree_source"] == "wordnet"  # CI installs WordNet
    assert set(summary["threads"]) == {"training", "evaluation"} and min(summary["threads"].values()) >= 1
    assert summary["report"] == str(work / "report.json") and summary["tree"] == str(work / "tree.json")
    # the closing hint pastes as it is: quoted class names, the model the demo wrote
    line = next(x for x in run.out.splitlines() if x.startswith("nhl cutout "))
    args = shlex.split(line)
    assert args[args.index("--classes") + 1] == ",".join(FOOTWEAR)
    assert Path(args[2]) == work / "fashion-nhl.safetensors"
    # test images for nhl predict: the first test image of each class, pixel for pixel
    test_images = read_idx_images(data / "t10k-images-idx3-ubyte.gz")
    sample_images = DEMOS["fashion-mnist"].sample_images
    assert [Path(i["file"]).name for i in summary["images"]] == list(sample_images)
    for image in summary["images"]:
        assert image["test_index"] == {"sandal": 5, "sneaker": 7, "ankle-boot": 9, "shirt": 6}[image["class"]]
        with Image.open(image["file"]) as picture:
            assert picture.format == "PNG" and picture.mode == "L"
            assert np.array_equal(np.asarray(picture), test_images[image["test_index"]])
    predict = shlex.split(next(x for x in run.out.splitlines() if x.startswith("nhl predict ")))
    assert [Path(a) for a in predict[3:]] == [work / name for name in sample_images]
    full, expert = summary["full"], summary["expert"]
    model = open_model(full["file"])
    cut = open_model(expert["file"])
    assert [cut.tree.node(c).name.lower() for c in cut.tree.classes] == list(FOOTWEAR)
    assert cut.metadata["expert"]["parent_sha256"]
    assert (work / "tree.json").is_file()
    # the expert answers as the full model restricted to footwear (eq. 3): the same accuracy
    assert expert["top1"] == full["top1_on_expert_classes"]
    assert expert["images"] == 18  # labels are i % 10: classes 5, 7 and 9 of 60 test images
    assert expert["cost"]["params"]["total"] < full["cost"]["params"]["total"]
    assert expert["reduction_percent"]["params"]["branches"] > 50
    assert expert["reduction_percent"]["gmacs"] > 0
    assert model.input_config.size == (1, 32, 32)
    # the closing table a person reads
    result = DemoResult(Path(summary["workdir"]), summary["tree_source"], 1, full=full, expert=expert)
    console = Console(record=True, width=140)
    console.print(closing_table(result))
    text = console.export_text()
    assert "test top-1, footwear images" in text and "GMACs / image" in text and "latency batch 16" in text
    assert "test top-1, all 10 classes" in text


@pytest.mark.slow
def test_the_emoji_demo_trains_on_animals_and_nature_and_cuts_the_sea_animals_expert(tmp_path):
    # the library call behind `nhl demo --data emoji`, with epochs of two steps to stay quick
    result = run_demo(tmp_path / "w", epochs=1, say=lambda text: None, data="emoji", max_steps_per_epoch=2)
    summary = json.loads((tmp_path / "w" / "report.json").read_text())
    assert summary == json.loads(json.dumps(result.summary())) and summary["data"] == "emoji"
    full, expert = summary["full"], summary["expert"]
    assert full["cost"]["classes"] == 152 and full["images"] == 152 * 4  # the group's fixed test split
    assert len(expert["classes"]) == 12 and "shark" in expert["classes"] and "octopus" in expert["classes"]
    assert expert["images"] == 12 * 4 and expert["top1"] == full["top1_on_expert_classes"]
    assert expert["reduction_percent"]["params"]["total"] > 0 and expert["reduction_percent"]["gmacs"] > 0
    model = open_model(full["file"])
    assert model.input_config.size == (3, 32, 32) and model.tree.levels == 3
    assert model.metadata["training"]["classes"] == ["Animals & Nature"]
    # the sample images are the fixed test split's first image of their class, in colour
    test = EmojiDataset("val")
    for image in summary["images"]:
        with Image.open(image["file"]) as picture:
            assert picture.mode == "RGB" and picture.size == (32, 32)
            assert np.array_equal(np.asarray(picture), np.asarray(test.load_image(image["test_index"])))
        assert test.classes[test.targets[image["test_index"]]].name == image["class"]
    console = Console(record=True, width=160)
    console.print(closing_table(result))
    text = console.export_text()
    assert "Emoji, Animals & Nature" in text and "test top-1, sea animals images" in text
    # a second run in the same place is refused, the first run's files kept
    with pytest.raises(NhlError, match="earlier demo"):
        run_demo(tmp_path / "w", epochs=1, data="emoji")


@pytest.mark.slow
def test_demo_names_the_data_sets_it_knows():
    run = run_nhl("demo", "--data", "cifar10")
    assert_one_line_error(run, "cifar10", "fashion-mnist, emoji")


def test_demo_falls_back_to_the_shipped_tree_without_wordnet(monkeypatch):
    def no_wordnet(*args, **kwargs):
        raise NhlError("WordNet is not installed")

    monkeypatch.setattr("nhlcli.taxonomy.build_tree", no_wordnet)
    tree, source = demo_tree()
    assert source.startswith("shipped") and len(tree.classes) == 10


def test_recipe_args_are_train_options():
    args = recipe_args(3)
    assert args[args.index("--epochs") + 1] == "3"
    assert "--label-smoothing" in args and "--input-size" in args


@pytest.mark.slow
def test_demo_refuses_a_workdir_with_an_earlier_demos_files(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "fashion-nhl.safetensors").write_bytes(b"an earlier run's model")
    run = run_nhl("demo", "--workdir", work)
    assert_one_line_error(run, "earlier demo", "--overwrite")
    assert (work / "fashion-nhl.safetensors").read_bytes() == b"an earlier run's model"
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert_one_line_error(run_nhl("demo", "--workdir", plain), "not a directory")


@pytest.mark.slow
def test_demo_keeps_its_files_in_nhl_demo_by_default(tmp_path):
    # without --workdir the files go to ./nhl-demo, where the README's next commands look for them;
    # a test image left there by an earlier run is an earlier demo's file too
    (tmp_path / DEFAULT_WORKDIR).mkdir()
    (tmp_path / DEFAULT_WORKDIR / "sandal.png").write_bytes(b"an earlier run's image")
    run = run_nhl("demo", cwd=tmp_path)
    assert_one_line_error(run, DEFAULT_WORKDIR, "earlier demo", "sandal.png", "--overwrite")


def test_demo_runs_on_fewer_threads_while_other_processes_keep_the_cores_busy(monkeypatch):
    """Two processes each running a torch thread per core slow each other by up to 10x; the demo
    takes the cores the others leave free, at least one, and says so."""
    import torch

    from nhlcli import devices
    from nhlcli.demo import fit_threads_to_load

    cores = os.cpu_count() or 1
    assert devices.threads_beside_load(2, None) == 2  # no counters: as asked
    assert devices.threads_beside_load(cores, 0.0) == cores
    assert devices.threads_beside_load(cores, float(cores)) == 1
    assert devices.threads_beside_load(cores, cores - 1.0) == 1
    busy = devices.busy_cores_elsewhere(0.05)
    assert busy is None or 0.0 <= busy <= cores + 0.5
    said: list[str] = []
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(devices, "busy_cores_elsewhere", lambda: float(cores))
        assert fit_threads_to_load(cores, said.append) == 1 and torch.get_num_threads() == 1
        assert f"keep {cores:.1f} of {cores} CPU cores busy" in said[0] and "1 of" in said[0]
        monkeypatch.setattr(devices, "busy_cores_elsewhere", lambda: 0.0)
        assert fit_threads_to_load(cores, said.append) == cores and len(said) == 1
    finally:
        torch.set_num_threads(before)
