"""The training log a user can plot (issue 37): ``summary.csv`` in the checkpoint directory with
timm's columns, continued by ``--resume`` without duplicate epochs, TensorBoard on request, and
``nhl plot-log``. Tiny generated data, a few steps per epoch, CPU, nothing downloaded."""

from __future__ import annotations

import csv
import os
import sys
import types
from pathlib import Path

import pytest
from conftest import (
    FRUIT,
    Run,
    assert_one_line_error,
    fruit_flat_model,
    quick_train_config,
    run_nhl,
)

from nhlcli.errors import NhlError
from nhlcli.training import checkpoint as ckpt
from nhlcli.training import log as training_log
from nhlcli.training import train
from nhlcli.training.log import COLUMNS, plot_summary, read_summary
from nhlcli.training.loop import check_outputs

CLASSES = FRUIT
SMALL = [
    "--flat", "--backbone", "resnet10t", "--input-size", "16", "--batch-size", "4", "--workers", "0",
    "--augment", "none", "--no-amp", "--max-steps-per-epoch", "2",
]  # fmt: skip
TIMM_COLUMNS = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]  # timm's summary.csv
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def folder(fruit_folder: Path) -> Path:
    return fruit_folder


flat_model = fruit_flat_model
small_config = quick_train_config


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def nhl_here(capsys, *args) -> Run:
    """``nhl ARGS`` in this process (no interpreter start-up), as :func:`run_nhl` reports it."""
    from nhlcli.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return Run(done.value.code, out, err)


def header_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()[0].split(",")


# ------------------------------------------------------------------------------- summary.csv
def test_every_epoch_adds_a_row_with_timms_columns(tmp_path, folder):
    ckdir = tmp_path / "ck"
    seen_rows = []  # what the file held when each epoch ended: a row per finished epoch
    result = train(
        flat_model(), folder, tmp_path / "m.safetensors", small_config(), checkpoint_dir=ckdir,
        on_epoch=lambda record: seen_rows.append(len(rows_of(ckdir / "summary.csv"))),
    )  # fmt: skip
    assert seen_rows == [1, 2]
    log = ckdir / ckpt.SUMMARY_FILE
    assert header_of(log) == list(COLUMNS)
    assert header_of(log)[:6] == TIMM_COLUMNS
    rows = rows_of(log)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row, record in zip(rows, result.history, strict=True):
        assert float(row["train_loss"]) == pytest.approx(record.train_loss, rel=1e-5)
        assert float(row["eval_loss"]) == pytest.approx(record.val_loss, rel=1e-5)
        assert float(row["eval_top1"]) == pytest.approx(100 * record.val_top1, rel=1e-5)  # percent, as timm
        assert float(row["eval_top5"]) == pytest.approx(100 * record.val_top5, rel=1e-5)
        assert float(row["lr"]) == pytest.approx(record.lr, rel=1e-5) and record.lr > 0
        assert float(row["images_per_s"]) > 0 and float(row["seconds"]) > 0
    assert log.read_text(encoding="utf-8").endswith("\n")  # whole lines only
    assert not [p.name for p in ckdir.iterdir() if p.name.startswith(".")]  # no temporary file left
    # a fresh run over the finished one starts a log of its own
    train(flat_model(), folder, tmp_path / "m.safetensors", small_config(epochs=1), checkpoint_dir=ckdir)
    assert [int(r["epoch"]) for r in rows_of(log)] == [1]


def test_resume_continues_the_log_and_an_epoch_trained_again_replaces_its_row(tmp_path, folder):
    ckdir, out = tmp_path / "ck", tmp_path / "m.safetensors"
    train(flat_model(), folder, None, small_config(epochs=1), checkpoint_dir=ckdir)
    log = ckdir / ckpt.SUMMARY_FILE
    first = log.read_text(encoding="utf-8").splitlines()
    # an epoch 2 the checkpoint does not hold (its process died before the checkpoint), and a
    # temporary file a kill -9 left: the resumed run trains epoch 2 again
    log.write_text("\n".join([*first, "2,9,9,9,9,9,9,9"]) + "\n", encoding="utf-8")
    (ckdir / ".summary.csv.abc123.tmp").write_text("2,9", encoding="utf-8")
    resumed = train(
        flat_model(seed=1), folder, out, small_config(epochs=3), checkpoint_dir=ckdir, resume=True
    )
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines[:2] == first  # the header and epoch 1's row continue unchanged
    rows = rows_of(log)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # each epoch once
    assert float(rows[1]["train_loss"]) == pytest.approx(resumed.history[1].train_loss, rel=1e-5) != 9
    assert sorted(p.name for p in ckdir.iterdir()) == ["epoch-0003", ckpt.MARKER_NAME, ckpt.SUMMARY_FILE]


