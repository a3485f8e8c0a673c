"""``nhl predict``: the most probable classes of image files, optionally with top-down attention."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from nhlcli.cli.common import console, friendly_errors, parse_attend, print_json, shown

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


def predict_command(
    model_file: Path = typer.Argument(..., help="An nhl model or expert file (.safetensors)."),
    images: list[Path] = typer.Argument(..., help="Image files (any format and mode Pillow reads)."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Classes to list per image (at most all of them)."),
    attend: list[str] | None = typer.Option(None, "--attend", metavar="CLASS=SCALE", help=ATTEND_HELP),
    attend_level: str | None = typer.Option(None, "--attend-level", metavar="N|path", help=ATTEND_LEVEL_HELP),
    route_top_k: int | None = typer.Option(None, "--route-top-k", metavar="K", help=ROUTE_HELP),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: cuda if available)."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON."),
) -> None:
    """Classify image files with a model: the top classes and their probabilities per image.

    A gated file (nhl gates) also says where each image left the network and what it cost.
    """

    from nhlcli.devices import resolve_device
    from nhlcli.evaluation import attend_pairs, attention_summary, check_attention_options, describe_attention
    from nhlcli.model.attention import class_attention
    from nhlcli.model.gated import GatedModel
    from nhlcli.model.loading import open_model
    from nhlcli.prediction import check_top_k, predict_images

    check_top_k(top_k, 1)
    pairs = attend_pairs(parse_attend(attend))
    check_attention_options(pairs, attend_level, None)
    dev = resolve_device(device)
    model = open_model(model_file, dev)
    if route_top_k is not None or isinstance(model, GatedModel):
        from nhlcli.evaluation import check_gated_options

        check_gated_options(model, route_top_k, pairs)
    attention = class_attention(model, pairs, attend_level) if pairs else None
    summary = attention_summary(model.tree, pairs, attend_level)
    results = predict_images(model, images, top_k=top_k, attention=attention, batch_size=batch_size)
    if as_json:
        print_json(
            {
                "model": str(model_file),
                "num_classes": len(model.tree.classes),
                "top_k": check_top_k(top_k, len(model.tree.classes)),
                "attention": summary,
                "predictions": results,
            }
        )
        return
    for result in results:
        table = Table(title=shown(result["file"]), title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("class")
        table.add_column("id", style="dim")
        table.add_column("probability", justify="right")
        for rank, row in enumerate(result["top"], start=1):
            table.add_row(str(rank), shown(row["name"]), shown(row["id"]), f"{row['probability']:.2%}")
        if "exit" in result:
            table.caption = f"left at {result['exit']}, {result['gmacs'] * 1e3:.2f} MMACs"
        console.print(table)
    if summary:
        console.print(f"attention: {shown(describe_attention(summary))}")


def register(app: typer.Typer) -> None:
    app.command("predict")(friendly_errors(predict_command))
