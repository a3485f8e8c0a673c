"""A training run's log a user can plot: ``summary.csv`` in the checkpoint directory, TensorBoard
optionally, and a PNG of the curves (``nhl plot-log``).

``summary.csv`` has timm's columns (``epoch, train_loss, eval_loss, eval_top1, eval_top5, lr``,
accuracies in percent as timm writes them) plus ``images_per_s`` and ``seconds``, one row per
finished epoch. It is rewritten whole from the run's history after each epoch's checkpoint (a
temporary file, flushed to disk and renamed into place), so a crash never leaves a half row and a
resumed run, whose history is the checkpoint's, continues the file: an epoch it trains again
replaces that epoch's row, never adds a second one. TensorBoard gets the same scalars, with the
epoch as the step.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nhlcli.atomic import atomic_write, file_mode
from nhlcli.errors import NhlError
from nhlcli.training.checkpoint import SUMMARY_FILE, _sync_dir

COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "images_per_s", "seconds")
PLOTTED = ("epoch", "train_loss", "eval_loss", "eval_top1")  # what a log needs for plot_summary
TENSORBOARD_MISSING = (
    "needs the tensorboard package, which is not installed: pip install tensorboard (or leave it out)"
)


def summary_row(record: Any) -> dict[str, Any]:
    """One epoch (an :class:`~nhlcli.training.loop.EpochRecord`) as ``summary.csv`` holds it."""
    lr = getattr(record, "lr", None)
    return {
        "epoch": int(record.epoch),
        "train_loss": float(record.train_loss),
        "eval_loss": float(record.val_loss),
        "eval_top1": 100.0 * float(record.val_top1),
        "eval_top5": 100.0 * float(record.val_top5),
        "lr": None if lr is None else float(lr),
        "images_per_s": float(record.images_per_s),
        "seconds": float(record.seconds),
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def summary_text(history: Iterable[Any]) -> str:
    """``summary.csv``'s text for a run's history: the header and one row per epoch."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in history:
        row = summary_row(record)
        writer.writerow([_cell(row[c]) for c in COLUMNS])
    return out.getvalue()


def write_summary(directory: str | Path, history: Sequence[Any]) -> Path:
    """Write ``directory/summary.csv`` for ``history``: whole, flushed to disk, renamed into place
    (a reader or a crash sees the old file or the new one, never part of a row)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = summary_text(history).encode("utf-8")
    fd, name = tempfile.mkstemp(prefix=f".{SUMMARY_FILE}.", suffix=".tmp", dir=directory)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, directory / SUMMARY_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(directory)
    return directory / SUMMARY_FILE


# --------------------------------------------------------------------------------- TensorBoard
def require_tensorboard() -> type:
    """TensorBoard's ``SummaryWriter``; a one-line error saying what to install when it is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NhlError(TENSORBOARD_MISSING, "tensorboard") from None
    return SummaryWriter


