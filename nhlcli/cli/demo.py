"""``nhl demo``: the whole job on a built-in data set, from tree to expert, in a few minutes."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from nhlcli.cli.common import TrainingBar, console, friendly_errors, print_json, shown
from nhlcli.errors import with_flags

if TYPE_CHECKING:
    from nhlcli.demo import DemoResult

# The demos' facts as the help prints them: the demos themselves live in the data sets' specs,
# which need torch to read, and every nhl command would pay for that import to build its help.
# tests/test_demo.py checks these against the specs.
DEMO_HELP = {
    "data": "fashion-mnist or emoji",
    "workdirs": "nhl-demo or nhl-demo-emoji",
    "budget_minutes": 7,
    "max_epochs": "8 on fashion-mnist, 30 on emoji",
    "report": "report.json",
}


def closing_table(result: DemoResult) -> Table:
    """Accuracy and cost, full model against the expert."""
    full, expert, task = result.full, result.expert, result.task
    table = Table(title=f"{task.title}: full NHL model against the {task.expert_name} expert")
    table.add_column("")
    table.add_column("full model", justify="right")
    table.add_column("expert", justify="right")
    table.add_column("reduction", justify="right")
    reduction = expert["reduction_percent"]
    table.add_row("classes", str(full["cost"]["classes"]), str(expert["cost"]["classes"]), "")
    table.add_row(f"test top-1, all {full['cost']['classes']} classes", f"{full['top1']:.2%}", "", "")
    on_expert = f"{full['top1_on_expert_classes']:.2%}"
    expert_top1 = f"{expert['top1']:.2%}"
    table.add_row(f"test top-1, {task.expert_name} images", on_expert, expert_top1, "same answers")
    table.add_row(
        "params (M)",
        f"{full['cost']['params']['total'] / 1e6:.3f}",
        f"{expert['cost']['params']['total'] / 1e6:.3f}",
        f"{reduction['params']['total']:.1f}%",
    )
    gmacs = (full["cost"]["gmacs"], expert["cost"]["gmacs"])
    table.add_row("GMACs / image", f"{gmacs[0]:.4f}", f"{gmacs[1]:.4f}", f"{reduction['gmacs']:.1f}%")
    for f_run, e_run, red in zip(
        full["cost"]["latency"], expert["cost"]["latency"], reduction.get("latency", []), strict=False
    ):
        table.add_row(
            f"latency batch {f_run['batch']} (ms)",
            f"{f_run['median_ms']:.2f}",
            f"{e_run['median_ms']:.2f}",
            f"{red['median_ms']:.1f}%",
        )
    cost = full["cost"]
    table.caption = (
        f"full model on {task.expert_name} = softmax over the {expert['cost']['classes']} {task.expert_name} "
        "classes (paper 003, eq. 3); "
        f"latency: median, {cost['device']}, {cost['threads']} threads"
    )
    return table


def demo_command(
    data: str = typer.Option(
        "fashion-mnist",
        "--data",
        "-d",
        help=f"Which built-in data set: {DEMO_HELP['data']} (Unicode's Animals & Nature group, 152 "
        "classes over its 3-level tree, with a sea animals expert).",
    ),
    workdir: Path | None = typer.Option(
        None,
        "--workdir",
        "-w",
        help=f"Where to keep the tree, model, expert, test images and {DEMO_HELP['report']} (created if "
        f"missing; default {DEMO_HELP['workdirs']} in the current directory).",
    ),
    epochs: int | None = typer.Option(
        None,
        "--epochs",
        "-e",
        help=f"Training epochs (default: train until {DEMO_HELP['budget_minutes']} minutes are spent, at "
        f"most {DEMO_HELP['max_epochs']} epochs).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier demo's files in --workdir (refused otherwise)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help=f"Print the results as JSON (what {DEMO_HELP['report']} holds)."
    ),
) -> None:
    """Run the main job end to end: tree, training, eval, an expert, its cost.

    On Fashion-MNIST (the default) everything is kept in --workdir (nhl-demo/ here by default):
    tree.json, the model fashion-nhl.safetensors, the expert footwear-expert.safetensors, four test
    images (sandal.png, sneaker.png, ankle-boot.png, shirt.png) and report.json, the results as
    JSON. Needs the Fashion-MNIST files (Debian's dataset-fashion-mnist package, NHL_DATA, or a
    download when online). --data emoji trains on Unicode's Animals & Nature emoji (Debian's
    unicode-data and fonts-noto-color-emoji) and cuts a sea animals expert, in nhl-demo-emoji/.
    Training stops when 7 minutes are spent (or at the epoch cap), its learning rate following the
    time spent so that it ends annealed even when another process slows the machine down midway;
    the whole demo ends within 10 minutes. --epochs N trains exactly N epochs instead.
    """

    def say(text: str) -> None:
        if not as_json:
            console.print(f"[bold cyan]{shown(with_flags(text))}[/]")

    from nhlcli.demo import check_workdir, demo_task, run_demo

    task = demo_task(data)
    check_workdir(workdir, overwrite, data)  # before anything runs
    result = run_demo(
        workdir,
        epochs=epochs,
        progress=None if as_json else TrainingBar(),
        say=say,
        overwrite=overwrite,
        data=data,
    )
    if as_json:
        print_json(result.summary())
        return
    console.print(closing_table(result))
    model = shlex.quote(result.full["file"])
    commands = [
        f"nhl cutout {model} --classes {shlex.quote(','.join(task.expert_classes))} -o expert.safetensors"
    ]
    if result.images:
        pictures = " ".join(shlex.quote(image["file"]) for image in result.images)
        commands.append(f"nhl predict {model} {pictures}")
    console.print(
        f"done in {result.seconds:.0f} s ({result.train_seconds:.0f} s training); files and "
        f"{DEMO_HELP['report']} in {shown(result.workdir)}. Next:",
        highlight=False,
    )
    for command in commands:
        console.print(shown(command), soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("demo")(friendly_errors(demo_command))
