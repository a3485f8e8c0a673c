"""A real ImageNet-trained trunk (EfficientNet-Lite0 from PyPI) through the frozen-trunk path."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch
from conftest import REPO, assert_one_line_error, make_tiny_data, run_nhl
from safetensors.torch import load_file
from test_training import CLASSES, nested_tree

from nhlcli.model.files import load_model


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
    model = load_model(out)
    pretrained = load_file(str(lite0))
    trained = (model.trunk.model if kind == "nhl" else model.model).state_dict()
    frozen = [k for k in trained if k.startswith(("conv_stem", "bn1", "blocks.0", "blocks.4"))]
    assert frozen and all(torch.equal(trained[k], pretrained[k]) for k in frozen)  # weights and BN statistics
    if kind == "flat":  # the last stage trained
        assert not torch.equal(
            trained["blocks.6.0.conv_pwl.weight"], pretrained["blocks.6.0.conv_pwl.weight"]
        )


def test_pickled_pretrained_weights_are_refused(tmp_path):
    pth = tmp_path / "trunk.pth"
    pth.write_bytes(b"\x80\x04\x95" + b"\x00" * 32)
    out = tmp_path / "m.safetensors"
    run = run_nhl("train", "--data", "fashion-mnist", "--pretrained-file", pth, "-o", out)
    assert_one_line_error(run, "only .safetensors weights are read")
    assert not out.exists()