def test_a_crash_between_the_checkpoint_and_the_log_is_made_good_by_resume(tmp_path, folder, monkeypatch):
    class Crash(BaseException):  # as a kill -9 right after the checkpoint's rename
        pass

    real, calls = training_log.write_summary, []

    def write(directory, history):
        calls.append(len(history))
        if len(history) == 2:
            raise Crash
        return real(directory, history)

    monkeypatch.setattr(training_log, "write_summary", write)
    ckdir = tmp_path / "ck"
    with pytest.raises(Crash):
        train(flat_model(), folder, None, small_config(), checkpoint_dir=ckdir)
    monkeypatch.undo()
    from nhlcli import locks

    locks.release_all()
    assert [r["epoch"] for r in rows_of(ckdir / "summary.csv")] == ["1"]  # epoch 2 checkpointed, not logged
    assert ckpt.load_checkpoint(ckdir).epoch == 2
    # the run had finished its 2 epochs: resuming trains nothing, and the log catches up
    result = train(flat_model(), folder, tmp_path / "m.safetensors", small_config(), checkpoint_dir=ckdir,
                   resume=True)  # fmt: skip
    assert result.already_done
    assert [r["epoch"] for r in rows_of(ckdir / "summary.csv")] == ["1", "2"]


def test_a_summary_csv_in_a_directory_nhl_does_not_own_is_still_refused(tmp_path):
    theirs = tmp_path / "timm-output"
    theirs.mkdir()
    (theirs / "summary.csv").write_text("epoch,train_loss\n", encoding="utf-8")
    with pytest.raises(NhlError, match="nhl did not write"):
        ckpt.check_ownership(theirs)


