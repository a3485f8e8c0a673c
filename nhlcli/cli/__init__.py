"""The ``nhl`` command: a thin layer over the library, one sub-command group per concern."""

from __future__ import annotations

import typer

from nhlcli import __version__
from nhlcli.cli.common import err_console
from nhlcli.cli.demo import register as register_demo
from nhlcli.cli.experts import register as register_experts
from nhlcli.cli.export import register as register_export
from nhlcli.cli.gates import register as register_gates
from nhlcli.cli.hierarchy import hierarchy_app
from nhlcli.cli.predict import register as register_predict
from nhlcli.cli.train import register as register_training

app = typer.Typer(
    name="nhl",
    help=(
        "Hierarchical image classification with extractable experts.\n\n"
        "Build a category tree (nhl hierarchy build), train a nested network on any timm backbone, "
        "then cut out an expert for just the classes a task needs."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)
app.add_typer(hierarchy_app, name="hierarchy")
register_training(app)
register_experts(app)
register_demo(app)
register_predict(app)
register_gates(app)
register_export(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nhl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_version, is_eager=True
    ),
) -> None:
    """Hierarchical image classification with extractable experts."""


def main() -> None:
    """Console-script entry point (``nhl``)."""
    from nhlcli.memory import keep_freed_cpu_memory

    # a command is one short-lived process: reuse freed heap memory instead of page-faulting
    # large branch tensors afresh on every forward (see keep_freed_cpu_memory)
    keep_freed_cpu_memory()
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise SystemExit(130) from None


__all__ = ["app", "main"]
