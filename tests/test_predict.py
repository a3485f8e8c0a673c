"""``nhl predict``, image loading, and top-down attention in predictions and ``nhl eval`` (CPU, tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CLASSES,
    assert_one_line_error,
    flat_tree,
    make_tiny_data,
    run_nhl,
    tiny_model,
    two_level_tree,
)
from PIL import Image

from nhlcli.data.loaders import build_transform
from nhlcli.errors import NhlError
from nhlcli.evaluation import ClassSubset, _SubsetTargets, attention_curve_file, evaluate_file
from nhlcli.model.attention import TruthAttention, check_attend, class_attention
from nhlcli.model.files import save_model
from nhlcli.model.loading import open_model
from nhlcli.model.nhl import FlatModel, with_input_size
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.prediction import load_image, predict_images

FRUIT = ["apple", "banana", "cherry", "fig"]


def write_images(folder: Path) -> dict[str, Path]:
    """One image per mode, all of different sizes (none at the model's input size)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    images = {
        "rgb.jpg": rgb,
        "big.png": Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)),
        "grey.png": Image.fromarray(rng.integers(0, 256, (50, 17), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA"),
        "palette.png": rgb.resize((33, 33)).quantize(16),
        "grey16.png": Image.fromarray(rng.integers(0, 65536, (24, 20), dtype=np.uint16)),
        "cmyk.jpg": rgb.resize((45, 45)).convert("CMYK"),
    }
    paths = {}
    for name, img in images.items():
        paths[name] = folder / name
        extra = {"transparency": 0} if img.mode == "P" else {}
        img.save(paths[name], **extra)
    return paths


def reference_image(path: Path) -> Image.Image:
    """The image as the model should see it, decoded independently of ``load_image``."""
    with Image.open(path) as img:
        if img.mode.startswith("I;16"):  # 16-bit grey: scaled into 8 bits, not clipped
            values = np.asarray(img, dtype=np.float64) / 257
            return Image.fromarray(np.rint(values).astype(np.uint8), "L")
        if "A" in img.mode or "transparency" in img.info:  # alpha: composited onto white
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
            alpha = rgba[..., 3:] / 255
            return Image.fromarray(np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8))
        return img.convert("RGB")


