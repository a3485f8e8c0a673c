"""Bad input across commands (issue 16): outputs checked against inputs, damaged files, file modes,
devices, backbones and sizes that cannot work. Each case is what a new user would try."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from pathlib import Path

import pytest
import torch
from conftest import (
    CLASSES,
    QUICK,
    assert_one_line_error,
    make_tiny_data,
    random_batches,
    run_nhl,
    tiny_model,
    two_level_tree,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nhlcli.atomic import atomic_write_json
from nhlcli.devices import resolve_device
from nhlcli.errors import NhlError
from nhlcli.gates import fit_gates
from nhlcli.gates.workflow import check_tune_output
from nhlcli.model.files import DIGEST_KEY, METADATA_DIGEST_KEY, METADATA_KEY, save_model, verify_model_file
from nhlcli.model.loading import open_model
from nhlcli.model.nhl import FlatModel, InputConfig, NHLModel, with_input_size
from nhlcli.model.trunk import TrunkConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny NHL model, a gated one and a tiny ImageFolder."""
    root = tmp_path_factory.mktemp("bad-input")
    torch.manual_seed(0)
    save_model(tiny_model(two_level_tree()), root / "m.safetensors")
    gated = fit_gates(tiny_model(two_level_tree(), "resnet18", seed=0), random_batches(n=16), config=QUICK)
    save_model(gated, root / "gated.safetensors")
    data = make_tiny_data.make_image_folder(root / "data", CLASSES, per_class=2, size=32)
    return {"root": root, "model": root / "m.safetensors", "gated": root / "gated.safetensors", "data": data}


def _data_offset(path: Path) -> int:
    """Where a safetensors file's tensor data starts (after its 8-byte length and header)."""
    with open(path, "rb") as handle:
        return 8 + struct.unpack("<Q", handle.read(8))[0]


# ----------------------------------------------------------------------- outputs against inputs
@pytest.mark.slow
def test_an_output_that_names_an_input_is_refused_and_the_input_stays_intact(files, tmp_path):
    model, gated, data, root = files["model"], files["gated"], files["data"], files["root"]
    before = {path: path.read_bytes() for path in (model, gated)}
    # the parent spelled another way: up and down again through the directory that holds it
    respelled = Path(".") / ".." / root.name / model.name
    cases = [
        (("cutout", model, "--classes", "apple", "-o", tmp_path / "e.safetensors", "--report", model),
         "--report"),
        (("cutout", model, "--classes", "apple", "-o", model), "--output"),
        (("cutout", model.name, "--classes", "apple", "-o", respelled), "--output"),
        (("profile", model, "--no-latency", "--curve", model), "--curve"),
        (("export", model, "-o", model), "--output"),
        (("gates", "fit", model, "-o", model, "--data", data, "--workers", "0"), "--output"),
        (("gates", "sweep", gated, "--data", data, "--workers", "0", "--plot", gated), "--plot"),
        (("gates", "tune", gated, "--data", data, "--max-drop", "1", "-o", data), "--output"),
    ]  # fmt: skip
    for args, label in cases:
        run = run_nhl(*args, cwd=root)
        assert_one_line_error(run, label, "is also an input")
        for path, content in before.items():
            assert path.read_bytes() == content, (args, path)
    assert not (tmp_path / "e.safetensors").exists()


@pytest.mark.slow
def test_two_outputs_of_one_command_must_differ(files, tmp_path):
    out = tmp_path / "e.safetensors"
    run = run_nhl("cutout", files["model"], "--classes", "apple", "-o", out, "--report", out)
    assert_one_line_error(run, "--report and --output name the same file")
    assert not out.exists()


def _bad_path(kind: str, tmp_path: Path) -> tuple[str, str]:
    """A bad output path of ``kind`` and what the error says about it."""
    if kind == "directory":
        return str(tmp_path), "is a directory"
    if kind == "below a file":
        (tmp_path / "plain.txt").write_text("x")
        return str(tmp_path / "plain.txt" / "out.bin"), "not a directory"
    if kind == "read-only":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux's read-only /proc")
        return "/proc/nhl-test-output.bin", "cannot write"
    return "", "is empty"