# ------------------------------------------------------------------------------- TensorBoard
class FakeWriter:
    """What ``SummaryWriter`` was given: the directory, the purge step and every scalar."""

    made: list[FakeWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.scalars.append((tag, global_step, value))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_gets_the_scalars_of_the_csv_and_a_resume_shows_each_epoch_once(
    tmp_path, folder, monkeypatch
):
    """Installed or not here, the writer is replaced: the scalars, steps and purge step are checked."""
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeWriter.made.clear()
    ckdir, board = tmp_path / "ck", tmp_path / "tb"
    train(flat_model(), folder, None, small_config(epochs=1), checkpoint_dir=ckdir, tensorboard=board)
    train(
        flat_model(),
        folder,
        None,
        small_config(epochs=2),
        checkpoint_dir=ckdir,
        resume=True,
        tensorboard=board,
    )
    first, second = FakeWriter.made
    assert first.log_dir == second.log_dir == str(board) and first.closed and second.closed
    assert second.purge_step == 1  # TensorBoard hides the first run's events; the history is written again
    rows = rows_of(ckdir / "summary.csv")
    expected = [(c, int(r["epoch"]), float(r[c])) for r in rows for c in COLUMNS[1:]]
    assert [(t, s) for t, s, _ in second.scalars] == [(t, s) for t, s, _ in expected]
    for (_, _, got), (_, _, want) in zip(second.scalars, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert {s for _, s, _ in first.scalars} == {1}


def test_without_tensorboard_the_library_refuses_before_anything_is_written(tmp_path, folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as when it is not installed
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(NhlError, match="pip install tensorboard"):
        train(flat_model(), folder, tmp_path / "m.safetensors", small_config(), tensorboard=tmp_path / "tb")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_nhl_train_tensorboard_without_tensorboard_is_one_line_and_writes_nothing(tmp_path, folder):
    # a package named tensorboard that fails to import stands first on the path, as if not installed
    shim = tmp_path.parent / f"{tmp_path.name}-shim"
    (shim / "tensorboard").mkdir(parents=True)
    (shim / "tensorboard" / "__init__.py").write_text('raise ImportError("No module named tensorboard")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(Path.cwd())])}
    out = tmp_path / "m.safetensors"
    run = run_nhl(
        "train", "--data", folder, "-o", out, *SMALL, "--epochs", "1", "--tensorboard", tmp_path / "tb",
        env=env,
    )  # fmt: skip
    assert_one_line_error(run, "--tensorboard", "pip install tensorboard")
    assert list(tmp_path.iterdir()) == []  # no model, no checkpoint directory, no event folder


@pytest.mark.slow
def test_nhl_train_tensorboard_writes_events_tensorboard_reads(tmp_path, folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, board = tmp_path / "m.safetensors", tmp_path / "tb"
    run = run_nhl("train", "--data", folder, "-o", out, *SMALL, "--epochs", "2", "--tensorboard", board)
    assert run.code == 0, run.err
    events = EventAccumulator(str(board))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(COLUMNS[1:])
    assert [e.step for e in events.Scalars("eval_top1")] == [1, 2]


@pytest.mark.parametrize("where", ["ck", "ck/tb", "data", "a-file"])
def test_a_tensorboard_directory_where_it_would_do_harm_is_refused(tmp_path, folder, where):
    """In the checkpoint directory (nhl refuses one holding files it did not write), in the data
    folder (it would become a class), or on a file."""
    (tmp_path / "a-file").write_text("mine", encoding="utf-8")
    board = folder / "tb" if where == "data" else tmp_path / where
    with pytest.raises(NhlError, match="tensorboard"):
        check_outputs(tmp_path / "m.safetensors", tmp_path / "ck", folder, board)


# --------------------------------------------------------------------------------- plot-log
@pytest.mark.slow
def test_plot_log_draws_nhls_log_and_refuses_a_bad_output_first(tmp_path, folder, capsys):
    ckdir = tmp_path / "ck"
    train(flat_model(), folder, None, small_config(), checkpoint_dir=ckdir)
    log = ckdir / "summary.csv"
    before = log.read_bytes()
    png = tmp_path / "out" / "curves.png"
    run = run_nhl("plot-log", log, "-o", png)
    assert run.code == 0, run.err
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000
    assert log.read_bytes() == before
    assert sorted(p.name for p in png.parent.iterdir()) == ["curves.png"]  # no temporary file left
    for bad, fragment in [(tmp_path / "c.jpg", ".png"), (log, "--output")]:
        assert_one_line_error(nhl_here(capsys, "plot-log", log, "-o", bad), fragment)
    assert log.read_bytes() == before and not (tmp_path / "c.jpg").exists()


def test_plot_log_reads_timms_summary_csv(tmp_path):
    log = tmp_path / "summary.csv"  # as timm's train.py writes it
    log.write_text(
        "epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n"
        "0,6.9,6.8,0.1,0.5,0.0001\n1,6.1,5.9,2.5,8.0,0.0004\n2,5.2,4.9,9.8,25.1,0.0004\n",
        encoding="utf-8",
    )
    columns = read_summary(log)
    assert columns["epoch"] == [0, 1, 2] and columns["eval_top1"] == [0.1, 2.5, 9.8]
    png = plot_summary(log, tmp_path / "timm.png")
    assert png.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not utf-8"),
        (b"name,size\nsandal,3\n", "no epoch, train_loss, eval_loss, eval_top1 column"),
        (b"epoch,train_loss,eval_loss,eval_top1\n", "no rows"),
        (b"epoch,train_loss,eval_loss,eval_top1\n1,0.5,0.6,high\n", "eval_top1 is 'high'"),
        (b"epoch,train_loss,eval_loss,eval_top1\n1,0.5,0.6\n", "line 2 has 3 cells"),
        (b'epoch,train_loss,eval_loss,eval_top1\n1,0.5,"0.6,7\n', "line 2"),
        (b"epoch,train_loss,eval_loss,eval_top1\n1,inf,0.6,50\n", "train_loss is 'inf'"),
    ],
)
def test_read_summary_refuses_what_is_not_a_training_log_in_one_line(tmp_path, content, fragment):
    log = tmp_path / "log.csv"
    log.write_bytes(content)
    with pytest.raises(NhlError) as caught:
        read_summary(log)
    message = str(caught.value)
    assert "not a training log" in message and fragment in message.lower() and "\n" not in message


def test_plot_log_refuses_a_bad_csv_in_one_line_and_writes_nothing(tmp_path, capsys):
    log = tmp_path / "notes.csv"
    log.write_text("name,size\nsandal,3\n", encoding="utf-8")
    run = nhl_here(capsys, "plot-log", log, "-o", tmp_path / "curves.png")
    assert_one_line_error(run, "not a training log", "eval_top1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv"]
    run = nhl_here(capsys, "plot-log", tmp_path / "missing.csv", "-o", tmp_path / "curves.png")
    assert_one_line_error(run, "does not exist")
    run = nhl_here(capsys, "plot-log", tmp_path, "-o", tmp_path.parent / f"{tmp_path.name}.png")
    assert_one_line_error(run, "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv"]
    assert not (tmp_path.parent / f"{tmp_path.name}.png").exists()
