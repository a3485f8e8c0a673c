"""Models, training, resume, model files and DDP, on tiny generated data (CPU, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    CLASSES,
    assert_one_line_error,
    flat_tree,
    make_tiny_data,
    nested_tree,
    run_nhl,
    tiny_model,
)
from safetensors.torch import save_file

from nhlcli.errors import NhlError
from nhlcli.model.files import read_metadata, save_model
from nhlcli.model.loading import open_model
from nhlcli.model.nhl import BranchConfig, NHLModel, with_input_size
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.profiling import count_macs
from nhlcli.taxonomy import Tree
from nhlcli.taxonomy.sources import build_flat_tree
from nhlcli.training import TrainConfig, train
from nhlcli.training.checkpoint import latest, load_checkpoint


@pytest.mark.parametrize("backbone", ["resnet18", "convnextv2_atto"])
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_forward_shapes_and_class_order(backbone, levels):
    torch.manual_seed(0)
    tree = nested_tree(levels)
    assert tree.levels == levels
    model = tiny_model(tree, backbone).eval()
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, len(CLASSES))
    # the logit of class i comes from the leaf of class i, whatever the leaf order in the tree
    leaf_logits = model.heads(_last_features(model, x))
    leaf_order = tree.level(tree.levels)
    for i, c in enumerate(tree.classes):
        assert torch.equal(logits[:, i], leaf_logits[:, leaf_order.index(c)])


def _last_features(model: NHLModel, x: torch.Tensor) -> torch.Tensor:
    features = model.trunk(x)
    for level in model.levels:
        features = level(features)
    return features


def test_paper_size_resnet50_nhl_over_100_imagenet_classes():
    from nhlcli.taxonomy import build_tree, load_class_list

    entries = load_class_list("imagenet-1k")[::10]
    tree = build_tree("wordnet", entries, levels=3)
    model = NHLModel(tree, TrunkConfig("resnet50"))
    params = model.parameter_groups()
    assert params["trunk"] == pytest.approx(8.54e6, rel=0.01)
    # paper 000, Table 1: 25M parameters for ResNet50-NHL on ImageNet100
    assert 18e6 < params["total"] < 32e6


def test_training_lowers_loss_and_files_round_trip(tmp_path):
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=6, size=32)
    tree = nested_tree(2)
    model = tiny_model(tree)
    config = TrainConfig(epochs=3, batch_size=12, lr=3e-3, warmup_epochs=0, workers=0, augment=None, seed=1)
    out = tmp_path / "model.safetensors"
    result = train(model, data, out, config)
    losses = [h.train_loss for h in result.history]
    assert losses[-1] < losses[0]
    loaded = open_model(out)
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    meta = read_metadata(out)
    assert meta["kind"] == "nhl" and meta["tree"]["classes"] == CLASSES
    assert meta["input"]["size"] == [3, 32, 32] and len(meta["training"]["history"]) == 3


def test_resume_continues_from_the_saved_epoch_and_optimizer(tmp_path):
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=4, size=32)
    tree = nested_tree(2)
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-3, warmup_epochs=0, workers=0, augment=None, seed=3)
    ckdir = tmp_path / "ck"
    torch.manual_seed(0)
    first = train(
        tiny_model(tree),
        data,
        None,
        TrainConfig(**{**config.__dict__, "epochs": 1}),
        checkpoint_dir=ckdir,
    )
    assert first.epochs_done == 1
    saved = load_checkpoint(ckdir)
    assert saved.epoch == 1 and any(k.startswith("optim/") and k.endswith("exp_avg") for k in saved.tensors)
    step_after_one = saved.step
    torch.manual_seed(123)  # a different fresh init: resume must overwrite it
    resumed = train(
        tiny_model(tree),
        data,
        tmp_path / "m.safetensors",
        config,
        checkpoint_dir=ckdir,
        resume=True,
    )
    assert resumed.epochs_done == 2 and len(resumed.history) == 2
    assert resumed.history[0] == first.history[0]
    again = load_checkpoint(ckdir)
    assert again.epoch == 2 and again.step == 2 * step_after_one
    # the optimizer's step counter continued from the saved state instead of restarting at 0
    steps = [v for k, v in again.tensors.items() if k.endswith("/step")]
    assert steps and all(int(s) == again.step for s in steps)


def test_flat_model_uses_the_same_loop_and_file_format(tmp_path):
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=4, size=32)
    tree = nested_tree(1)
    model = create_model(tree, "flat", TrunkConfig("resnet18"))
    model.input_config = with_input_size(model.input_config, 32)
    out = tmp_path / "flat.safetensors"
    train(model, data, out, TrainConfig(epochs=1, batch_size=8, workers=0, augment=None))
    loaded = open_model(out)
    assert read_metadata(out)["kind"] == "flat"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded(x))


@pytest.mark.slow
def test_flat_trunk_is_the_nhl_trunk_with_a_linear_head(tmp_path):
    """The control for an NHL's savings: the same cut trunk, pooled into one linear layer."""
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=2, size=16)
    out = tmp_path / "cut.safetensors"
    common = ("--data", data, "--input-size", "16", "--epochs", "1", "--batch-size", "4", "--workers", "0")
    run = run_nhl("train", *common, "--variant", "flat-trunk", "-o", out, "--json")
    assert run.code == 0, run.err
    model = open_model(out)
    meta = read_metadata(out)
    nhl = create_model(Tree.from_dict(meta["tree"]), "nhl", TrunkConfig("resnet18"))
    assert meta["kind"] == "flat-trunk" and meta["trunk"]["split"] == nhl.trunk.config.split
    features = nhl.trunk.out_channels
    groups = model.parameter_groups()
    assert groups["trunk"] == nhl.parameter_groups()["trunk"]  # layer4 dropped, as in the NHL
    assert groups["branches"] == (features + 1) * len(CLASSES)  # one linear layer after pooling
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model.head.fc(model.trunk(x).mean(dim=(2, 3))))
    assert_one_line_error(run_nhl("cutout", out, "--classes", "banana", "-o", tmp_path / "e.safetensors"),
                          "flat model")  # fmt: skip
    induced = run_nhl("hierarchy", "build", "--source", "induced", "--model", out, "-o", tmp_path / "t.json")
    assert induced.code == 0, induced.err  # its classifier rows cluster like a full flat model's


