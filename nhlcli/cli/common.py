"""What every command shares: consoles, one-line errors, JSON output."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from nhlcli.errors import NhlError

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
