"""Hostile model files (issue 34): metadata a hand or an attacker edited, flipped tensor bytes, a file
replaced while it is read, export options no exporter can honour, an ONNX file timed against the
wrong torch model, and pretrained weights of another backbone. Each case is a row of a
parametrised test, so the matrix grows with each new case."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import timm
import torch
from conftest import (
    CLASSES,
    assert_one_line_error,
    make_tiny_data,
    nested_tree,
    run_nhl,
    tiny_model,
    two_level_tree,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import nhlcli.model.files as model_files
from nhlcli.errors import NhlError
from nhlcli.experts.cutout import cut_model, cutout_file
from nhlcli.model.files import (
    DIGEST_KEY,
    METADATA_DIGEST_KEY,
    METADATA_KEY,
    read_metadata,
    save_model,
)
from nhlcli.model.loading import open_model
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny NHL model, two experts of the same shape over other classes, an image and an
    ImageFolder."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    model = tiny_model(two_level_tree())
    save_model(model, root / "m.safetensors")
    save_model(cut_model(model, ["apple", "banana"]), root / "fruit.safetensors")
    save_model(cut_model(model, ["daisy", "elm"]), root / "plant.safetensors")
    data = make_tiny_data.make_image_folder(root / "data", CLASSES, per_class=1, size=32)
    image = data / "val" / CLASSES[0] / f"{CLASSES[0]}_000.png"
    return {"root": root, "model": root / "m.safetensors", "fruit": root / "fruit.safetensors",
            "plant": root / "plant.safetensors", "data": data, "image": image}  # fmt: skip


def _edited(source: Path, target: Path, edit, keep_digest: bool = True) -> Path:
    """``source`` with its nhl metadata text changed by ``edit`` (a function of the parsed metadata,
    or of the text when it returns a string); the recorded digests kept as they were, as a hand
    edit leaves them, unless ``keep_digest`` is false (a file from before metadata digests)."""
    with safe_open(str(source), framework="pt") as handle:
        header = dict(handle.metadata())
    meta = json.loads(header[METADATA_KEY])
    changed = edit(meta)
    header[METADATA_KEY] = changed if isinstance(changed, str) else json.dumps(meta)
    if not keep_digest:
        header.pop(METADATA_DIGEST_KEY)
    save_file(load_file(str(source)), str(target), metadata=header)
    return target


def _swap_names(meta: dict) -> None:
    """Swap the names of the first two classes in the tree (the logits then read as each other)."""
    first, second = meta["tree"]["classes"][:2]
    text = json.dumps(meta["tree"])
    text = text.replace(f'"{first}"', "\0").replace(f'"{second}"', f'"{first}"').replace("\0", f'"{second}"')
    meta["tree"] = json.loads(text)


def _deeply_nested(meta: dict) -> str:
    return json.dumps(meta)[:-1] + ', "training": ' + "[" * 100_000 + "]" * 100_000 + "}"


HOSTILE_METADATA = {
    "NaN std": (lambda m: m["input"].update(std=[float("nan")] * 3), True, ["'input.std'", "finite"]),
    "inf mean": (lambda m: m["input"].update(mean=[float("inf"), 0, 0]), True, ["'input.mean'", "finite"]),
    "huge input size": (lambda m: m["input"].update(size=[3, 30000, 30000]), True,
                        ["'input.size'", "out of bounds", "4096"]),
    "many channels": (lambda m: (m["input"].update(size=[100, 32, 32]), m["trunk"].update(in_chans=100)),
                      True, ["out of bounds", "16"]),
    "swapped class names": (_swap_names, True, ["metadata does not match the digest"]),
    "cost for other classes": (lambda m: m.update(cost={"classes": 99}), False, ["'cost.classes'"]),
    "deeply nested": (_deeply_nested, True, ["nested", "levels deep"]),
}  # fmt: skip


def _command(name: str, path: Path, files: dict) -> list:
    return {
        "profile --verify": ["profile", path, "--verify"],
        "predict": ["predict", path, files["image"], "--device", "cpu"],
        "eval": ["eval", path, "--data", files["data"], "--workers", "0", "--device", "cpu"],
    }[name]


COMMANDS = ["profile --verify", "predict", "eval"]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(HOSTILE_METADATA))
@pytest.mark.parametrize("command", COMMANDS)
def test_hostile_metadata_is_refused_in_one_line(files, tmp_path, case, command):
    edit, keep_digest, fragments = HOSTILE_METADATA[case]
    path = _edited(files["model"], tmp_path / "hostile.safetensors", edit, keep_digest)
    assert_one_line_error(run_nhl(*_command(command, path, files)), "hostile.safetensors", *fragments)


@pytest.mark.parametrize("case", list(HOSTILE_METADATA))
def test_hostile_metadata_is_refused_by_every_reader_of_the_library(files, tmp_path, case):
    edit, keep_digest, fragments = HOSTILE_METADATA[case]
    path = _edited(files["model"], tmp_path / "hostile.safetensors", edit, keep_digest)
    for read in (read_metadata, open_model, lambda p: cutout_file(p, ["apple"])):
        with pytest.raises(NhlError) as error:
            read(path)
        assert all(f.lower() in str(error.value).lower() for f in fragments), str(error.value)


@pytest.mark.slow
def test_an_unedited_metadata_digest_passes_and_old_files_without_one_still_load(files, tmp_path):
    run = run_nhl("profile", files["model"], "--verify", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["verified"] is True and len(report["metadata_sha256"]) == 64
    older = _edited(files["model"], tmp_path / "older.safetensors", lambda m: None, keep_digest=False)
    run = run_nhl("profile", older, "--verify")
    assert run.code == 0, run.err
    assert "metadata has no digest" in run.out
    assert open_model(older).classes == CLASSES


def _flipped(source: Path, target: Path) -> Path:
    content = bytearray(source.read_bytes())
    start = 8 + int.from_bytes(content[:8], "little")
    content[start + (len(content) - start) // 2] ^= 0x10
    target.write_bytes(bytes(content))
    return target


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_flipped_tensor_byte_is_refused(files, tmp_path, command):
    path = _flipped(files["model"], tmp_path / "flipped.safetensors")
    run = run_nhl(*_command(command, path, files))
    assert_one_line_error(run, "flipped.safetensors", "tensor data does not match the digest")


# ---------------------------------------------------------------- a file replaced while it is read
def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32))


def _replace_after_header(monkeypatch, path: Path, replacement: Path) -> None:
    """Replace ``path`` atomically by a copy of ``replacement`` right after a reader has parsed the
    header (as ``nhl cutout`` replacing it mid-load would)."""
    parse = model_files.parse_header

    def parse_then_replace(*args, **kwargs):
        header = parse(*args, **kwargs)
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(replacement.read_bytes())
        os.replace(tmp, path)
        return header

    monkeypatch.setattr(model_files, "parse_header", parse_then_replace)


LOADS = {
    "open_model": open_model,
    "cutout": lambda p: cutout_file(p, ["apple", "banana"]).model,  # every class: all rows read again
}


@pytest.mark.parametrize("load", list(LOADS))
def test_a_file_replaced_during_a_load_is_read_wholly_as_the_old_file(files, tmp_path, monkeypatch, load):
    path = tmp_path / "model.safetensors"
    path.write_bytes(files["fruit"].read_bytes())
    _replace_after_header(monkeypatch, path, files["plant"])
    model = LOADS[load](path)
    assert path.read_bytes() == files["plant"].read_bytes()  # the file was replaced mid-load
    fruit = open_model(files["fruit"])
    assert model.classes == fruit.classes == ["apple", "banana"]
    assert torch.equal(_logits(model), _logits(fruit))  # its weights too, not plant's rows


@pytest.mark.slow
def test_loads_racing_atomic_replacements_are_never_mixed(files, tmp_path):
    """Two experts of the same shape over other classes, swapped into one path while it is loaded:
    every load gives one of them whole (a mix would load: the shapes fit)."""
    path = tmp_path / "model.safetensors"
    sources = [files["fruit"], files["plant"]]
    path.write_bytes(sources[0].read_bytes())
    expected = {tuple(m.classes): _logits(m) for m in map(open_model, sources)}
    stop = threading.Event()

    def writer() -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            tmp = path.with_name(f".{path.name}.{turn}.tmp")
            tmp.write_bytes(sources[turn % 2].read_bytes())
            os.replace(tmp, path)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(30):
            model = open_model(path)
            assert torch.equal(_logits(model), expected[tuple(model.classes)])
            assert read_metadata(path)["tree"]["classes"] in (["apple", "banana"], ["daisy", "elm"])
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------------------------- export options
EXPORT_OPTIONS = {
    "opset 0": (["--opset", "0"], ["--opset", "0 is not an opset"]),
    "opset 7": (["--opset", "7"], ["--opset", "18 to"]),
    "opset 999": (["--opset", "999"], ["--opset", "999"]),
    "negative tolerance": (["--tolerance", "-1"], ["--tolerance", "at least 0"]),
    "NaN tolerance": (["--tolerance", "nan"], ["--tolerance", "finite"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EXPORT_OPTIONS))
def test_export_options_no_exporter_honours_are_refused_before_any_work(files, tmp_path, case):
    pytest.importorskip("onnx")
    options, fragments = EXPORT_OPTIONS[case]
    out = tmp_path / "m.onnx"
    run = run_nhl("export", files["model"], "-o", out, *options)
    assert_one_line_error(run, *fragments)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_profile_refuses_a_torch_model_the_onnx_was_not_exported_from(files, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "fruit.onnx"
    run = run_nhl("export", files["fruit"], "-o", out, "--no-check", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["opset"] == 18
    import onnx

    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["opset"] == "18" and [o.version for o in proto.opset_import if o.domain == ""] == [18]
    timing = ("--repeats", "1", "--batch-size", "1", "--json")
    for other in (files["plant"], files["model"]):  # same shape other classes; another model
        assert_one_line_error(run_nhl("profile", out, "--torch", other, *timing),
                              other.name, "is not the model fruit.onnx was exported from")  # fmt: skip
    run = run_nhl("profile", out, "--torch", files["fruit"], *timing)
    assert run.code == 0, run.err
    assert json.loads(run.out)["torch_file"] == str(files["fruit"])


# ----------------------------------------------------------------------------- pretrained weights
def _weights_of(backbone: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{backbone}.safetensors"
    save_file(timm.create_model(backbone).state_dict(), str(path))
    return path


PRETRAINED = {  # weights file's backbone, the trunk's, what the refusal names (None: it loads)
    "resnet34 into resnet18": ("resnet34", "resnet18", ["resnet18 does not have", "layer1.2."]),
    "resnet50 into resnet18": ("resnet50", "resnet18", ["resnet18's names but other shapes"]),
    "resnet18 into resnet18": ("resnet18", "resnet18", None),  # its classifier (fc) is left out
}


@pytest.mark.parametrize("case", list(PRETRAINED))
def test_pretrained_weights_of_another_trunk_are_refused(tmp_path, case):
    source, backbone, fragments = PRETRAINED[case]
    weights = _weights_of(source, tmp_path)
    build = lambda: create_model(nested_tree(2), "nhl", TrunkConfig(backbone), pretrained_file=weights)  # noqa: E731
    if fragments is None:
        load = build().pretrained_load
        assert load.loaded == load.total > 0
        return
    with pytest.raises(NhlError) as error:
        build()
    assert all(f in str(error.value) for f in fragments), str(error.value)
    assert "\n" not in str(error.value)


def test_the_digests_are_recorded_by_every_save(files):
    with safe_open(str(files["model"]), framework="pt") as handle:
        header = handle.metadata()
    assert len(header[DIGEST_KEY]) == len(header[METADATA_DIGEST_KEY]) == 64


NOT_FILES = {
    "a FIFO": lambda p: os.mkfifo(p),  # opening it would block until a writer came
    "a directory": lambda p: p.mkdir(),
}


@pytest.mark.parametrize("case", list(NOT_FILES))
def test_a_model_path_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, case):
    if case == "a FIFO" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    path = tmp_path / "model.safetensors"
    NOT_FILES[case](path)
    for read in (read_metadata, open_model, lambda p: cutout_file(p, ["apple"])):
        with pytest.raises(NhlError, match="not a regular file"):
            read(path)