@pytest.mark.slow
def test_train_with_a_holdout_scores_on_it_and_records_it(tmp_path):
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=4, size=16)
    out = tmp_path / "m.safetensors"
    common = ("--data", data, "--input-size", "16", "--epochs", "1", "--batch-size", "4", "--workers", "0")
    run = run_nhl("train", *common, "--flat", "--holdout", "0.5", "-o", out)
    assert run.code == 0, run.err
    assert "hold-out (50% of train) top-1" in " ".join(run.out.split())
    assert read_metadata(out)["training"]["holdout"] == 0.5
    refused = run_nhl("train", *common, "--flat", "--holdout", "1", "-o", tmp_path / "x.safetensors")
    assert_one_line_error(refused, "--holdout")
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_model_files_give_clear_errors(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(NhlError, match="without nhl metadata"):
        open_model(foreign)
    model = tiny_model(nested_tree(2))
    good = save_model(model, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(NhlError, match="truncated"):
        open_model(truncated)
    pickle_like = tmp_path / "model.safetensors.pth"
    pickle_like.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    with pytest.raises(NhlError, match="not a readable safetensors file"):
        open_model(pickle_like)


@pytest.mark.slow
def test_cli_train_bad_inputs(tmp_path):
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=2, size=16)
    out = tmp_path / "m.safetensors"
    wrong_tree = run_nhl("train", "--data", data, "--hierarchy", "fashion-mnist-wordnet-l2", "-o", out)
    assert_one_line_error(wrong_tree, "not in the tree", "in the tree but not in the data")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_nhl("train", "--data", empty, "--flat", "-o", out), "no class folders")
    bad_image = data / "train" / "apple" / "broken.jpg"
    bad_image.write_bytes(b"not really a jpeg")
    broken = run_nhl(
        "train", "--data", data, "--flat", "--input-size", "16", "--epochs", "1", "--workers", "2", "-o", out
    )
    assert_one_line_error(broken, "broken.jpg")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    assert_one_line_error(run_nhl("eval", foreign, "--data", data), "without nhl metadata")
    assert not out.exists()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_write_one_valid_file(tmp_path):
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=4, size=16)
    tree_file = tmp_path / "tree.json"
    nested_tree(2).save(tree_file)
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "nhlcli",
            "train",
            "--data",
            str(data),
            "--hierarchy",
            str(tree_file),
            "--backbone",
            "resnet18",
            "--widths",
            "8",
            "--input-size",
            "16",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
            "-o",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads(chunk) for chunk in _json_objects(proc.stdout)]
    assert len(summaries) == 1  # rank 0 alone reports, and alone wrote the file
    assert out.is_file() and not list(tmp_path.glob(".ddp.safetensors.*"))
    assert open_model(out).tree.classes == CLASSES


