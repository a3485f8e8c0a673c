"""``nhl train`` never loses a user's file or run, and ``--resume`` means what it says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import CLASSES as TREE_CLASSES
from conftest import assert_one_line_error, make_tiny_data, nested_tree, run_nhl, tiny_model

from nhlcli.errors import NhlError
from nhlcli.model.files import read_metadata
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.sources import build_flat_tree
from nhlcli.training import TrainConfig, train
from nhlcli.training.checkpoint import latest, load_checkpoint

CLASSES = ["apple", "banana", "cherry"]
SMALL = ["--flat", "--input-size", "16", "--batch-size", "4", "--workers", "0", "--augment", "none"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tiny_data.make_image_folder(
        tmp_path_factory.mktemp("data") / "d", CLASSES, per_class=4, size=16
    )


def flat_model():
    # fixed initial weights: an unlucky draw can diverge on 4-image batches
    return tiny_model(
        build_flat_tree([ClassEntry(c, c) for c in CLASSES], name="toy"), kind="flat", size=16, seed=0
    )


def small_config(**changes) -> TrainConfig:
    # float32 and a small step: these toy runs test checkpoints, and 4-image batches in bf16 at
    # lr 1e-3 can diverge to nan on an unlucky machine
    base = dict(epochs=2, batch_size=4, lr=3e-4, warmup_epochs=0, workers=0, augment=None, seed=0, amp=False)
    return TrainConfig(**{**base, **changes})


# -- nothing lost ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_refuses_to_write_its_model_over_its_tree(tmp_path, folder):
    tree = tmp_path / "t.json"
    build_flat_tree([ClassEntry(c, c) for c in CLASSES], name="toy").save(tree)
    before = digest(tree)
    for spelling in (tree, tmp_path / "sub" / ".." / "t.json"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        run = run_nhl("train", "--data", folder, "--hierarchy", tree, "-o", spelling, *SMALL)
        assert_one_line_error(run, "--output", "input")
        assert digest(tree) == before
    assert not Path(f"{tree}.ckpt").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "output, fragment",
    [
        ("{tmp}", "is a directory"),
        ("{file}/m.safetensors", "not a directory"),
        ("/proc/m.safetensors", "cannot write"),
    ],
)
def test_train_checks_its_output_path_before_training(tmp_path, folder, output, fragment):
    (tmp_path / "plain.txt").write_text("x")
    path = output.format(tmp=tmp_path, file=tmp_path / "plain.txt")
    run = run_nhl("train", "--data", folder, "-o", path, *SMALL, "--epochs", "1")
    assert_one_line_error(run, fragment)
    assert "epoch" not in run.out  # refused before any training


@pytest.mark.slow
def test_a_fresh_run_refuses_to_discard_an_unfinished_runs_checkpoint(tmp_path, folder):
    ckdir = tmp_path / "ck"
    train(flat_model(), folder, None, small_config(epochs=1), checkpoint_dir=ckdir)
    sidecar_path = latest(ckdir)[0]
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["extra"]["config"]["epochs"] = 3  # as if interrupted after 1 of 3 epochs
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(NhlError, match="unfinished run .1 of 3 epochs.*`resume`.*`overwrite`"):
        train(flat_model(), folder, None, small_config(), checkpoint_dir=ckdir)
    assert json.loads(sidecar_path.read_text()) == sidecar  # untouched
    again = train(flat_model(), folder, None, small_config(), checkpoint_dir=ckdir, overwrite=True)
    assert again.epochs_done == 2 and load_checkpoint(ckdir).epoch == 2
    # a finished run's checkpoint is redundant with its model file: a new run may replace it
    train(flat_model(), folder, None, small_config(epochs=1), checkpoint_dir=ckdir)
    with pytest.raises(NhlError, match="`resume` .* `overwrite`"):
        train(flat_model(), folder, None, small_config(), checkpoint_dir=ckdir, resume=True, overwrite=True)


# -- resume means what it says --------------------------------------------------------------------


@pytest.mark.slow
def test_resume_refuses_a_recipe_change_and_takes_the_runs_recipe_when_options_are_left_out(tmp_path, folder):
    out = tmp_path / "m.safetensors"
    first = run_nhl(
        "train", "--data", folder, "-o", out, *SMALL, "--epochs", "1", "--lr", "0.0005", "--seed", "5"
    )
    assert first.code == 0, first.err
    assert latest(Path(f"{out}.ckpt")) is not None
    for option, value in (("--lr", "0.5"), ("--batch-size", "2"), ("--seed", "1")):
        run = run_nhl(
            "train", "--data", folder, "-o", out, *SMALL, "--epochs", "2", "--resume", option, value
        )
        assert_one_line_error(run, option, "recipe")
    # --epochs may change (the schedule is stretched to the new end) and is reported
    run = run_nhl("train", "--data", folder, "-o", out, *SMALL, "--epochs", "2", "--resume")
    assert run.code == 0, run.err
    assert "resumed with --epochs 2 (the run had 1)" in " ".join(run.out.split())
    training = read_metadata(out)["training"]
    assert training["lr"] == 0.0005 and training["seed"] == 5  # what really ran
    assert training["resumes"] == [{"at_epoch": 1, "changed": {"epochs": [1, 2]}}]
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    fewer = run_nhl("train", "--data", folder, "-o", out, *SMALL, "--epochs", "1", "--resume")
    assert_one_line_error(fewer, "--epochs 1 cannot undo", "already trained 2 epochs", "give 2 or more")


class _InterruptAt:
    """A loader that raises Ctrl-C at one step of one epoch (the epochs counted by iterations)."""

    def __init__(self, loader, epoch: int, step: int) -> None:
        self.loader, self.epoch, self.step, self.passes = loader, epoch, step, 0
        self.dataset, self.sampler = loader.dataset, loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.passes += 1
        for i, batch in enumerate(self.loader, start=1):
            if self.passes == self.epoch and i == self.step:
                raise KeyboardInterrupt
            yield batch


@pytest.mark.slow
def test_ctrl_c_mid_epoch_keeps_the_last_whole_epoch_and_resume_trains_each_step_once(tmp_path, folder):
    from nhlcli.distributed import DistInfo
    from nhlcli.training.loop import _make_loaders

    model = flat_model()
    config = small_config(epochs=3)
    train_loader, val_loader = _make_loaders(model, folder, config, DistInfo())
    steps = len(train_loader)
    assert steps >= 2
    ckdir = tmp_path / "ck"
    loaders = (_InterruptAt(train_loader, epoch=2, step=2), val_loader)
    stopped = train(model, folder, None, config, checkpoint_dir=ckdir, loaders=loaders)
    assert stopped.interrupted and stopped.epochs_done == 1
    assert stopped.interrupted_at == {"epoch": 2, "steps_done": 1, "steps": steps}
    saved = load_checkpoint(ckdir)
    assert saved.epoch == 1 and saved.step == steps  # the end of epoch 1, not weights from mid-epoch 2
    out = tmp_path / "m.safetensors"
    done = train(flat_model(), folder, out, config, checkpoint_dir=ckdir, resume=True)
    assert done.epochs_done == 3
    assert load_checkpoint(ckdir).step == 3 * steps  # no step trained twice


@pytest.mark.slow
def test_resuming_a_finished_run_trains_nothing_and_says_so(tmp_path, folder):
    out = tmp_path / "m.safetensors"
    assert run_nhl("train", "--data", folder, "-o", out, *SMALL, "--epochs", "1").code == 0
    out.unlink()
    run = run_nhl("train", "--data", folder, "-o", out, *SMALL, "--epochs", "1", "--resume")
    assert run.code == 0, run.err
    assert "already finished its 1 epoch;" in " ".join(run.out.split()) and "2/1" not in run.out
    assert out.is_file()


# -- silent nonsense refused ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--warmup-epochs", "-1"], "--warmup-epochs"),
        (["--max-steps-per-epoch", "0"], "--max-steps-per-epoch"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--epochs", "0"], "--epochs"),
        (["--weight-decay", "-0.1"], "--weight-decay"),
        (["--workers", "-1"], "--workers"),
        (["--warmup-epochs", "5", "--epochs", "2"], "--warmup-epochs"),
        (["--variant", "phl-small"], "--variant phl-small"),  # SMALL says --flat: which one?
        (["--split", "2"], "--variant flat-trunk"),  # --flat keeps every stage: --split would be ignored
        (["--widths", "8"], "--widths"),  # a flat model has no branches to shape
    ],
)
def test_train_refuses_values_that_would_mean_something_else(tmp_path, folder, args, fragment):
    run = run_nhl("train", "--data", folder, "-o", tmp_path / "m.safetensors", *SMALL, *args)
    assert_one_line_error(run, fragment)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_train_without_a_variant_builds_the_nhl_with_linear_leaves(tmp_path):
    """The default shape is nhl-scale: branches above the leaves (one level here), each leaf a row
    reading its parent's features."""
    data = make_tiny_data.make_image_folder(tmp_path / "d", TREE_CLASSES, per_class=2, size=16)
    tree = nested_tree(2).save(tmp_path / "t.json")
    out = tmp_path / "m.safetensors"
    args = ["--input-size", "16", "--batch-size", "4", "--workers", "0", "--augment", "none", "--epochs", "1"]
    assert run_nhl("train", "--data", data, "-t", tree, "-o", out, "--widths", "8", *args).code == 0
    branches = read_metadata(out)["branches"]
    assert branches["linear_leaves"] is True and branches["widths"] == [8]
    assert branches["expansions"] == [4] and branches["pool_min_side"] == 8


