"""The same seed gives the same model, a resumed run gives the uninterrupted run's model, and a
time budget ends a run at the budget with the learning rate annealed (issue 34).

Bit-identical means ``torch.equal`` on every tensor of the state dict, on CPU, with the bf16
autocast that ``nhl train`` uses by default and in float32. The images are 32 pixels: oneDNN's
bf16 weight gradient of a stride-2 convolution over a 1x1 map (a resnet at 16 pixels) differs
from call to call, which no seed can fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CLASSES, assert_one_line_error, make_tiny_data, run_nhl, tiny_model, two_level_tree
from safetensors.torch import load_file

from nhlcli.demo import run_demo
from nhlcli.errors import NhlError
from nhlcli.model.files import read_metadata
from nhlcli.training import TrainConfig, seed_everything, train
from nhlcli.training import loop as training_loop
from nhlcli.training.checkpoint import read_sidecar

SIZE = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tiny_data.make_image_folder(tmp_path_factory.mktemp("data") / "d", CLASSES, per_class=3)


def recipe(**changes) -> TrainConfig:
    """Two short epochs with every random part on: shuffling, random-resized crops, RandAugment."""
    base = dict(
        epochs=2, batch_size=6, lr=3e-4, warmup_epochs=0.5, workers=0, augment="rand-m9-mstd0.5",
        crop_scale=(0.5, 1.0), seed=0, amp=True,
    )  # fmt: skip
    return TrainConfig(**{**base, **changes})


def new_model(seed: int, kind: str = "nhl") -> torch.nn.Module:
    """A model built as `nhl train` builds it: the generators seeded first."""
    seed_everything(seed)
    return tiny_model(two_level_tree(), kind=kind, size=SIZE)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]


def trained(folder: Path, workdir: Path, config: TrainConfig, kind: str = "nhl") -> dict[str, torch.Tensor]:
    model = new_model(config.seed, kind)
    train(model, folder, None, config, checkpoint_dir=workdir / "ck", overwrite=True)
    return weights(model)


# -- the same seed, the same model ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: the same threads in both runs of a comparison, and no fight for shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("amp", "workers"),
    [(True, 0), (False, 0), (True, 1)],
    ids=["bf16-autocast", "float32", "bf16-autocast-one-worker"],
)
def test_the_same_seed_gives_bit_identical_weights(tmp_path, folder, amp, workers):
    config = recipe(amp=amp, workers=workers)
    assert differing(trained(folder, tmp_path, config), trained(folder, tmp_path, config)) == []


def test_another_seed_gives_other_weights(tmp_path, folder):
    first = trained(folder, tmp_path, recipe())
    other = trained(folder, tmp_path, recipe(seed=1))
    assert "trunk.model.conv1.weight" in differing(first, other)


def test_the_seed_fixes_the_initial_weights():
    assert differing(weights(new_model(5)), weights(new_model(5))) == []
    assert differing(weights(new_model(5)), weights(new_model(6)))


@pytest.mark.slow
def test_nhl_train_with_the_same_seed_twice_writes_the_same_weights(tmp_path, folder):
    # the check: `nhl train --seed 0` twice, mixed precision as by default
    args = ["train", "--data", folder, "--flat", "--input-size", str(SIZE), "--batch-size", "6",
            "--workers", "0", "--augment", "rand-m9-mstd0.5", "--epochs", "1"]  # fmt: skip
    files = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        files[name] = tmp_path / f"{name}.safetensors"
        run = run_nhl(*args, "--seed", seed, "-o", files[name])
        assert run.code == 0, run.err
    a, b, c = (load_file(files[name]) for name in "abc")
    assert differing(a, b) == []
    assert differing(a, c)


# -- resume equals uninterrupted --------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1], ids=["no-workers", "one-worker"])
def test_a_run_stopped_after_an_epoch_and_resumed_ends_with_the_uninterrupted_weights(
    tmp_path, folder, workers
):
    config = recipe(epochs=3, workers=workers)
    uninterrupted = trained(folder, tmp_path / "whole", config)

    def stop_after_epoch_1(record) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt  # after the epoch's checkpoint, as a kill there would

    ckdir = tmp_path / "parts" / "ck"
    stopped = train(new_model(0), folder, None, config, checkpoint_dir=ckdir, on_epoch=stop_after_epoch_1)
    assert stopped.interrupted and stopped.epochs_done == 1
    seed_everything(123)  # whatever the generators hold now, the checkpoint decides
    resumed_model = tiny_model(two_level_tree(), size=SIZE)
    resumed = train(resumed_model, folder, None, config, checkpoint_dir=ckdir, resume=True)
    assert resumed.epochs_done == 3
    assert differing(uninterrupted, weights(resumed_model)) == []


# -- bad seeds ----------------------------------------------------------------------------------------

BAD_SEEDS = ["1180591620717411303424", "-5", str(2**63)]


@pytest.mark.slow
@pytest.mark.parametrize("seed", BAD_SEEDS)
def test_nhl_train_refuses_a_seed_out_of_range_in_one_line(tmp_path, folder, seed):
    run = run_nhl("train", "--data", folder, "--flat", "--seed", seed, "-o", tmp_path / "m.safetensors")
    assert_one_line_error(run, "--seed", "2**63 - 1", seed)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("seed", [-5, 2**63, 1180591620717411303424, 1.5, True])
def test_the_library_refuses_a_seed_out_of_range(tmp_path, folder, seed):
    with pytest.raises(NhlError, match="seed must be a whole number from 0 to 2"):
        seed_everything(seed)
    with pytest.raises(NhlError, match="seed must be"):
        train(tiny_model(two_level_tree(), size=SIZE), folder, None, recipe(seed=seed), tmp_path / "ck")
    with pytest.raises(NhlError, match="seed must be"):
        run_demo(tmp_path / "w", epochs=1, seed=seed, say=lambda text: None)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "w").exists()


def test_the_largest_seed_is_taken(tmp_path, folder):
    seed_everything(2**63 - 1)
    run = train(new_model(0, "flat"), folder, None, recipe(seed=2**63 - 1, epochs=1), tmp_path / "ck")
    assert run.epochs_done == 1


# -- a time budget that holds --------------------------------------------------------------------------


class FakeClock:
    """A clock that moves ``tick`` seconds each time it is read: the run "slows down" as wanted."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_schedule_follows_the_fraction_of_the_budget_spent_or_of_the_steps(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(training_loop._TimeBudget, "clock", staticmethod(clock))
    budget = training_loop._TimeBudget(100.0, total_steps=1000)
    clock.now = 50.0
    assert budget.progress(10) == 0.5  # a slow machine: time is further along than the steps
    clock.now = 60.0
    assert budget.progress(900) == 0.9  # a fast one: the steps are
    budget.val_s = 20.0  # one validation's time is kept back for the last one
    clock.now = 40.0
    assert budget.progress(0) == 0.5
    clock.now = 500.0
    assert budget.progress(1) == 1.0
    resumed = training_loop._TimeBudget(100.0, total_steps=1000, spent_s=30.0)
    assert resumed.progress(0) == pytest.approx(0.3)  # what the run it resumes had spent counts