def direct_probabilities(model: torch.nn.Module, path: Path, attention=None) -> torch.Tensor:
    inp = model.input_config
    transform = build_transform(
        inp.size[1],
        is_training=False,
        mean=inp.mean,
        std=inp.std,
        in_chans=inp.size[0],
        interpolation=inp.interpolation,
        crop_pct=inp.crop_pct,
    )
    with torch.no_grad():
        x = transform(reference_image(path))[None]
        logits = model(x, attention) if attention else model(x)
    return logits.softmax(dim=1)[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny NHL model and a flat one, saved; images of every mode; a tiny ImageFolder."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    tree = two_level_tree()
    model = tiny_model(tree)
    save_model(model, root / "nhl.safetensors")
    flat = FlatModel(flat_tree(), TrunkConfig("resnet18"))
    flat.input_config = with_input_size(flat.input_config, 32)
    save_model(flat, root / "flat.safetensors")
    data = make_tiny_data.make_image_folder(root / "data", CLASSES, per_class=4, size=32)
    return {
        "root": root,
        "tree": tree,
        "model": model,
        "file": root / "nhl.safetensors",
        "flat": root / "flat.safetensors",
        "images": write_images(root / "images"),
        "data": data,
    }


# ---------------------------------------------------------------------------- images and predictions
def test_predictions_are_the_softmax_of_the_models_own_logits(setup):
    model, paths = setup["model"], list(setup["images"].values())
    results = predict_images(model, paths, top_k=len(CLASSES), batch_size=3)  # several batches
    assert [r["file"] for r in results] == [str(p) for p in paths]
    names = {c: setup["tree"].node(c).name for c in CLASSES}
    for path, result in zip(paths, results, strict=True):
        expected = direct_probabilities(model, path)
        probs = [row["probability"] for row in result["top"]]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        got = torch.tensor([next(r["probability"] for r in result["top"] if r["id"] == c) for c in CLASSES])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        assert all(row["name"] == names[row["id"]] for row in result["top"])


def test_top_k_is_sorted_and_clipped(setup):
    model, path = setup["model"], setup["images"]["rgb.jpg"]
    full = predict_images(model, [path], top_k=100)[0]["top"]
    assert len(full) == len(CLASSES) and {r["id"] for r in full} == set(CLASSES)
    assert predict_images(model, [path], top_k=2)[0]["top"] == full[:2]
    with pytest.raises(NhlError, match="at least 1"):
        predict_images(model, [path], top_k=0)


def test_load_image_handles_modes_rotation_and_bad_files(setup, tmp_path):
    images = setup["images"]
    assert {name: load_image(p).mode for name, p in images.items()} == {
        "rgb.jpg": "RGB",
        "big.png": "RGB",
        "grey.png": "L",
        "rgba.png": "RGB",
        "palette.png": "RGB",
        "grey16.png": "L",
        "cmyk.jpg": "RGB",
    }
    assert load_image(images["big.png"]).size == (300, 200)
    # 16-bit grey keeps its contrast (Pillow's own convert would clip nearly all of it to 255)
    assert np.asarray(load_image(images["grey16.png"])).std() > 50
    # EXIF orientation 6 (rotate 90 degrees): a 40x20 picture is 20 wide and 40 tall upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), "red").save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)
    # a grey model takes colour images and the other way round
    grey_model = tiny_model(setup["tree"], in_chans=1)
    assert len(predict_images(grey_model, [images["rgba.png"], images["grey.png"]], top_k=1)) == 2

    (tmp_path / "notes.png").write_text("not an image")
    data = images["big.png"].read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(NhlError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    for broken in ("notes.png", "truncated.png"):
        with pytest.raises(NhlError, match="cannot decode") as info:
            load_image(tmp_path / broken)
        assert "\n" not in str(info.value)
    with pytest.raises(NhlError, match="does not exist"):  # checked before any image is decoded
        predict_images(setup["model"], [images["rgb.jpg"], tmp_path / "missing.png"])


# ---------------------------------------------------------------------------- attention
def _logits(model, x, attention=None):
    with torch.no_grad():
        return model(x, attention) if attention else model(x)


def test_attention_acts_only_on_the_scaled_branches(setup):
    model, tree = setup["model"], setup["tree"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = _logits(model, x)
    index = {c: i for i, c in enumerate(tree.classes)}

    def changed(attention) -> set[str]:
        out = _logits(model, x, attention)
        return {c for c in CLASSES if not torch.equal(out[:, index[c]], base[:, index[c]])}

    for level in (None, 1, 2, "path"):  # scale 1 is exactly no attention
        assert changed(class_attention(model, [("apple", 1.0), ("fruit", 1.0)], level)) == set()
    # the last level: a class's branch feeds its own logit only
    assert changed(class_attention(model, [("apple", 3.0)])) == {"apple"}
    assert changed(class_attention(model, [("apple", 0.5), ("elm", 2.0)], 2)) == {"apple", "elm"}
    # level 1: an inner node's scale reaches its descendants only; a class acts through its ancestor
    assert changed(class_attention(model, [("fruit", 3.0)], 1)) == set(FRUIT)
    assert changed(class_attention(model, [("daisy", 0.5)], 1)) == {"daisy", "elm"}
    assert changed(class_attention(model, [("apple", 2.0)], "path")) == set(FRUIT)
    # predictions with attention are the softmax of the attended logits
    attention = class_attention(model, [("banana", 4.0)])
    path = setup["images"]["rgb.jpg"]
    top = predict_images(model, [path], top_k=6, attention=attention)[0]["top"]
    got = torch.tensor([next(r["probability"] for r in top if r["id"] == c) for c in CLASSES])
    torch.testing.assert_close(got, direct_probabilities(model, path, attention), atol=1e-6, rtol=1e-5)


def test_attention_needs_per_class_branches(setup):
    flat = open_model(setup["flat"])
    with pytest.raises(NhlError, match="NHL model"):
        class_attention(flat, [("apple", 2.0)])
    one_branch = create_model(flat_tree(), "phl-1branch", TrunkConfig("resnet18"))
    with pytest.raises(NhlError, match="1branch"):
        TruthAttention(one_branch, 2.0)
    with pytest.raises(NhlError, match="closest: apple"):
        class_attention(setup["model"], [("appel", 2.0)])


def test_a_class_takes_one_attention_scale(setup):
    model = setup["model"]
    with pytest.raises(NhlError, match="'apple' twice"):
        check_attend([("apple", 2.0), ("apple", 3.0)])
    with pytest.raises(NhlError, match="same classes twice \\('apple' and '0'\\)"):
        class_attention(model, [("apple", 2.0), ("0", 3.0)])  # the same class by its index
    # an inner node and a class below it are two nodes: their scales meet on shared nodes
    both = class_attention(model, [("fruit", 2.0), ("apple", 3.0)], level=1)
    fruit = setup["tree"].level(1).index("fruit")
    assert both[1][fruit].item() == 6.0


@pytest.mark.parametrize("level", [None, 1, "path"])
def test_truth_attention_is_each_images_own_class_attention(setup, level):
    model, tree = setup["model"], setup["tree"]
    targets = torch.tensor([0, 3, 5, 2, 0])
    x = torch.randn(len(targets), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    truth = TruthAttention(model, 2.5, level)
    per_sample = truth(targets)
    attended = _logits(model, x, per_sample)
    for i, t in enumerate(targets.tolist()):
        own = class_attention(model, [(tree.classes[t], 2.5)], level)
        assert per_sample.keys() == own.keys()
        for depth, scales in own.items():
            assert torch.equal(per_sample[depth][i], scales)
        torch.testing.assert_close(attended[i], _logits(model, x, own)[i], atol=1e-6, rtol=0)
    # through a ClassSubset, subset targets map back to the full model's classes
    subset = ClassSubset(model, tree.subtree(["daisy", "apple"]))
    mapped = _SubsetTargets(truth, subset.index)(torch.tensor([1, 0]))
    full = truth(torch.tensor([tree.class_index("daisy"), tree.class_index("apple")]))
    assert all(torch.equal(mapped[d], full[d]) for d in full)


def test_evaluate_file_attention_options(setup):
    common = dict(workers=0, device="cpu", batch_size=4)
    plain = evaluate_file(setup["file"], setup["data"], **common)
    assert plain["attention"] is None
    pair = ["daisy", "apple"]
    subset = evaluate_file(setup["file"], setup["data"], classes=pair, **common)
    truth = evaluate_file(setup["file"], setup["data"], classes=pair, attend_truth=1.0, **common)
    assert {k: truth[k] for k in ("top1", "top5", "loss", "per_class")} == {
        k: subset[k] for k in ("top1", "top5", "loss", "per_class")
    }
    assert truth["attention"] == {"mode": "truth", "level": "last", "levels": [2], "scale": 1.0}
    steered = evaluate_file(setup["file"], setup["data"], attend={"fruit": 0.0}, attend_level=1, **common)
    assert steered["attention"]["classes"] == [{"id": "fruit", "name": "fruit", "classes": 4, "scale": 0.0}]
    assert steered["loss"] != plain["loss"]
    with pytest.raises(NhlError, match="attend_level needs"):
        evaluate_file(setup["file"], setup["data"], attend_level="path", **common)


@pytest.mark.parametrize("classes, level", [(None, None), (["daisy", "apple", "elm"], "path")])
def test_attention_curve_equals_one_evaluation_per_scale(setup, classes, level):
    common = dict(classes=classes, workers=0, device="cpu", batch_size=4, attend_level=level)
    scales = [0.0, 1.0, 3.0]
    curve = attention_curve_file(setup["file"], setup["data"], scales, **common)
    assert [p["scale"] for p in curve["curve"]] == scales
    for point in curve["curve"]:
        one = evaluate_file(setup["file"], setup["data"], attend_truth=point["scale"], **common)
        assert point["images"] == one["images"]
        for key in ("top1", "top5", "loss"):
            assert point[key] == pytest.approx(one[key], abs=1e-9), (point["scale"], key)
    best = max(curve["curve"], key=lambda p: p["top1"])
    assert (curve["best_scale"], curve["best_top1"]) == (best["scale"], best["top1"])
    assert curve["attention"]["scales"] == scales
    assert curve["num_classes"] == (3 if classes else len(CLASSES))


# ---------------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_predict_json_through_the_cli(setup):
    images = [setup["images"]["rgb.jpg"], setup["images"]["grey16.png"]]
    run = run_nhl("predict", setup["file"], *images, "--top-k", "3", "--device", "cpu", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["attention"] is None and report["top_k"] == 3 and report["num_classes"] == 6
    expected = predict_images(open_model(setup["file"]), images, top_k=3)
    for got, want in zip(report["predictions"], expected, strict=True):
        assert got["file"] == want["file"]
        assert [r["id"] for r in got["top"]] == [r["id"] for r in want["top"]]
        for a, b in zip(got["top"], want["top"], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)


@pytest.mark.slow
def test_predict_table_with_attention_through_the_cli(setup):
    run = run_nhl(
        "predict", setup["file"], setup["images"]["big.png"], "--attend", "fruit=2", "--attend-level", "1",
        "--top-k", "10", "--device", "cpu",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert "big.png" in run.out and all(c in run.out for c in CLASSES)
    assert "attention: fruit x2 at level 1" in run.out


@pytest.mark.slow
def test_eval_attend_truth_one_equals_plain_eval(setup):
    args = ("eval", setup["file"], "--data", setup["data"], "--workers", "0", "--device", "cpu", "--json")
    plain = run_nhl(*args)
    truth = run_nhl(*args, "--attend-truth", "1", "--attend-level", "path")
    assert plain.code == 0 and truth.code == 0, plain.err + truth.err
    plain, truth = json.loads(plain.out), json.loads(truth.out)
    assert plain["attention"] is None
    assert truth["attention"] == {"mode": "truth", "level": "path", "levels": [1, 2], "scale": 1.0}
    for key in ("images", "top1", "top5", "loss", "per_class"):
        assert truth[key] == plain[key], key


@pytest.mark.slow
def test_eval_attention_curve_through_the_cli(setup):
    args = ("eval", setup["file"], "--data", setup["data"], "--workers", "0", "--device", "cpu")
    plain = json.loads(run_nhl(*args, "--json").out)
    run = run_nhl(*args, "--attend-truth", "1, 2.5", "--json")
    assert run.code == 0, run.err
    curve = json.loads(run.out)
    assert [p["scale"] for p in curve["curve"]] == [1.0, 2.5]
    assert curve["curve"][0]["top1"] == plain["top1"]
    assert curve["curve"][0]["loss"] == pytest.approx(plain["loss"], abs=1e-9)
    table = run_nhl(*args, "--attend-truth", "1,2.5")
    assert table.code == 0, table.err
    assert "x2.5" in table.out and "(best)" in table.out and "at level 2" in table.out


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "missing image", "not an image", "top-k 0", "attend without =", "unknown class", "flat model", "both",
        "scale not a number", "negative scale", "flat curve", "attend twice", "attend twice by index",
    ],
)  # fmt: skip
def test_bad_inputs_give_one_error_line(setup, case, tmp_path):
    nhl, flat, image = setup["file"], setup["flat"], setup["images"]["rgb.jpg"]
    (tmp_path / "notes.jpg").write_text("hello")
    eval_args = ("eval", nhl, "--data", setup["data"], "--workers", "0", "--device", "cpu")

    def twice(spelling: str) -> tuple[str, ...]:
        return ("--attend", "apple=2", "--attend", f"{spelling}=3")

    runs = {
        "missing image": (("predict", nhl, image, tmp_path / "nope.jpg"), ["nope.jpg", "does not exist"]),
        "not an image": (("predict", nhl, tmp_path / "notes.jpg"), ["notes.jpg", "cannot decode"]),
        "top-k 0": (("predict", nhl, image, "--top-k", "0"), ["--top-k 0", "at least 1"]),
        "attend without =": (("predict", nhl, image, "--attend", "apple"), ["CLASS=SCALE"]),
        "unknown class": (("predict", nhl, image, "--attend", "appel=2"), ["appel", "closest: apple"]),
        "flat model": (("predict", flat, image, "--attend", "apple=2"), ["needs an NHL model"]),
        "both": ((*eval_args, "--attend", "apple=2", "--attend-truth", "2"), ["exclude each other"]),
        "scale not a number": ((*eval_args, "--attend-truth", "1,x"), ["'x' is not a number"]),
        "negative scale": ((*eval_args, "--attend-truth", "1,-2"), ["finite number >= 0"]),
        "flat curve": (("eval", flat, "--data", setup["data"], "--attend-truth", "1,2"), ["an NHL model"]),
        "attend twice": (("predict", nhl, image, *twice("apple")), ["apple", "twice"]),
        "attend twice by index": ((*eval_args, *twice("0")), ["apple", "twice"]),
    }
    args, fragments = runs[case]
    assert_one_line_error(run_nhl(*args), *fragments)
