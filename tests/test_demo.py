"""``nhl demo`` end to end on a tiny generated Fashion-MNIST (same file format as the real one)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from conftest import assert_one_line_error, make_tiny_data, run_nhl
from rich.console import Console

from nhlcli.cli.demo import closing_table
from nhlcli.demo import FOOTWEAR, DemoResult, demo_tree, recipe_args
from nhlcli.errors import NhlError
from nhlcli.model.files import load_model


def test_demo_trains_cuts_the_footwear_expert_and_compares(tmp_path):
    data = make_tiny_data.make_fashion_mnist_idx(tmp_path / "fm", n_train=256, n_test=60)
    env = {**os.environ, "NHL_DATA": str(data), "NHL_OFFLINE": "1", "COLUMNS": "300"}
    work = tmp_path / "my work"
    run = run_nhl("demo", "--epochs", "1", "--workdir", work, env=env, timeout=900)
    assert run.code == 0, run.err
    summary = json.loads((work / "report.json").read_text())  # the report the demo promises
    assert summary["tree_source"] == "wordnet"  # CI installs WordNet
    # the closing hint pastes as it is: quoted class names, the model the demo wrote
    line = next(x for x in run.out.splitlines() if x.startswith("nhl cutout "))
    args = shlex.split(line)
    assert args[args.index("--classes") + 1] == ",".join(FOOTWEAR)
    assert Path(args[2]) == work / "fashion-nhl.safetensors"
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
