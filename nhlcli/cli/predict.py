"""``nhl predict``: the most probable classes of images (files, folders, patterns), optionally with
top-down attention, on the terminal or into a CSV or JSON-lines file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from nhlcli.cli.common import (
    ImageProgress,
    console,
    err_console,
    friendly_errors,
    parse_attend,
    print_json,
    shown,
)
from nhlcli.errors import NhlError
from nhlcli.text import counted, printable

ATTEND_HELP = (
    "Scale the branch feature maps of a class, inner node or WordNet concept (names as for --classes): "
    "above 1 amplifies, below 1 inhibits (paper 003, 4.4). Repeat for several classes. It scales "
    "features, not scores, so on a weakly trained model a class's probability need not rise with its scale."
)
ROUTE_HELP = (
    "Gated NHL files only: run just the branches of each image's K most likely super-categories "
    "(the routing gate's choice); the other classes get no score."
)
ATTEND_LEVEL_HELP = (
    "The branch level attention acts on: a number from 1, or 'path' for every level (default: the last)."
)


IMAGES_HELP = (
    "Image files (any format and mode Pillow reads), folders (every image below them) or patterns "
    "such as 'imgs/*.png' or 'imgs/**/*.jpg' (expanded here when the shell did not)."
)
OUTPUT_HELP = (
    "Write one row per image to this file instead of the tables: .csv (file, top1_id, top1_name, "
    "top1_probability, ..., error) or .jsonl (one JSON object a line), by the suffix."
)
PARTIAL_EXIT = 3  # the run finished, but some images could not be read (their rows say why)


def predict_command(
    model_file: Path = typer.Argument(..., help="An nhl model or expert file (.safetensors)."),
    images: list[str] = typer.Argument(..., help=IMAGES_HELP),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Classes to list per image (at most all of them)."),
    output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP),
    attend: list[str] | None = typer.Option(None, "--attend", metavar="CLASS=SCALE", help=ATTEND_HELP),
    attend_level: str | None = typer.Option(None, "--attend-level", metavar="N|path", help=ATTEND_LEVEL_HELP),
    route_top_k: int | None = typer.Option(None, "--route-top-k", metavar="K", help=ROUTE_HELP),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
    workers: int | None = typer.Option(
        None, "--workers", help="Image decoding processes [default: from the cores; none for one batch]."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: cuda if available)."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON."),
) -> None:
    """Classify images with a model: the top classes and their probabilities per image.

    A gated file (nhl gates) also says where each image left the network and what it cost. An image
    that cannot be read does not stop the others: its row says why, and the command ends with exit
    status 3 and a one-line summary.
    """

    from nhlcli.evaluation import describe_attention
    from nhlcli.prediction import PREDICT_HINT, predict_files

    if batch_size < 1:
        raise NhlError(f"--batch-size {batch_size}: give at least 1")
    with ImageProgress(not as_json) as progress:
        run = predict_files(
            model_file, images, top_k=top_k, output=output, attend=parse_attend(attend),
            attend_level=attend_level, route_top_k=route_top_k, batch_size=batch_size, workers=workers,
            device=device, progress=progress,
        )  # fmt: skip
    results, summary = run["predictions"], run["attention"]
    failed = [r for r in results if r["error"]]
    if as_json:
        print_json(run)
    elif output is not None:
        console.print(
            f"wrote {counted(len(results), 'prediction')} to {shown(output)}"
            + (f" ({len(failed)} with an error)" if failed else "")
        )
    else:
        for result in results:
            console.print(prediction_table(result))
    if summary and not as_json:
        console.print(f"attention: {shown(describe_attention(summary))}")
    if failed:
        where = (
            f"their rows in {output} say why" if output is not None
            else "see their 'error' fields" if as_json
            else "marked above"
        )  # fmt: skip
        first = failed[0]["error"]
        message = (
            f"{len(failed)} of {counted(len(results), 'image')} could not be read ({where}); "
            f"the first: {first}; {PREDICT_HINT}"
        )
        err_console.print(f"[bold red]error:[/] {escape(printable(message))}", markup=True, highlight=False)
        raise typer.Exit(PARTIAL_EXIT)


def prediction_table(result: dict) -> Table | str:
    """One image's classes as a table; for an image that could not be read, one line saying why."""
    if result.get("error"):
        return f"[bold]{shown(result['file'])}[/]: [red]error:[/] {shown(result['error'])}"
    table = Table(title=shown(result["file"]), title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("class")
    table.add_column("id", style="dim")
    table.add_column("probability", justify="right")
    for rank, row in enumerate(result["top"], start=1):
        table.add_row(str(rank), shown(row["name"]), shown(row["id"]), f"{row['probability']:.2%}")
    if result.get("exit") is not None:
        table.caption = f"left at {result['exit']}, {result['gmacs'] * 1e3:.2f} MMACs"
    if result.get("other"):
        table.title = f"{shown(result['file'])}: [bold]other[/] (none of the expert's classes; nearest below)"
    return table


def register(app: typer.Typer) -> None:
    app.command("predict")(friendly_errors(predict_command))
