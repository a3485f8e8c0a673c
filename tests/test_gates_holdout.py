"""``--holdout`` on ``nhl gates fit|tune|sweep`` and ``nhl eval``: choices made on a hold-out of the
training images (the one ``nhl train --holdout`` trains without), never on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    CLASSES,
    assert_one_line_error,
    flat_tree,
    make_tiny_data,
    run_nhl,
    tiny_model,
    two_level_tree,
)

from nhlcli.cli import main
from nhlcli.data import ImageFolderDataset, holdout_indices, model_holdout, resolve_holdout, split_name
from nhlcli.errors import NhlError
from nhlcli.model.files import save_model

PER_CLASS = 10  # training images per class; a 0.2 hold-out is 2 of them, a 0.5 one 5
VAL_PER_CLASS = PER_CLASS // 2  # the folder's own val split (what a test split is to the tests)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout")
    data = make_tiny_data.make_image_folder(root / "data", CLASSES, per_class=PER_CLASS, size=32)
    save_model(tiny_model(two_level_tree(), seed=0), root / "nhl.safetensors")
    # as 'nhl train --holdout 0.5' records it: the model learned from the other half only
    save_model(
        tiny_model(flat_tree(), kind="flat", seed=0), root / "flat-h50.safetensors", training={"holdout": 0.5}
    )
    return root, data


def nhl_json(*args: object, capsys: pytest.CaptureFixture) -> dict:
    """Run ``nhl ARGS --json`` in this process (so the test sees which images it reads)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([*map(str, args), "--workers", "0", "--json"])
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    return json.loads(out)


@pytest.fixture
def images_read(monkeypatch):
    """The image files every ImageFolder read opens, in the order they are opened."""
    seen: list[str] = []
    load = ImageFolderDataset.load_image

    def recording(self, index):
        seen.append(self.samples[index][0])
        return load(self, index)

    monkeypatch.setattr(ImageFolderDataset, "load_image", recording)
    return seen


def test_tune_and_sweep_on_the_holdout_read_no_image_the_gates_were_fitted_on(
    files, tmp_path, capsys, images_read
):
    root, data = files
    gated = tmp_path / "gated.safetensors"
    fit = nhl_json(
        "gates", "fit", root / "nhl.safetensors", "-o", gated, "--data", data, "--split", "train",
        "--holdout", "0.2", "--epochs", "2", capsys=capsys,
    )  # fmt: skip
    fitted = set(images_read)
    images_read.clear()
    tuned = nhl_json(
        "gates", "tune", gated, "--data", data, "--split", "val", "--holdout", "0.2", "--max-drop", "50",
        capsys=capsys,
    )  # fmt: skip
    tuned_on = set(images_read)
    images_read.clear()
    swept = nhl_json("gates", "sweep", gated, "--data", data, "--holdout", "0.2", capsys=capsys)
    swept_on = set(images_read)

    train = sorted(str(p) for p in (data / "train").rglob("*") if p.is_file())
    held = 2 * len(CLASSES)  # round(0.2 * 10) of every class
    assert fitted and tuned_on and not fitted & tuned_on  # disjoint
    assert fitted | tuned_on == set(train)  # together: the training images, no val image
    assert swept_on == tuned_on
    assert fit["images"] == len(train) - held and fit["holdout"] == 0.2
    assert fit["split"] == "train less the hold-out (20%)"
    assert tuned["images"] == held and tuned["holdout"] == 0.2 and tuned["split"] == "hold-out (20% of train)"
    assert swept["holdout"] == 0.2 and swept["split"] == tuned["split"]

    images_read.clear()
    report = nhl_json("eval", gated, "--data", data, "--holdout", "0.2", capsys=capsys)
    assert set(images_read) == tuned_on and report["images"] == held
    assert report["top1"] == pytest.approx(tuned["top1"])  # the same images, the same thresholds
    images_read.clear()
    test = nhl_json("eval", gated, "--data", data, capsys=capsys)  # the model saw every image: no default
    assert test["holdout"] == 0.0 and test["images"] == VAL_PER_CLASS * len(CLASSES)
    assert {Path(p).parts[-3] for p in images_read} == {"val"}


