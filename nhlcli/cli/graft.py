"""``nhl graft``: add classes to a trained NHL by training only their new branches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nhlcli.cli.common import (
    HOLDOUT_HELP,
    console,
    friendly_errors,
    parse_names,
    print_json,
    shown,
)

if TYPE_CHECKING:
    from nhlcli.taxonomy.tree import Tree


def graft_command(
    model_file: Path = typer.Argument(..., help="A trained NHL model file (not gated) to grow."),
    data: str = typer.Option(
        ...,
        "--data",
        "-d",
        help="Data holding the new classes and the model's own (ImageFolder, fashion-mnist or emoji).",
    ),
    classes: str = typer.Option(
        ...,
        "--classes",
        "-c",
        help="The new classes, comma-separated (a name with commas in double quotes) or @file with one per "
        "line: classes of the data. With --tree (or the data set's shipped tree) a name may also be a "
        "group of that tree, standing for its classes.",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the grown model (.safetensors)."),
    under: str | None = typer.Option(
        None,
        "--under",
        metavar="NODE",
        help="Put every new class under this node of the model's tree. A node above the leaves' parents "
        "(or the root) gets one new group holding them (named by --group).",
    ),
    group: str | None = typer.Option(
        None, "--group", metavar="NAME", help="With --under: the new group's name."
    ),
    reference: str | None = typer.Option(
        None,
        "--tree",
        metavar="TREE",
        help="Place each new class as this tree does (a tree file over all the classes, e.g. from 'nhl "
        "hierarchy build --source wordnet', or a shipped tree's name). Default without --under: the data "
        "set's shipped tree.",
    ),
    save_tree: Path | None = typer.Option(None, "--save-tree", help="Also write the grown tree (JSON) here."),
    epochs: int = typer.Option(15, "--epochs", help="Epochs over the new classes' images."),
    negatives: float = typer.Option(
        1.0,
        "--negatives",
        metavar="MULTIPLE",
        help="Old classes' images drawn afresh each epoch, as a multiple of the new classes' images.",
    ),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate of the new branches [default: 0.03]."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Batch size [default: the model's own]."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the new weights, the sampling and the augmentation."),
    holdout: float | None = typer.Option(None, "--holdout", metavar="FRACTION", help=HOLDOUT_HELP),
    workers: int = typer.Option(2, "--workers", help="Data loading processes."),
    measure: bool = typer.Option(
        True,
        "--measure/--no-measure",
        help="Measure top-1 of new and old classes on the hold-out (or val split) afterwards.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was done and measured as JSON."),
) -> None:
    """Grow a trained NHL by new classes without changing any old answer.

    Only the new classes' branches are trained: the trunk, every existing branch and their
    BatchNorm statistics are frozen, so every old class's logit stays bit for bit what it was. The
    new classes' logits come after the old ones; the file records what was grafted and when. Training
    uses the new classes' images plus a sample of the old classes' as negatives.
    """
    from nhlcli.graft.run import GraftRequest, graft_file
    from nhlcli.paths import check_distinct_outputs, check_output_file

    inputs = [model_file, classes[1:] if classes.startswith("@") and classes[1:].strip() else None]
    tree_input = None
    if reference is not None:
        from nhlcli.taxonomy.sources import tree_source_file

        tree_input = tree_source_file(reference)
    check_output_file(output, [*inputs, tree_input], label="--output")
    check_output_file(save_tree, [*inputs, tree_input], label="--save-tree")
    check_distinct_outputs({"--output": output, "--save-tree": save_tree})
    request = GraftRequest(
        data=data,
        classes=parse_names(classes),
        under=under,
        group=group,
        reference=reference,
        epochs=epochs,
        negatives=negatives,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        workers=workers,
        holdout=holdout,
    )
    bar = Progress(
        TextColumn("[bold]graft epoch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=as_json,
    )
    task = bar.add_task("graft", total=epochs, loss=0.0, acc=0.0)

    def progress(done: int, total: int, record: dict[str, float]) -> None:
        bar.update(task, completed=done, loss=record["train_loss"], acc=record["train_top1"])

    with bar:
        result = graft_file(model_file, request, output, progress, measure)
    if save_tree is not None:
        result.grown.tree.save(save_tree)
    summary = {
        **result.summary(),
        "output": str(output),
        "tree_output": None if save_tree is None else str(save_tree),
    }
    if as_json:
        print_json(summary)
        return
    _print_summary(result.record, result.grown.tree)
    console.print(f"wrote [bold]{shown(output)}[/]" + (f" and {shown(save_tree)}" if save_tree else ""))


def _print_summary(record: dict[str, Any], tree: Tree) -> None:
    from nhlcli.graft.run import describe

    console.print(describe(record))
    for cls, parent in list(record["parents"].items())[:12]:
        node = tree.node(parent)
        label = node.name if node.name == parent else f"{node.name} ({parent})"
        console.print(f"  {shown(tree.node(cls).name)} under {shown(label)}")
    if len(record["parents"]) > 12:
        console.print(f"  ... ({len(record['parents'])} in all)")
    measured = record.get("measured")
    if not measured:
        return

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    console.print(
        f"on the {'hold-out' if measured['holdout'] else 'val split'}: new classes top-1 "
        f"{pct(measured['top1_new'])} ({measured['images_new']} images); old classes top-1 "
        f"{pct(measured['top1_old_before'])} before, {pct(measured['top1_old_after'])} after "
        f"({measured['images_old']} images; {pct(measured['old_changed'])} now answer a new class)"
    )


def register(app: typer.Typer) -> None:
    app.command("graft")(friendly_errors(graft_command))