class RunLog:
    """What one run writes besides its checkpoints: ``summary.csv`` in ``checkpoint_dir``, and the
    same scalars as TensorBoard events in ``tensorboard`` when given. Call :meth:`start` with the
    history the run begins with (a resumed run's epochs), :meth:`epoch` after each checkpoint."""

    def __init__(self, checkpoint_dir: str | Path, tensorboard: str | Path | None = None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.tensorboard = None if tensorboard is None else Path(tensorboard)
        self.writer: Any = None

    def start(self, history: Sequence[Any]) -> None:
        if history:  # a resumed run: the file matches the checkpoint (a crash may have cut it short)
            write_summary(self.checkpoint_dir, history)
        if self.tensorboard is not None:
            # purge_step=1: TensorBoard hides what earlier runs wrote to this directory at any epoch,
            # and the history is written again, so a resumed run shows each epoch once
            self.writer = require_tensorboard()(log_dir=str(self.tensorboard), purge_step=1)
            for record in history:
                self._scalars(record)
            self.writer.flush()

    def epoch(self, history: Sequence[Any]) -> None:
        write_summary(self.checkpoint_dir, history)
        if self.writer is not None:
            self._scalars(history[-1])
            self.writer.flush()

    def _scalars(self, record: Any) -> None:
        row = summary_row(record)
        for name in COLUMNS[1:]:
            if row[name] is not None:
                self.writer.add_scalar(name, row[name], global_step=row["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ------------------------------------------------------------------------------------ plotting
def _not_a_log(path: Path, why: str) -> NhlError:
    return NhlError(
        f"{path} is not a training log: {why} (nhl train writes one as OUTPUT.ckpt/{SUMMARY_FILE}, "
        f"with the columns {', '.join(COLUMNS)})"
    )


def _number(text: str) -> float:
    value = float(text) if text.strip() else math.nan
    if math.isinf(value):
        raise ValueError(text)
    return value


def read_summary(path: str | Path) -> dict[str, list[float]]:
    """A training log's columns as numbers (an empty cell: nan), checked: a file that is not a CSV
    with ``epoch``, ``train_loss``, ``eval_loss`` and ``eval_top1`` and a row of numbers is refused
    in one line. Reads ``summary.csv`` of ``nhl train`` and of timm."""
    path = Path(path)
    if path.is_dir():
        raise NhlError(f"{path} is a directory; give the log file ({SUMMARY_FILE} inside it)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise NhlError(f"{path} does not exist") from None
    except OSError as exc:
        raise NhlError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _not_a_log(path, "it is not UTF-8 text") from None
    if "\0" in text:
        raise _not_a_log(path, "it is binary")
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise _not_a_log(path, f"it does not read as CSV ({exc})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise _not_a_log(path, "it is empty")
    header = [cell.strip() for cell in rows[0]]
    missing = [c for c in PLOTTED if c not in header]
    if missing:
        raise _not_a_log(path, f"its first line has no {', '.join(missing)} column")
    if len(rows) < 2:
        raise _not_a_log(path, "it has no rows (no epoch has finished yet)")
    columns: dict[str, list[float]] = {name: [] for name in header if name}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise _not_a_log(path, f"line {number} has {len(row)} cells, its header {len(header)}")
        for name, cell in zip(header, row, strict=True):
            if not name:
                continue
            try:
                columns[name].append(_number(cell))
            except ValueError:
                if name in PLOTTED:
                    raise _not_a_log(path, f"line {number}'s {name} is {cell[:20]!r}, not a number") from None
                columns[name].append(math.nan)  # a column the plot does not use
    if any(math.isnan(e) for e in columns["epoch"]):
        raise _not_a_log(path, "a row has no epoch")
    return columns


def plot_summary(log: str | Path, output: str | Path) -> Path:
    """Draw a training log's loss (training and validation) and validation top-1 against epoch into
    the PNG ``output`` (written whole: a temporary file renamed into place)."""
    from matplotlib.figure import Figure

    columns = read_summary(log)
    epochs = columns["epoch"]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss, top1 = figure.subplots(1, 2)
    loss.plot(epochs, columns["train_loss"], marker="o", markersize=3, label="training")
    loss.plot(epochs, columns["eval_loss"], marker="o", markersize=3, label="validation")
    loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    loss.legend()
    top1.plot(epochs, columns["eval_top1"], marker="o", markersize=3, color="tab:green", label="top-1")
    if "eval_top5" in columns and not all(math.isnan(v) for v in columns["eval_top5"]):
        top1.plot(epochs, columns["eval_top5"], marker="o", markersize=3, color="tab:olive", alpha=0.6,
                  linestyle="--", label="top-5")  # fmt: skip
        top1.legend()
    top1.set(title="validation accuracy", xlabel="epoch", ylabel="%")
    for axes in (loss, top1):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    where = Path(log).resolve()
    figure.suptitle(f"{where.parent.name}/{where.name}" if where.parent.name else where.name)
    return atomic_write(output, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
