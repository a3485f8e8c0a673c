"""The ``nhl`` command: a thin layer over the library, one sub-command group per concern."""

from __future__ import annotations

import atexit
import gc
import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer
import typer.main
from rich.markup import escape

from nhlcli import __version__
from nhlcli.cli.common import err_console
from nhlcli.cli.demo import register as register_demo
from nhlcli.cli.experts import register as register_experts
from nhlcli.cli.export import register as register_export
from nhlcli.cli.gates import register as register_gates
from nhlcli.cli.graft import register as register_graft
from nhlcli.cli.hierarchy import hierarchy_app
from nhlcli.cli.predict import register as register_predict
from nhlcli.cli.train import register as register_training
from nhlcli.text import one_line, printable

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
register_graft(app)
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


def _variants() -> str:
    from nhlcli.model.registry import VARIANTS

    return f"choose one of {', '.join(VARIANTS)}"


# what to say for an empty value of an option whose values are a fixed list
EMPTY_VALUE_HINTS: dict[str, Callable[[], str]] = {"--variant": _variants}


def _command_for(args: Sequence[str]) -> tuple[Any, str]:
    """The (sub)command ``args`` run and its name (``nhl hierarchy show``), read off typer's
    command tree without parsing anything else."""
    command: Any = typer.main.get_command(app)
    names = ["nhl"]
    for arg in args:
        commands = getattr(command, "commands", None)
        if not commands:
            break
        if arg.startswith("-"):
            continue  # an option of the group itself (--version)
        if arg not in commands:
            break
        command, names = commands[arg], [*names, arg]
    return command, " ".join(names)


def empty_value_problem(args: Sequence[str]) -> str | None:
    """Why the command line holds an empty value (``--data ''``, ``-o ''``, ``--workdir=``), or
    ``None``.

    No option or argument of nhl takes an empty value, and left alone one would silently mean
    something: an empty path is the current directory, an empty name the default, an empty list
    every class. Checked before typer turns ``''`` into ``Path('.')``, where it can no longer be told
    from a deliberate ``.``.
    """
    if all(arg.strip() and not arg.endswith("=") for arg in args):
        return None
    command, name = _command_for(args)
    options = {
        opt: param
        for param in getattr(command, "params", [])
        if getattr(param, "param_type_name", "") == "option"
        for opt in (*param.opts, *param.secondary_opts)
    }

    def empty_option(param: Any) -> str:
        flag = max(param.opts, key=len)
        hint = EMPTY_VALUE_HINTS.get(flag)
        if hint is not None:
            return f"{flag} is empty; {hint()}"
        optional = "" if param.required else " or leave the option out"
        return f"{flag} is empty; give a value{optional} (see '{name} --help')"

    for i, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if arg.startswith("--") and equals and not value.strip():
            return empty_option(options[flag]) if flag in options else f"{flag} is empty"
        if not arg.strip():
            param = options.get(args[i - 1]) if i else None
            if param is not None and not param.is_flag:
                return empty_option(param)
            return f"an argument is empty ({arg!r}); give a value (see '{name} --help')"
    return None


def usage_error_line(exc: typer.TyperException) -> str:
    """A usage error (unknown option, missing argument, bad number) as one line, pointing at the help."""
    message = one_line(exc.format_message())
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", "") or "nhl"
    return f"{message.rstrip('.')} (see '{command} --help')"


def _say_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(printable(message))}", markup=True, highlight=False)


def main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point (``nhl``): every error, usage errors included, ends in one
    ``error: ...`` line on stderr and a non-zero exit status (2 for usage errors, like click's)."""
    from nhlcli.memory import keep_freed_cpu_memory

    if args is None:  # the whole process is this command
        # Skip the interpreter's last garbage collection over every object torch and timm built
        # at import: about 1 s of each command's exit, for cycles that die with the process anyway.
        # atexit runs handlers last-registered first, so the others (data-loader workers, locks)
        # still run before this one.
        atexit.register(gc.freeze)
    args = list(sys.argv[1:] if args is None else args)
    problem = empty_value_problem(args)
    if problem is not None:
        _say_error(problem)
        raise SystemExit(2)
    # a command is one short-lived process: reuse freed heap memory instead of page-faulting
    # large branch tensors afresh on every forward (see keep_freed_cpu_memory)
    keep_freed_cpu_memory()
    try:
        # standalone_mode=False: typer raises usage errors instead of drawing them in a box
        status = app(args=args, prog_name="nhl", standalone_mode=False)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise SystemExit(130) from None
    except typer.Abort:
        _say_error("aborted")
        raise SystemExit(1) from None
    except typer.TyperException as exc:
        # no arguments at all: typer has printed the help already, and that is the whole answer
        if type(exc).__name__ != "NoArgsIsHelpError":
            _say_error(usage_error_line(exc))
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    raise SystemExit(status if isinstance(status, int) else 0)


__all__ = ["app", "main"]