def test_a_budget_stops_the_run_annealed_and_writes_the_model(tmp_path, folder, monkeypatch):
    # every reading of the clock takes a second: 8 s of budget end the run after a few steps of
    # a 50-epoch cap, whatever the real speed
    monkeypatch.setattr(training_loop._TimeBudget, "clock", staticmethod(FakeClock(tick=1.0)))
    config = recipe(epochs=50, time_budget_s=8.0, amp=False)
    out = tmp_path / "m.safetensors"
    result = train(new_model(0), folder, out, config, checkpoint_dir=tmp_path / "ck")
    record = result.time_budget
    assert record["ended_by_budget"] and record["spent_seconds"] >= 8.0
    assert 1 <= result.epochs_done < 50 and 1 <= record["steps"] <= 8
    assert record["final_lr"] == pytest.approx(config.lr * 1e-3)  # the schedule's minimum
    training = read_metadata(out)["training"]
    assert training["epochs"] == result.epochs_done  # what ran, not the cap
    assert training["time_budget"]["ended_by_budget"]
    summary = result.summary()
    assert summary["time_budget"]["steps"] == record["steps"] and summary["epochs_done"] == result.epochs_done
    # the run is over: resuming it trains nothing and writes the model again
    out.unlink()
    again = train(new_model(0), folder, out, config, checkpoint_dir=tmp_path / "ck", resume=True)
    assert again.already_done and again.epochs_done == result.epochs_done and out.is_file()


def test_an_interrupted_budgeted_run_resumes_with_the_budget_left(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(training_loop._TimeBudget, "clock", staticmethod(FakeClock(tick=1.0)))
    config = recipe(epochs=50, time_budget_s=14.0, amp=False)

    def stop_after_epoch_1(record) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt

    ckdir = tmp_path / "ck"
    stopped = train(new_model(0), folder, None, config, checkpoint_dir=ckdir, on_epoch=stop_after_epoch_1)
    assert stopped.interrupted
    spent = read_sidecar(ckdir)["extra"]["time_budget"]["spent_seconds"]
    assert 0 < spent < 14.0
    resumed = train(new_model(0), folder, None, config, checkpoint_dir=ckdir, resume=True)
    record = resumed.time_budget
    assert record["ended_by_budget"] and record["final_lr"] == pytest.approx(config.lr * 1e-3)
    # the budget is the whole run's: a resume that started the clock again would train 14 steps more
    assert record["steps"] < 14 and resumed.epochs_done < 50