def _json_objects(text: str) -> list[str]:
    objects, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
            start = i if depth == 1 else start
        elif ch == "}":
            depth -= 1
            if depth == 0 and start is not None:
                objects.append(text[start : i + 1])
    return objects


@pytest.mark.slow
def test_fashion_mnist_short_real_run_reaches_stated_accuracy(tmp_path):
    """Real images: 200 steps of 64 (12,800 of the 60,000 training images) reach 70% on the 10k test set.

    The default NHL (linear leaves) over the shipped 2-level WordNet tree, ResNet18 trunk at 28 px.
    """
    out = tmp_path / "fm.safetensors"
    args = "--backbone resnet18 --input-size 28 --widths 16 --epochs 1 --batch-size 64 --lr 3e-3"
    args += " --warmup-epochs 0 --augment none --max-steps-per-epoch 200 --workers 2 --json"
    run = run_nhl("train", "--data", "fashion-mnist", "-o", out, *args.split(), timeout=600)
    assert run.code == 0, run.err[-2000:]
    summary = json.loads(run.out)
    assert summary["val_top1"] >= 0.70, summary
    assert read_metadata(out)["tree"]["name"] == "fashion-mnist-wordnet-l2"


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    import signal
    import time

    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=4, size=16)
    out = tmp_path / "m.safetensors"
    common = ["train", "--data", str(data), "--flat", "--input-size", "16", "--batch-size", "8"]
    # a small rate: the test is about stopping and resuming, and at 3e-3 the 16 px flat network on
    # 8-image batches can diverge when the stop lands at an unlucky epoch
    common += ["--workers", "0", "--lr", "1e-4", "-o", str(out)]
    # Ctrl-C as in a terminal: a pytest-xdist worker ignores SIGINT and its children would inherit that
    proc = subprocess.Popen(
        [sys.executable, "-m", "nhlcli", *common, "--epochs", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    ckdir = Path(f"{out}.ckpt")
    deadline = time.time() + 120
    while latest(ckdir) is None and time.time() < deadline:
        time.sleep(0.2)
    assert latest(ckdir) is not None, "no checkpoint after the first epoch"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    assert not out.exists()
    done = load_checkpoint(Path(f"{out}.ckpt")).epoch
    assert 1 <= done < 200
    resumed = run_nhl(*common, "--epochs", str(done + 1), "--resume", "--json")
    assert resumed.code == 0, resumed.err
    assert json.loads(resumed.out)["epochs_done"] == done + 1 and out.is_file()


@pytest.mark.parametrize("variant", ["phl-small", "phl-big", "phl-latesp", "phl-1branch"])
def test_paper_variants_build_run_and_round_trip(tmp_path, variant):
    tree = nested_tree(1)
    model = create_model(tree, variant, TrunkConfig("resnet18")).eval()
    model.input_config = with_input_size(model.input_config, 64)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, len(CLASSES))
    stages = len(model.trunk.model.feature_info)
    assert model.trunk.config.split == (stages - 1 if variant == "phl-latesp" else stages - 2)
    nodes = model.levels[0].num_nodes
    assert nodes == (1 if variant == "phl-1branch" else len(CLASSES))
    loaded = open_model(save_model(model, tmp_path / f"{variant}.safetensors"))
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(NhlError, match="1-level tree"):
        create_model(nested_tree(2), variant, TrunkConfig("resnet18"))


def test_lean_variant_pools_level_one_keeps_outputs_equal_and_round_trips(tmp_path):
    tree = nested_tree(3)
    paper = create_model(tree, "nhl", TrunkConfig("resnet18")).eval()
    lean = create_model(tree, "nhl-lean", TrunkConfig("resnet18")).eval()
    for model in (paper, lean):
        model.input_config = with_input_size(model.input_config, 128)
    # widths 128/64/32 as the paper's; every level outputs 256 channels, as many as ResNet18's
    # layer3 gives, so no level needs a projection shortcut (the paper's all do)
    assert [lv.out_channels for lv in lean.levels] == [256, 256, 256]
    assert [lv.blocks[0].downsample is not None for lv in lean.levels] == [False, False, False]
    assert [lv.blocks[0].downsample is not None for lv in paper.levels] == [True, True, True]
    assert [lv.entry_stride for lv in lean.levels] == [2, 1, 1]
    with torch.no_grad():
        for side, pooled in ((128, 4), (32, 2)):  # an 8x8 trunk map is pooled, a 2x2 one is not
            features = lean.trunk(torch.randn(1, 3, side, side))
            assert lean.levels[0](features).shape[-2:] == (pooled, pooled)
        x = torch.randn(2, 3, 128, 128)
        assert lean(x).shape == (2, len(CLASSES))
    assert count_macs(lean) < count_macs(paper)
    assert lean.parameter_groups()["branches"] < paper.parameter_groups()["branches"]
    loaded = open_model(save_model(lean, tmp_path / "lean.safetensors"))
    assert loaded.branch_config == lean.branch_config
    with torch.no_grad():
        assert torch.equal(lean(x), loaded(x))
    with pytest.raises(NhlError, match="must each divide 256"):  # widths that cannot share outputs
        create_model(tree, "nhl-lean", TrunkConfig("resnet18"), BranchConfig(widths=(96, 64, 32)))


@pytest.mark.slow
def test_induced_tree_from_a_flat_models_classifier(tmp_path):
    """NBDT's method: a tree from a trained flat model's weights, named from WordNet where it can."""
    from nhlcli.taxonomy.classes import FASHION_MNIST

    tree = build_flat_tree(FASHION_MNIST, name="fm-flat")
    model = create_model(tree, "flat", TrunkConfig("resnet18", None, 1)).eval()
    head = model.model.get_classifier()
    with torch.no_grad():  # plant structure: the footwear rows alike, all other rows alike
        base = {"footwear": torch.randn(head.in_features), "other": torch.randn(head.in_features)}
        for i, entry in enumerate(FASHION_MNIST):
            kind = "footwear" if entry.id in ("sandal", "sneaker", "ankle-boot") else "other"
            head.weight[i] = base[kind] * 10 + torch.randn(head.in_features)
    flat_file = save_model(model, tmp_path / "flat.safetensors")
    out = tmp_path / "induced.json"
    run = run_nhl(
        "hierarchy",
        "build",
        "--source",
        "induced",
        "--model",
        flat_file,
        "--levels",
        "2",
        "-o",
        out,
        "--json",
    )
    assert run.code == 0, run.err
    induced = Tree.load(out)
    assert induced.classes == [e.id for e in FASHION_MNIST] and induced.levels == 2
    footwear = induced.lowest_common_ancestor(["sandal", "sneaker", "ankle-boot"])
    assert footwear != induced.root and induced.leaves(footwear) == ["sandal", "sneaker", "ankle-boot"]
    assert induced.node(footwear).name == "footwear"  # the classes' lowest common WordNet hypernym
    assert induced.source["kind"] == "induced"
    nhl_file = save_model(tiny_model(nested_tree(2)), tmp_path / "nhl.safetensors")
    assert_one_line_error(
        run_nhl("hierarchy", "build", "--source", "induced", "--model", nhl_file, "-o", out), "flat model"
    )


@pytest.mark.slow
def test_train_on_some_classes_keeps_only_their_images_and_eval_follows(tmp_path):
    """``nhl train --classes``: the subset baseline of paper 003, Table 2 (trained on the subset only)."""
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=4, size=16)
    out = tmp_path / "sub.safetensors"
    common = ("--data", data, "--input-size", "16", "--epochs", "1", "--batch-size", "4", "--workers", "0")
    run = run_nhl("train", *common, "--flat", "--classes", "banana,elm", "-o", out, "--json")
    assert run.code == 0, run.err
    meta = read_metadata(out)
    assert Tree.from_dict(meta["tree"]).classes == ["banana", "elm"]
    assert meta["training"]["classes"] == ["banana", "elm"]
    assert open_model(out)(torch.randn(1, 3, 16, 16)).shape == (1, 2)
    report = json.loads(run_nhl("eval", out, "--data", data, "--workers", "0", "--json").out)
    assert report["num_classes"] == 2
    assert report["images"] == 4  # the val images of banana and elm only (2 of each)
    nested = run_nhl("train", *common, "--hierarchy", nested_tree(2).save(tmp_path / "t.json"),
                     "--classes", "cherry,daisy", "-o", tmp_path / "nested.safetensors")  # fmt: skip
    assert nested.code == 0, nested.err
    assert open_model(tmp_path / "nested.safetensors").tree.classes == ["cherry", "daisy"]
    unknown = run_nhl("train", *common, "--flat", "--classes", "bananna", "-o", tmp_path / "x.safetensors")
    assert_one_line_error(unknown, "bananna", "banana")
    assert not (tmp_path / "x.safetensors").exists()