KINDS = ["directory", "below a file", "read-only", "empty"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_cutout_output_path_fails_in_one_line(files, tmp_path, kind):
    path, fragment = _bad_path(kind, tmp_path)
    run = run_nhl("cutout", files["model"], "--classes", "apple", "--no-latency", "-o", path)
    assert_one_line_error(run, "--output", fragment)
    assert not list(tmp_path.glob("*.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("cutout --report", "directory"),
        ("profile --curve", "below a file"),
        ("export", "read-only"),
        ("gates fit", "empty"),
        ("gates sweep", "directory"),
        ("gates tune", "below a file"),
    ],
)
def test_every_written_file_is_checked_before_any_work(files, tmp_path, command, kind):
    path, fragment = _bad_path(kind, tmp_path)
    model, gated, data = files["model"], files["gated"], files["data"]
    args = {
        "cutout --report": ("cutout", model, "--classes", "apple", "-o", tmp_path / "e.safetensors",
                            "--report", path),
        "profile --curve": ("profile", model, "--no-latency", "--curve", path),
        "export": ("export", model, "-o", path),
        "gates fit": ("gates", "fit", model, "-o", path, "--data", data, "--workers", "0"),
        "gates sweep": ("gates", "sweep", gated, "--data", data, "--workers", "0", "--plot", path),
        "gates tune": ("gates", "tune", gated, "--data", data, "--max-drop", "1", "-o", path),
    }[command]  # fmt: skip
    assert_one_line_error(run_nhl(*args), fragment)
    assert not (tmp_path / "e.safetensors").exists()


def test_tune_writes_into_the_gated_file_unless_told_otherwise(files, tmp_path):
    gated, data = files["gated"], files["data"]
    assert check_tune_output(gated, None, data) is None  # in place, by design
    assert check_tune_output(gated, files["root"] / "." / gated.name, data) is None  # the same file
    assert check_tune_output(gated, tmp_path / "tuned.safetensors", data) == tmp_path / "tuned.safetensors"
    with pytest.raises(NhlError, match="is also an input"):
        check_tune_output(gated, data, data)


# ----------------------------------------------------------------------- damaged model files
def test_the_recorded_digest_is_the_sha256_of_the_tensor_data_as_written(files):
    path = files["model"]
    with safe_open(str(path), framework="pt") as handle:
        recorded = handle.metadata()[DIGEST_KEY]
    assert recorded == hashlib.sha256(path.read_bytes()[_data_offset(path) :]).hexdigest()
    assert verify_model_file(path) == recorded


@pytest.mark.slow
def test_a_flipped_byte_in_the_tensor_data_is_found_by_verify_and_cutout(files, tmp_path):
    intact = tmp_path / "intact.safetensors"
    intact.write_bytes(files["model"].read_bytes())
    run = run_nhl("profile", intact, "--verify")
    assert run.code == 0, run.err
    assert "verified" in run.out and "Traceback" not in run.err

    damaged = tmp_path / "damaged.safetensors"
    content = bytearray(intact.read_bytes())
    start = _data_offset(intact)
    content[start + (len(content) - start) // 2] ^= 0x04  # one bit, in the middle of the weights
    damaged.write_bytes(bytes(content))
    with pytest.raises(NhlError, match="does not match the digest"):
        open_model(damaged)  # the damage would not show when loading: every full load checks the digest
    assert_one_line_error(run_nhl("profile", damaged, "--verify"), "damaged.safetensors", "does not match",
                          "digest recorded at save time", "damaged")  # fmt: skip
    out = tmp_path / "expert.safetensors"
    run = run_nhl("cutout", damaged, "--classes", "apple", "--no-latency", "-o", out)
    assert_one_line_error(run, "damaged.safetensors", "does not match the digest")
    assert not out.exists()
    with pytest.raises(NhlError, match="damaged"):
        verify_model_file(damaged)


@pytest.mark.slow
def test_a_file_without_a_digest_still_loads_and_verify_says_there_is_none(files, tmp_path):
    with safe_open(str(files["model"]), framework="pt") as handle:
        meta = {METADATA_KEY: handle.metadata()[METADATA_KEY]}  # as nhl wrote files before digests
    older = tmp_path / "older.safetensors"
    save_file(load_file(str(files["model"])), str(older), metadata=meta)
    assert verify_model_file(older) is None
    open_model(older)
    run = run_nhl("profile", older, "--verify", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["verified"] is False
    run = run_nhl("profile", older, "--verify")
    assert run.code == 0 and "no digest to check" in run.out
    out = tmp_path / "expert.safetensors"
    assert run_nhl("cutout", older, "--classes", "apple", "--no-latency", "-o", out).code == 0
    assert verify_model_file(out) is not None  # what nhl writes now carries one


def _edited(source: Path, target: Path, edit) -> Path:
    """``source`` with its nhl metadata changed by ``edit`` (as a hand edit would), weights kept."""
    with safe_open(str(source), framework="pt") as handle:
        header = dict(handle.metadata())
    meta = json.loads(header[METADATA_KEY])
    edit(meta)
    header[METADATA_KEY] = json.dumps(meta)
    header.pop(METADATA_DIGEST_KEY, None)  # as an edit by hand that also dropped the metadata digest
    save_file(load_file(str(source)), str(target), metadata=header)
    return target


EDITS = {
    "no input": (lambda m: m.pop("input"), "'input' is missing"),
    "zero size": (lambda m: m["input"].update(size=[3, 0, 0]), "'input.size'"),
    "negative size": (lambda m: m["input"].update(size=[3, -32, 32]), "'input.size'"),
    "no backbone": (lambda m: m["trunk"].pop("backbone"), "'trunk.backbone'"),
    "zero channels": (lambda m: m["trunk"].update(in_chans=0), "'trunk.in_chans'"),
    "no widths": (lambda m: m["branches"].pop("widths"), "'branches.widths'"),
    "no branches": (lambda m: m.pop("branches"), "'branches' is missing"),
    "no kind": (lambda m: m.pop("kind"), "'kind'"),
    "zero stride": (lambda m: m["branches"].update(entry_strides=[0, 1]), "'branches.entry_strides'"),
    "strides per level": (lambda m: m["branches"].update(entry_strides=[2]), "'branches.entry_strides'"),
    "group size": (lambda m: m["branches"].update(group_size=3), "'branches.group_size'"),
    "pooling threshold": (lambda m: m["branches"].update(pool_min_side=-1), "'branches.pool_min_side'"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_hand_edited_metadata_fails_in_one_line_naming_the_file_and_the_key(files, tmp_path, case):
    edit, fragment = EDITS[case]
    path = _edited(files["model"], tmp_path / "edited.safetensors", edit)
    with pytest.raises(NhlError, match="edited.safetensors") as error:
        open_model(path)
    assert fragment in str(error.value) and "metadata is damaged" in str(error.value)


def test_files_from_before_the_lean_knobs_load_as_the_papers_shape(files, tmp_path):
    def drop_knobs(meta):
        for key in ("expansions", "entry_strides", "group_size", "pool_min_side"):
            meta["branches"].pop(key)

    older = open_model(_edited(files["model"], tmp_path / "older.safetensors", drop_knobs))
    now = open_model(files["model"])
    assert older.branch_config == now.branch_config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(older(x), now(x))


@pytest.mark.slow
def test_hand_edited_metadata_through_the_cli(files, tmp_path):
    path = _edited(files["model"], tmp_path / "edited.safetensors", EDITS["zero size"][0])
    assert_one_line_error(
        run_nhl("profile", path, "--no-latency"), "edited.safetensors", "input.size", "damaged"
    )
    run = run_nhl("cutout", path, "--classes", "apple", "-o", tmp_path / "e.safetensors")
    assert_one_line_error(run, "edited.safetensors", "input.size")


# ----------------------------------------------------------------------- file modes
@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_models_and_json_files_get_the_mode_of_the_users_umask(tmp_path, umask):
    expected = 0o666 & ~umask
    old = os.umask(umask)
    try:
        model = save_model(tiny_model(two_level_tree()), tmp_path / "m.safetensors")
        report = atomic_write_json(tmp_path / "r.json", {"a": 1})
        written = [model, report]
        if umask == 0o027:  # the commands too (the child inherits the umask)
            out, report = tmp_path / "e.safetensors", tmp_path / "report.json"
            run = run_nhl(
                "cutout", model, "--classes", "apple", "--no-latency", "-o", out, "--report", report
            )
            assert run.code == 0, run.err
            written += [out, report]
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: expected for p in written}


# ----------------------------------------------------------------------- devices
@pytest.mark.slow
def test_unknown_or_missing_devices_are_one_line_errors(files):
    with pytest.raises(NhlError, match="not a device torch knows"):
        resolve_device("tpu")
    with pytest.raises(NhlError, match="not a device torch knows"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        with pytest.raises(NhlError, match="numbered 0 to"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(NhlError, match="no CUDA GPU is visible"):
            resolve_device("cuda")
    image = next((files["data"] / "val" / "apple").iterdir())
    assert_one_line_error(
        run_nhl("predict", files["model"], image, "--device", "tpu"), "tpu", "--device", "use cpu"
    )
    if not torch.cuda.is_available():
        assert_one_line_error(run_nhl("predict", files["model"], image, "--device", "cuda"), "no CUDA GPU")


# ----------------------------------------------------------------------- backbones and sizes
@pytest.mark.slow
def test_a_transformer_at_a_size_it_cannot_take_says_which_backbones_can(tmp_path):
    tree = two_level_tree()
    model = NHLModel(tree, TrunkConfig("vit_tiny_patch16_224"))
    with pytest.raises(NhlError, match="224x224 images only") as error:
        model.input_config = with_input_size(model.input_config, 32)
    assert "forward_intermediates" in str(error.value) and "resnet18" in str(error.value)
    assert model.input_config.size == (3, 224, 224)  # left as it was
    flat = FlatModel(tree, TrunkConfig("vit_tiny_patch16_224"))
    with pytest.raises(NhlError, match="224x224 images only"):
        flat.input_config = with_input_size(flat.input_config, 32)
    data = make_tiny_data.make_image_folder(tmp_path / "data", CLASSES, per_class=1, size=16)
    out = tmp_path / "m.safetensors"
    run = run_nhl(
        "train",
        "--data",
        data,
        "--flat",
        "--backbone",
        "vit_tiny_patch16_224",
        "--input-size",
        "32",
        "-o",
        out,
    )
    assert_one_line_error(run, "vit_tiny_patch16_224", "32x32", "224x224 images only")
    assert not out.exists()


def test_sizes_and_channels_below_one_are_refused():
    config = InputConfig()
    for size in (0, -8, (32, 0)):
        with pytest.raises(NhlError, match="input_size must be a positive"):
            with_input_size(config, size)
    for chans in (0, -1):
        with pytest.raises(NhlError, match="in_chans must be at least 1"):
            TrunkConfig("resnet18", None, chans)
    with pytest.raises(NhlError, match="positive integers"):
        InputConfig(size=(3, 0, 0))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "value"),
    [("--input-size", "0"), ("--input-size", "-5"), ("--in-chans", "0"), ("--in-chans", "-1")],
)
def test_train_refuses_sizes_and_channels_below_one(tmp_path, option, value):
    out = tmp_path / "m.safetensors"
    run = run_nhl("train", "--data", "fashion-mnist", option, value, "-o", out)
    assert_one_line_error(run, option)
    assert not out.exists()