# -- a run that fits its time -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_time_budget_ends_the_run_and_records_what_ran(tmp_path, folder):
    out = tmp_path / "m.safetensors"
    short = train(flat_model(), folder, out, small_config(epochs=6, time_budget_s=1e-3))
    assert short.epochs_done == 1 and short.time_budget["epochs"] == 1
    assert short.time_budget["ended_by_budget"] and short.time_budget["steps"] == 1
    assert read_metadata(out)["training"]["epochs"] == 1  # what ran, not what was asked
    long = train(
        flat_model(), folder, None, small_config(epochs=2, time_budget_s=1e6), checkpoint_dir=tmp_path / "c"
    )
    assert long.epochs_done == 2  # never more than asked


@pytest.mark.slow
def test_skip_bad_images_trains_past_corrupt_files_and_names_them(tmp_path):
    data = make_tiny_data.make_image_folder(tmp_path / "d", CLASSES, per_class=4, size=16)
    bad = make_tiny_data.write_bad_images(data / "train" / "banana")
    out = tmp_path / "m.safetensors"
    stopped = run_nhl("train", "--data", data, "-o", out, *SMALL, "--epochs", "1")
    assert_one_line_error(stopped, "cannot decode", "--skip-bad-images")
    assert not out.exists()
    # one image a step, so that no batch is dropped at the epoch's end and every bad file is met;
    # 64 px, so that BatchNorm sees more than one value per channel in a step of one image
    every = ("--epochs", "1", "--batch-size", "1", "--input-size", "64", "--skip-bad-images", "--json")
    run = run_nhl("train", "--data", data, "-o", out, *SMALL, *every)
    clean = make_tiny_data.make_image_folder(tmp_path / "clean", CLASSES, per_class=2, size=16)
    one = run_nhl("train", "--data", clean, "-o", tmp_path / "one.safetensors", *SMALL, "--batch-size", "1")
    assert_one_line_error(one, "BatchNorm", "--batch-size 2 or more")
    assert run.code == 0, run.err
    named = json.loads(run.out)["bad_images"]
    assert sorted(Path(p).name for p in named) == sorted(p.name for p in bad)
    assert sorted(Path(p).name for p in read_metadata(out)["training"]["bad_images"]) == sorted(
        p.name for p in bad
    )


@pytest.mark.slow
def test_train_says_which_augmentation_it_picked_for_small_images(tmp_path, folder):
    out = tmp_path / "m.safetensors"
    args = ["--flat", "--input-size", "16", "--batch-size", "4", "--workers", "0", "--epochs", "1"]
    run = run_nhl("train", "--data", folder, "-o", out, *args)
    assert run.code == 0, run.err
    assert "no RandAugment" in run.out
    training = read_metadata(out)["training"]
    assert training["augment"] is None and training["crop_scale"] == [0.8, 1.0]
