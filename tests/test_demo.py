"""``nhl demo`` end to end on a tiny generated Fashion-MNIST (same file format as the real one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from conftest import make_tiny_data, run_nhl
from rich.console import Console

from nhlcli.cli.demo import closing_table
from nhlcli.demo import (
    DEMO_EPOCHS,
    FOOTWEAR,
    DemoResult,
    demo_tree,
    epochs_for_budget,
    measure_train_rate,
    recipe_args,
)
from nhlcli.errors import NhlError
from nhlcli.model.files import load_model
from nhlcli.model.nhl import with_input_size
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig


def test_demo_trains_cuts_the_footwear_expert_and_compares(tmp_path):
    data = make_tiny_data.make_fashion_mnist_idx(tmp_path / "fm", n_train=256, n_test=60)
    env = {**os.environ, "NHL_DATA": str(data), "NHL_OFFLINE": "1"}
    work = tmp_path / "work"
    run = run_nhl("demo", "--epochs", "1", "--workdir", work, "--json", env=env, timeout=900)
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert summary["tree_source"] == "wordnet"  # CI installs WordNet
    full, expert = summary["full"], summary["expert"]
    model = load_model(full["file"])
    cut = load_model(expert["file"])
    assert [cut.tree.node(c).name.lower() for c in cut.tree.classes] == list(FOOTWEAR)
    assert cut.metadata["expert"]["parent_sha256"]
    assert (work / "tree.json").is_file()
    # the expert answers as the full model restricted to footwear (eq. 3): the same accuracy
    assert expert["top1"] == full["top1_on_footwear"]
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


def test_the_demo_trains_as_many_epochs_as_fit_its_budget():
    # one epoch = 60k training images plus the 10k test images at three times the rate, +25%
    assert epochs_for_budget(1300.0) == 7  # 2-core AVX512-BF16: 61 s an epoch
    assert epochs_for_budget(506.0) == 2  # 2-core AVX2, float32: 156 s an epoch
    assert epochs_for_budget(50_000.0) == DEMO_EPOCHS  # a GPU: capped
    assert epochs_for_budget(10.0) == 1  # never less than one


def test_the_training_rate_probe_leaves_the_model_untouched():
    tree, _ = demo_tree()
    model = create_model(tree, "nhl", TrunkConfig("resnet18", None, 1))
    model.input_config = with_input_size(model.input_config, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert measure_train_rate(model, steps=2) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