def test_a_model_trained_with_a_holdout_keeps_it_by_default(files, tmp_path, capsys, images_read):
    root, data = files
    model = root / "flat-h50.safetensors"
    held = PER_CLASS // 2 * len(CLASSES)
    report = nhl_json("eval", model, "--data", data, capsys=capsys)
    assert (
        report["holdout"] == 0.5 and report["images"] == held and report["split"] == "hold-out (50% of train)"
    )
    assert nhl_json("eval", model, "--data", data, "--holdout", "0", capsys=capsys)["images"] == (
        VAL_PER_CLASS * len(CLASSES)
    )  # 0: the data's own val split
    curve = nhl_json("eval", root / "nhl.safetensors", "--data", data, "--attend-truth", "1,2",
                     "--holdout", "0.5", capsys=capsys)  # fmt: skip
    assert curve["images"] == held and curve["holdout"] == 0.5

    images_read.clear()
    gated = tmp_path / "flat-gated.safetensors"
    fit = nhl_json("gates", "fit", model, "-o", gated, "--data", data, "--epochs", "1", capsys=capsys)
    assert fit["holdout"] == 0.5 and fit["images"] == held  # only what the model learned from
    fitted = set(images_read)
    images_read.clear()
    tuned = nhl_json("gates", "tune", gated, "--data", data, "--max-drop", "50", capsys=capsys)
    assert tuned["holdout"] == 0.5 and not fitted & set(images_read)  # the gated file keeps the record


def test_the_holdout_is_the_one_nhl_train_carves(files):
    """Split seed 0 and the same stratified draw as ``nhl train --holdout`` (``create_loaders``)."""
    root, data = files
    from nhlcli.data import create_loaders, model_loader

    model = tiny_model(two_level_tree(), seed=0)
    inp = model.input_config
    _, val = create_loaders(
        data, model.tree, input_size=32, mean=inp.mean, std=inp.std, workers=0, holdout=0.2
    )
    ours = model_loader(model, data, "val", workers=0, holdout=0.2)
    names = [val.dataset.sample_name(i) for i in range(len(val.dataset))]
    assert names == [ours.dataset.sample_name(i) for i in range(len(ours.dataset))]
    base = ImageFolderDataset(data, "train")
    expected = [base.sample_name(int(i)) for i in holdout_indices(np.asarray(base.targets), 0.2, 0)]
    assert sorted(names) == sorted(expected)


def test_holdout_choices_are_checked():
    assert resolve_holdout(None, "val", 0.1) == 0.1  # the model's own
    assert resolve_holdout(0, "val", 0.1) == 0.0
    assert resolve_holdout(0.3, "train", 0.1) == 0.3  # fewer training images: allowed
    with pytest.raises(NhlError, match="not the hold-out the model was trained without"):
        resolve_holdout(0.3, "val", 0.1)  # would hold images the model learned from
    for bad in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(NhlError, match="fraction"):
            resolve_holdout(bad, "val")
    with pytest.raises(NhlError, match="train .* and val"):
        resolve_holdout(0.2, "test")
    assert split_name("fashion-mnist", "val", 0.1) == "hold-out (10% of train)"

    class Trained:
        metadata = {"training": {"holdout": "half"}}

    with pytest.raises(NhlError, match="records a training hold-out"):
        model_holdout(Trained(), "val")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("gates", "tune", "{gated}", "--holdout", "1", "--max-drop", "1"), ["--holdout 1", "fraction"]),
        (("gates", "sweep", "{gated}", "--holdout", "-0.2"), ["--holdout -0.2", "fraction"]),
        (
            ("gates", "fit", "{model}", "-o", "{out}", "--holdout", "0.2", "--split", "test"),
            ["--split 'test'"],
        ),
        (("eval", "{model}", "--holdout", "1.5"), ["--holdout 1.5"]),
        (("eval", "{model}", "--holdout", "nan"), ["--holdout nan", "finite"]),
        (("eval", "{trained}", "--holdout", "0.2"), ["--holdout 0.2", "trained without (0.5)"]),
    ],
)
def test_bad_holdouts_get_one_line_errors(files, tmp_path, args, fragments):
    root, data = files
    gated = tmp_path / "g.safetensors"
    save_model(tiny_model(flat_tree(), kind="flat", seed=0), gated)  # refused before it is read as gated
    names = {
        "gated": gated, "model": root / "nhl.safetensors", "out": tmp_path / "o.safetensors",
        "trained": root / "flat-h50.safetensors",
    }  # fmt: skip
    run = run_nhl(*(a.format(**names) for a in args), "--data", data, "--workers", "0")
    assert_one_line_error(run, *fragments)
    assert not (tmp_path / "o.safetensors").exists()


def test_the_fit_hint_after_a_holdout_tunes_on_it_and_reports_on_the_val_split(files, tmp_path, capsys):
    root, data = files
    gated = tmp_path / "hinted.safetensors"
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["gates", "fit", str(root / "nhl.safetensors"), "-o", str(gated), "--data", str(data),
              "--holdout", "0.2", "--epochs", "1", "--workers", "0"])  # fmt: skip
    out = capsys.readouterr().out
    assert done.value.code == 0
    tune = next(line for line in out.splitlines() if line.startswith("nhl gates tune "))
    report = next(line for line in out.splitlines() if line.startswith("nhl eval "))
    assert "--split val --holdout 0.2" in tune and "--part" not in tune
    assert report.endswith("--holdout 0")