def test_frozen_trunk_flat_model_trains_only_what_an_nhl_model_replaces(tmp_path):
    """A frozen-trunk flat baseline freezes exactly the NHL trunk's layers (paper 000's frozen study)."""
    tree = nested_tree(1)
    flat = create_model(tree, "flat", TrunkConfig("resnet18"))
    frozen = set(flat.freeze_trunk())
    nhl_trunk = create_model(tree, "nhl", TrunkConfig("resnet18")).trunk.model
    assert frozen == {name for name, _ in nhl_trunk.named_parameters()}
    trained = {name.split(".")[0] for name, p in flat.model.named_parameters() if p.requires_grad}
    assert trained == {"layer4", "fc"}
    flat.train()
    assert not flat.model.layer1[0].bn1.training and flat.model.layer4[0].bn1.training
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=2, size=16)
    flat.input_config = with_input_size(flat.input_config, 16)
    before = {k: v.clone() for k, v in flat.model.state_dict().items()}
    config = TrainConfig(epochs=1, batch_size=4, workers=0, augment=None)
    train(flat, data, tmp_path / "f.safetensors", config)
    after = flat.model.state_dict()
    # the frozen layers keep their weights and BatchNorm statistics; the head learns
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("layer1"))
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


def test_cpu_bf16_is_avoided_where_a_convolution_strides_past_its_input():
    """oneDNN's bf16 weight gradient of a 3x3 convolution whose stride is longer than its input map
    is garbage (values up to 1e37 or NaN); the loop asks which convolutions those are and trains
    them in float32. ResNet18's layer4 sees 1 px at 16 px input, 2 px (stride 2: fine) at 32."""
    from nhlcli.devices import bf16_unsafe_convolutions

    flat = create_model(flat_tree(), "flat", TrunkConfig("resnet18"))
    assert "model.layer4.0.conv1" in bf16_unsafe_convolutions(flat, (3, 16, 16))
    assert bf16_unsafe_convolutions(flat, (3, 32, 32)) == []
    assert flat.training  # the probe leaves the mode as it found it
