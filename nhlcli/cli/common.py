"""What every command shares: consoles, one-line errors, option lists, JSON output, progress."""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nhlcli.errors import NhlError
from nhlcli.text import one_line, printable

CLASSES_HELP = (
    "comma-separated (a name with commas in double quotes), or @file with one per line. A name is a "
    "class, an inner node (every class below it) or, on trees with WordNet ids, any WordNet concept "
    "('shark', 'domestic cat', shark.n.01, n01482330): the classes below it. Overlapping names "
    "union; 'nhl hierarchy resolve TREE NAME' shows what a name means."
)

HOLDOUT_HELP = (
    "Split the training images as 'nhl train --holdout' does: val is this stratified fraction of "
    "them (e.g. 0.1), train the rest, so choices are made without the test set. Default: the "
    "fraction the model was trained with (none if it saw every training image); 0: the data's own "
    "splits (Fashion-MNIST's val is its test set)."
)

console = Console()

T = TypeVar("T")


def parse_list(text: str, flag: str, item: Callable[[str], T] = str, example: str = "") -> list[T]:
    """The one parser of comma lists on the command line: items stripped, empty ones dropped, and
    an item with commas of its own in double quotes (``'"family: man, woman, boy",cat face'``).

    ``item`` turns each part into its value and raises ``ValueError`` (or :class:`NhlError`)
    for a bad one; the error then names the flag and shows ``example``.
    """
    try:
        parts = next(csv.reader([text], skipinitialspace=True, strict=True), [])
    except csv.Error:
        raise NhlError(f"{flag} {text!r}: a double quote is not closed; quote whole items") from None
    values: list[T] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            values.append(item(part))
        except (ValueError, NhlError) as exc:
            hint = f"; e.g. {flag} {example}" if example else ""
            reason = str(exc) if isinstance(exc, NhlError) else f"{part!r} is not valid"
            raise NhlError(f"{flag} {text!r}: {reason}{hint}") from None
    return values


def parse_names(text: str | None, flag: str = "--classes") -> list[str]:
    """Class names: ``"a,b"``, or ``@file`` with one name a line (a UTF-8 byte-order mark, as some
    editors write, is dropped). ``None`` (the option left out) gives ``[]``; text that names no
    class (``''``, ``',,,'``, an empty file) is refused, since an empty list would mean every class.
    """
    if text is None:
        return []
    if text.startswith("@"):
        path = Path(text[1:])
        if not text[1:].strip():
            raise NhlError(f"{flag} {text!r}: give the file after @, e.g. {flag} @classes.txt")
        if not path.is_file():
            raise NhlError(f"{flag} {text}: file {path} does not exist")
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise NhlError(f"{flag} {text}: cannot read {path} as UTF-8 text ({exc})") from None
        names = [line.strip() for line in lines if line.strip()]
    else:
        names = parse_list(text, flag)
    if not names:
        raise NhlError(
            f"{flag} {text!r} names no class; give at least one, e.g. {flag} cat,dog or {flag} @classes.txt "
            "(one name a line)"
        )
    return names


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise NhlError(f"{text!r} is not a whole number") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise NhlError(f"{text!r} is not a number") from None


def threshold(text: str) -> float | None:
    """A gate threshold: a number, or ``inf``/``none``/``never`` (the gate never exits)."""
    if text.lower() in ("inf", "+inf", "none", "never"):
        return None
    return number(text)


def class_scale(text: str) -> tuple[str, float]:
    """``CLASS=SCALE`` (``--attend``): the class name and a finite scale >= 0."""
    label, sep, value = text.rpartition("=")
    if not sep or not label.strip():
        raise NhlError(f"{text!r}: write CLASS=SCALE")
    scale = number(value)
    if not math.isfinite(scale) or scale < 0:
        raise NhlError(f"{text!r}: the scale must be a finite number >= 0 (1 = unchanged)")
    return label.strip(), scale


