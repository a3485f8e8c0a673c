"""``nhl export`` (ONNX with a parity check), ``nhl profile x.onnx``, and tree pictures."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import (
    QUICK,
    assert_one_line_error,
    flat_tree,
    random_batches,
    run_nhl,
    tiny_model,
    two_level_tree,
)
from PIL import Image

from nhlcli.errors import NhlError
from nhlcli.experts import cut_model, cutout_file, save_expert
from nhlcli.export import export_onnx, read_onnx_metadata
from nhlcli.gates import fit_gates
from nhlcli.model.files import save_model
from nhlcli.model.loading import open_model
from nhlcli.taxonomy.picture import draw_tree


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tree_name", "backbone", "variant"),
    [("phl", "resnet18", "nhl"), ("nhl", "resnet18", "nhl"), ("phl", "convnextv2_atto", "nhl"),
     ("nhl", "convnextv2_atto", "nhl"), ("nhl", "resnet18", "nhl-scale")],
)  # fmt: skip
def test_experts_export_with_parity_and_a_dynamic_batch(tmp_path, tree_name, backbone, variant):
    tree = flat_tree() if tree_name == "phl" else two_level_tree()
    model = tiny_model(tree, backbone, seed=0, variant=variant)
    save_model(model, tmp_path / "full.safetensors")
    cut = cutout_file(tmp_path / "full.safetensors", ["apple", "daisy", "fig"])
    save_expert(cut, tmp_path / "expert.safetensors")
    report = export_onnx(tmp_path / "expert.safetensors", tmp_path / "expert.onnx")
    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert [r["batch"] for r in report["parity"]["batches"]] == [1, 7]
    # an independent run: onnxruntime on batches of 1 and 7 against the torch expert
    session = ort.InferenceSession(str(tmp_path / "expert.onnx"), providers=["CPUExecutionProvider"])
    expert = open_model(tmp_path / "expert.safetensors")
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        (got,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            want = expert(x).numpy()
        assert got.shape == (batch, 3)
        assert np.abs(got - want).max() <= 1e-4
    meta = read_onnx_metadata(tmp_path / "expert.onnx")
    assert [c["id"] for c in meta["classes"]] == expert.tree.classes
    assert meta["mean"] == list(expert.input_config.mean) and meta["input_size"] == [3, 32, 32]
    assert meta["opset"] == onnx.load(str(tmp_path / "expert.onnx")).opset_import[0].version


@pytest.mark.slow
def test_a_gated_file_exports_its_gates_as_outputs_with_thresholds_in_the_metadata(tmp_path):
    gated = fit_gates(tiny_model(two_level_tree(), "resnet18", seed=0), random_batches(n=16), config=QUICK)
    gated.set_thresholds([None, 1.5, 2.0, None])
    save_model(gated, tmp_path / "gated.safetensors")
    report = export_onnx(tmp_path / "gated.safetensors", tmp_path / "gated.onnx")
    assert report["outputs"] == ["logits", "gate_1", "gate_2", "gate_3", "gate_4"]
    assert report["parity"]["max_abs_diff"] <= 1e-4
    meta = read_onnx_metadata(tmp_path / "gated.onnx")
    assert meta["gates"]["thresholds"] == [None, 1.5, 2.0, None]
    session = ort.InferenceSession(str(tmp_path / "gated.onnx"), providers=["CPUExecutionProvider"])
    outs = session.run(None, {"images": np.zeros((3, 3, 32, 32), dtype=np.float32)})
    assert [o.shape for o in outs] == [(3, 6)] * 5


def test_a_failed_parity_check_leaves_no_file(tmp_path, monkeypatch):
    save_model(tiny_model(flat_tree(), "resnet18", kind="flat", seed=0), tmp_path / "flat.safetensors")
    monkeypatch.setattr("nhlcli.export.onnx.parity", lambda model, path: {"max_abs_diff": 0.5, "batches": []})
    with pytest.raises(NhlError, match="disagree by 0.5"):
        export_onnx(tmp_path / "flat.safetensors", tmp_path / "flat.onnx")
    assert list(tmp_path.iterdir()) == [tmp_path / "flat.safetensors"]


@pytest.mark.slow
def test_cli_export_and_profile_an_onnx_expert(tmp_path):
    model = tiny_model(two_level_tree(), "resnet18", seed=0)
    expert = cut_model(model, ["apple", "banana"])
    save_model(expert, tmp_path / "expert.safetensors")
    run = run_nhl("export", tmp_path / "expert.safetensors", "-o", tmp_path / "expert.onnx", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["parity"]["max_abs_diff"] <= 1e-4
    run = run_nhl("profile", tmp_path / "expert.onnx", "--repeats", "3", "--batch-size", "4", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    torch_params = sum(p.numel() for p in expert.parameters())
    # the weights the graph stores: the exporter folds BatchNorm into the convolutions
    assert report["params"] == pytest.approx(torch_params, rel=0.01)
    assert [r["batch"] for r in report["onnxruntime"]] == [1, 4]
    assert [r["batch"] for r in report["torch"]] == [1, 4]  # its source, found beside it
    assert report["classes"] == 2
    run = run_nhl("export", tmp_path / "expert.safetensors", "-o", tmp_path / "expert.bin")
    assert_one_line_error(run, ".onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    run = run_nhl("profile", tmp_path / "bad.onnx")
    assert_one_line_error(run, "bad.onnx")


# --------------------------------------------------------------------------- pictures
def test_tree_pictures_are_valid_images_sized_to_the_tree(tmp_path):
    small = draw_tree(two_level_tree(), tmp_path / "small.png")
    with Image.open(tmp_path / "small.png") as img:
        assert img.format == "PNG"
        small_size = img.size
    assert small["rows"] == 6 and small["depth"] == 2
    picture = tmp_path / "in1k.png"
    run = run_nhl("hierarchy", "show", "imagenet-1k-wordnet-l3", "-f", "png", "-o", picture, "--json")
    assert run.code == 0, run.err
    large = json.loads(run.out)
    assert large["depth"] == 1 and large["rows"] <= 60  # collapsed to a readable size
    with Image.open(picture) as img:
        assert img.size[1] > small_size[1]  # taller: more rows
        assert img.size[1] == pytest.approx(100 * (0.24 * large["rows"] + 1.0), abs=2)


def test_an_expert_picture_highlights_exactly_its_classes_inside_the_parent_tree(tmp_path):
    save_model(tiny_model(two_level_tree(), "resnet18", seed=0), tmp_path / "full.safetensors")
    cut = cutout_file(tmp_path / "full.safetensors", ["banana", "elm"])
    save_expert(cut, tmp_path / "expert.safetensors")
    run = run_nhl("hierarchy", "show", tmp_path / "expert.safetensors", "-f", "svg", "-o", tmp_path / "e.svg")
    assert run.code == 0, run.err
    svg = (tmp_path / "e.svg").read_text()
    assert sorted(re.findall(r'id="kept-class:([^"]+)"', svg)) == ["banana", "elm"]
    for name in ("apple", "cherry", "daisy", "fig"):  # the rest of the parent's tree, not highlighted
        assert name in svg
    run = run_nhl("hierarchy", "show", tmp_path / "expert.safetensors", "-f", "png")
    assert_one_line_error(run, "-o")
