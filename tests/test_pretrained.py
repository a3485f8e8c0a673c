"""A real ImageNet-trained trunk (EfficientNet-Lite0 from PyPI) through the frozen-trunk path."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch
from conftest import CLASSES, REPO, assert_one_line_error, make_tiny_data, nested_tree, run_nhl, tiny_model
from safetensors.torch import load_file, save_file

from nhlcli.errors import NhlError
from nhlcli.model.files import save_model
from nhlcli.model.loading import open_model
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig


def _prepare_lite0():
    spec = importlib.util.spec_from_file_location("prepare_lite0", REPO / "benchmarks" / "prepare_lite0.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    path = tmp_path_factory.mktemp("lite0") / "lite0.safetensors"
    _prepare_lite0().convert(path)
    return path


def test_lite0_weights_map_one_to_one_onto_timm(lite0):
    prepare = _prepare_lite0()
    source = torch.load(prepare.source_file(), map_location="cpu", weights_only=True)
    converted = load_file(str(lite0))
    assert len(converted) == len(source)
    model = timm.create_model(prepare.BACKBONE, pretrained=True, pretrained_cfg_overlay={"file": str(lite0)})
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in converted.items())
    # every source tensor landed exactly once under its own timm name
    renamed = prepare.timm_state(source, timm.create_model(prepare.BACKBONE))
    assert {id(v) for v in renamed.values()} == {id(v) for v in source.values()}
    assert all(torch.equal(renamed[k], converted[k]) for k in renamed)
    # the ImageNet classifier is the trained one: its bias is not timm's zero initialisation
    assert state["classifier.bias"].abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nhl", "flat"])
def test_frozen_pretrained_trunk_keeps_the_imagenet_weights(tmp_path, lite0, kind):
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=4, size=32)
    out = tmp_path / f"{kind}.safetensors"
    head = ["--flat"] if kind == "flat" else ["--hierarchy", nested_tree(2).save(tmp_path / "tree.json")]
    run = run_nhl(
        "train",
        "--data",
        data,
        *head,
        "--backbone",
        "tf_efficientnet_lite0",
        "--pretrained-file",
        lite0,
        "--freeze-trunk",
        "--input-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "-o",
        out,
    )
    assert run.code == 0, run.err
    model = open_model(out)
    pretrained = load_file(str(lite0))
    trained = (model.trunk.model if kind == "nhl" else model.model).state_dict()
    frozen = [k for k in trained if k.startswith(("conv_stem", "bn1", "blocks.0", "blocks.4"))]
    assert frozen and all(torch.equal(trained[k], pretrained[k]) for k in frozen)  # weights and BN statistics
    if kind == "flat":  # the last stage trained
        assert not torch.equal(
            trained["blocks.6.0.conv_pwl.weight"], pretrained["blocks.6.0.conv_pwl.weight"]
        )


@pytest.mark.slow
def test_pickled_pretrained_weights_are_refused(tmp_path):
    pth = tmp_path / "trunk.pth"
    pth.write_bytes(b"\x80\x04\x95" + b"\x00" * 32)
    out = tmp_path / "m.safetensors"
    run = run_nhl("train", "--data", "fashion-mnist", "--pretrained-file", pth, "-o", out)
    assert_one_line_error(run, "only .safetensors weights are read")
    assert not out.exists()


# ------------------------------------------------------------ files that fit, and files that do not
@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """timm weights for resnet18 (random, but not timm's initialisation), with its classifier."""
    torch.manual_seed(1)
    net = timm.create_model("resnet18")
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    path = tmp_path_factory.mktemp("r18") / "resnet18.safetensors"
    save_file(net.state_dict(), str(path))
    return path


@pytest.mark.parametrize("in_chans", [3, 1])
def test_timm_weights_load_into_the_trunk_and_the_count_is_reported(resnet18_weights, in_chans):
    weights = load_file(str(resnet18_weights))
    tree = nested_tree(2)
    model = create_model(
        tree, "nhl", TrunkConfig("resnet18", None, in_chans), pretrained_file=resnet18_weights
    )
    trunk = model.trunk.model.state_dict()
    kept = [k for k in trunk if not k.endswith("num_batches_tracked")]
    load = model.pretrained_load
    assert (load.loaded, load.total) == (len(kept), len(kept))
    assert load.describe() == "loaded 75 of 75 trunk weight tensors from resnet18.safetensors"
    assert all(torch.equal(trunk[k], weights[k]) for k in kept if k != "conv1.weight")
    stem = weights["conv1.weight"] if in_chans == 3 else weights["conv1.weight"].sum(1, keepdim=True)
    assert torch.allclose(trunk["conv1.weight"], stem)  # grey input: the sum over colours, as timm does
    flat = create_model(
        tree, "flat", TrunkConfig("resnet18", None, in_chans), pretrained_file=resnet18_weights
    )
    assert flat.pretrained_load.loaded == flat.pretrained_load.total == 100  # layer4 too; no classifier
    assert create_model(tree, "nhl", TrunkConfig("resnet18")).pretrained_load is None


def test_a_file_with_too_few_of_the_backbones_tensors_is_refused(resnet18_weights, tmp_path):
    weights = load_file(str(resnet18_weights))
    names = sorted(weights)
    for share, fits in ((0.3, False), (0.7, True)):
        part = tmp_path / f"part{share}.safetensors"
        save_file({k: weights[k] for k in names[: int(share * len(names))]}, str(part))
        if fits:
            model = create_model(nested_tree(2), "nhl", TrunkConfig("resnet18"), pretrained_file=part)
            assert 0 < model.pretrained_load.loaded < model.pretrained_load.total
        else:
            with pytest.raises(NhlError, match="does not fit resnet18: only"):
                create_model(nested_tree(2), "nhl", TrunkConfig("resnet18"), pretrained_file=part)


def _foreign(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(path))
    return path, ["does not fit resnet18", "0 of resnet18's"]


def _nhl_model(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(tiny_model(nested_tree(2)), path)
    return path, ["nhl model file", "not timm weights"]


def _other_backbone(tmp_path):
    path = tmp_path / "resnet50.safetensors"
    save_file(timm.create_model("resnet50", num_classes=0).state_dict(), str(path))
    return path, ["resnet18's names but other shapes", "another model"]


def _empty(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    return path, ["empty (0 bytes)"]


def _pickle_named_safetensors(tmp_path):
    path = tmp_path / "trunk.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    return path, ["not a readable safetensors file"]


def _truncated(tmp_path):
    whole = tmp_path / "whole.safetensors"
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(whole))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a download that stopped half way
    return path, ["not a readable safetensors file", "truncated"]


def _bin(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)  # a torch zip file
    return path, ["only .safetensors weights are read"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [_foreign, _nhl_model, _other_backbone, _empty, _pickle_named_safetensors, _truncated, _bin],
    ids=lambda f: f.__name__,
)
def test_pretrained_files_that_do_not_fit_are_one_line_errors(tmp_path, make):
    path, fragments = make(tmp_path)
    out = tmp_path / "m.safetensors"
    run = run_nhl(
        "train", "--data", "fashion-mnist", "--backbone", "resnet18", "--pretrained-file", path, "-o", out
    )
    assert_one_line_error(run, "--pretrained-file", *fragments)
    assert not out.exists()