err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def check_finite_options(options: dict[str, Any]) -> None:
    """Refuse ``nan`` and ``inf`` in every float option of a command (``--lr nan`` would train to
    NaN weights, ``--holdout inf`` fail deep in the library): no float option of nhl takes them."""
    for name, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            flag = "--" + name.replace("_", "-")
            raise NhlError(f"{flag} {value}: give a finite number")


F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn :class:`NhlError` into one ``error: ...`` line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            check_finite_options(kwargs)
            return func(*args, **kwargs)
        except NhlError as exc:
            message = printable(one_line(exc.for_command_line()))  # names from files: no escapes
            err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Machine-readable output on stdout, nothing else mixed in (and no raw control characters)."""
    typer.echo(json_for_terminal(json.dumps(data, indent=2, ensure_ascii=False)))


def json_for_terminal(text: str) -> str:
    """JSON text with the control characters JSON lets through raw (DEL and C1, which some terminals
    obey as escapes) written as ``\\u`` escapes: the same data, safe to print."""
    return text.translate(_JSON_RAW_CONTROLS)


_JSON_RAW_CONTROLS = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}


def shown(value: object) -> str:
    """Text from a file, a server or the command line (a name, a path) ready for rich markup:
    control characters escaped (no terminal escapes get through) and ``[`` escaped (a name like
    ``[bold]`` prints as itself)."""
    return escape(printable(str(value)))


class ImageProgress:
    """A rich bar over images (what the gates library calls as ``start``/``advance``)."""

    def __init__(self, enabled: bool = True) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self.task: Any = None

    def start(self, total: int, description: str) -> None:
        if self.task is None:
            self.bar.start()
        else:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)

    def __enter__(self) -> ImageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def parse_attend(values: list[str] | None) -> list[tuple[str, float]]:
    """``--attend tabby=2 --attend dog=0.5`` as (class, scale) pairs (the library checks repeats)."""
    pairs = []
    for value in values or []:
        try:
            pairs.append(class_scale(value))
        except NhlError as exc:
            raise NhlError(f"--attend {exc}; e.g. --attend tabby=2.0") from None
    return pairs


def unique(values: list[T]) -> list[T]:
    """Each value once, in the order given."""
    return list(dict.fromkeys(values))


class TrainingBar:
    """A rich progress bar for training: epoch, step, loss, accuracy, images/s, time left, and
    one line per finished epoch (implements :class:`nhlcli.progress.TrainingProgress`)."""

    def __init__(self) -> None:
        self.progress: Progress | None = None

    def begin(self, epochs: int, steps: int, start_epoch: int, held_out: str) -> None:
        self.held_out, self.epochs, self.steps = held_out, epochs, steps
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}  {task.fields[rate]:.0f} img/s"
            ),
            TextColumn("{task.fields[val]}"),
            TimeRemainingColumn(),
        )
        self.task = self.progress.add_task(
            "train",
            total=epochs * steps,
            completed=start_epoch * steps,
            epoch=start_epoch + 1,
            epochs=epochs,
            loss=0.0,
            acc=0.0,
            rate=0.0,
            val="",
        )
        self.progress.start()

    def close(self) -> None:
        if self.progress:
            self.progress.stop()

    def set_epochs(self, epochs: int) -> None:
        """A time budget fixed the run's length: the bar's total follows."""
        self.epochs = epochs
        if self.progress:
            self.progress.update(self.task, total=epochs * self.steps, epochs=epochs)

    def step(self, epoch: int, i: int, loss: float, acc: float, rate: float) -> None:
        if self.progress:
            self.progress.update(
                self.task, completed=epoch * self.steps + i, epoch=epoch + 1, loss=loss, acc=acc, rate=rate
            )

    def epoch_done(self, record: Any) -> None:
        if self.progress:
            self.progress.update(self.task, val=f"{self.held_out} {record.val_top1:.1%}")
            self.progress.console.print(
                f"epoch {record.epoch}: train loss {record.train_loss:.3f} acc {record.train_top1:.1%}, "
                f"{self.held_out} top-1 {record.val_top1:.1%} top-5 {record.val_top5:.1%}, "
                f"{record.images_per_s:.0f} img/s, {record.seconds:.0f} s"
            )
