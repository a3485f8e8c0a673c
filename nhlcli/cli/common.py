"""What every command shares: consoles, one-line errors, JSON output, progress over images."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nhlcli.errors import NhlError

CLASSES_HELP = (
    "comma-separated, or @file with one per line. A name is a class, an inner node (every class below "
    "it) or, on trees with WordNet ids, any WordNet concept ('shark', 'domestic cat', shark.n.01, "
    "n01482330): the classes below it. Overlapping names union; 'nhl hierarchy resolve TREE NAME' "
    "shows what a name means."
)

console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn :class:`NhlError` into one ``error: ...`` line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NhlError as exc:
            message = " ".join(str(exc).split())
            err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Machine-readable output on stdout, nothing else mixed in."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


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
