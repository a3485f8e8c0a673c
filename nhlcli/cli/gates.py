"""``nhl gates fit|tune|sweep``: decision gates for early exits (paper 004) and routing."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from nhlcli.cli.common import (
    HOLDOUT_HELP,
    ImageProgress,
    console,
    friendly_errors,
    parse_list,
    print_json,
    shown,
    threshold,
    whole_number,
)
from nhlcli.errors import NhlError
from nhlcli.text import counted

gates_app = typer.Typer(
    help=(
        "Decision gates (paper 004): linear classifiers after trunk stages, trained with a hinge "
        "loss on the frozen network, let easy images leave early; a routing gate runs only the "
        "branches of each image's likeliest super-categories.\n\n"
        "fit -> tune (thresholds for a target accuracy) -> nhl eval / nhl predict on the gated file."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

DATA_HELP = "ImageFolder directory, fashion-mnist or emoji."
PART_HELP = "Use only part i of k of the split (fixed shuffle), e.g. 1/2 to tune and 2/2 to report."
ROUTE_HELP = "NHL only: run just the branches of each image's K likeliest super-categories."


def parse_stages(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() == "default":
        return None
    if text.strip().lower() == "none":
        return []
    return parse_list(text, "--stages", whole_number, "1,2,3 (or 'none')")


def _thr(t: float | None) -> str:
    return "inf" if t is None else f"{t:.4g}"


def fit_command(
    model_file: Path = typer.Argument(..., help="An nhl model, expert or flat model file."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the gated file."),
    data: str = typer.Option("fashion-mnist", "--data", "-d", help=DATA_HELP),
    split: str = typer.Option("train", "--split", help="The split the gates learn from."),
    holdout: float | None = typer.Option(None, "--holdout", metavar="FRACTION", help=HOLDOUT_HELP),
    stages: str | None = typer.Option(
        None,
        "--stages",
        help="Stages to put exit gates after, e.g. 1,2 (default: every stage up to the split point; 'none').",
    ),
    route: bool | None = typer.Option(
        None, "--route/--no-route", help="Also fit the routing gate (default: on for NHL models)."
    ),
    loss: str = typer.Option("hinge", "--loss", help="hinge (paper 004) or ce (its Experiment 1 control)."),
    epochs: int = typer.Option(30, "--epochs", help="Passes over the cached features per gate."),
    lr: float = typer.Option(0.01, "--lr", help="Learning rate of the gates."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per forward pass."),
    workers: int = typer.Option(2, "--workers", help="Data loading processes."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: cuda if available)."),
    as_json: bool = typer.Option(False, "--json", help="Print the fit report as JSON."),
) -> None:
    """Fit exit gates (and a routing gate) on a frozen model; thresholds stay closed until tuned."""
    from nhlcli.gates.fit import GateTraining
    from nhlcli.gates.workflow import fit_file, fit_report

    config = GateTraining(loss=loss, epochs=epochs, lr=lr)
    with ImageProgress(not as_json) as progress:
        gated = fit_file(
            model_file, output, data, split, parse_stages(stages), route, config, batch_size, workers, device,
            progress, holdout=holdout,
        )  # fmt: skip
    report = fit_report(gated, output)
    if as_json:
        print_json(report)
        return
    console.print(_fit_table(report, model_file, gated.base_macs()))
    next_steps = _fit_next_steps(output, data, report)
    console.print(f"wrote {shown(output)}; next, {next_steps}", highlight=False, soft_wrap=True)


def _fit_table(report: Mapping[str, Any], model_file: Path, full_macs: float) -> Table:
    """Each gate fitted: after which stage, on how many features, its train top-1 and the GMACs
    an image costs to leave there; the routing gate; the full network's GMACs."""
    table = Table(
        title=f"gates for {shown(model_file.name)} ({report['loss']} loss, "
        f"{counted(report['images'], 'image')})"
    )
    table.add_column("gate")
    table.add_column("after stage", justify="right")
    table.add_column("features", justify="right")
    table.add_column("train top-1", justify="right")
    table.add_column("GMACs to exit", justify="right")
    for i, gate in enumerate(report["gates"]):
        table.add_row(
            f"exit {i + 1}",
            str(gate["stage"]),
            str(gate["features"]),
            f"{gate['train_top1']:.2%}",
            f"{report['exit_gmacs'][i]:.4f}",
        )
    if "route" in report:
        r = report["route"]
        table.add_row(
            "route", str(r["stage"]), f"{r['outputs']} super-categories", f"{r['train_top1']:.2%}", ""
        )
    table.add_row("full network", "", "", "", f"{full_macs / 1e9:.4f}")
    return table


def _fit_next_steps(output: Path, data: str, report: Mapping[str, Any]) -> str:
    """The commands that tune the fitted gates and then report on images the tuning never saw."""
    quoted = shlex.quote(str(output))
    data_option = f"--data {shlex.quote(str(data))}"
    if report.get("holdout"):
        held = f"--holdout {report['holdout']:g}"
        return (
            f"tune on the hold-out the gates never saw, then report once on the data's own val split:\n"
            f"nhl gates tune {shown(quoted)} {shown(data_option)} --split val {held} --max-drop 0.5\n"
            f"nhl eval {shown(quoted)} {shown(data_option)} --holdout 0"
        )
    return (
        f"tune on one half of the held-out images and report on the other:\n"
        f"nhl gates tune {shown(quoted)} {shown(data_option)} --part 1/2 --max-drop 0.5\n"
        f"nhl eval {shown(quoted)} {shown(data_option)} --part 2/2"
    )


def _exits_table(title: str, result: Mapping[str, Any], names: list[str]) -> Table:
    table = Table(title=title)
    table.add_column("exit")
    table.add_column("threshold", justify="right")
    table.add_column("images leaving", justify="right")
    thresholds = [*result["thresholds"], None]
    for name, t, frac in zip(names, thresholds, result["exit_fractions"], strict=True):
        table.add_row(name, "" if name == names[-1] else _thr(t), f"{frac:.1%}")
    return table


def tune_command(
    gated_file: Path = typer.Argument(..., help="A gated file from 'nhl gates fit'."),
    data: str = typer.Option("fashion-mnist", "--data", "-d", help=DATA_HELP),
    split: str = typer.Option("val", "--split", help="The held-out split thresholds are tuned on."),
    holdout: float | None = typer.Option(None, "--holdout", metavar="FRACTION", help=HOLDOUT_HELP),
    part: str | None = typer.Option(None, "--part", metavar="i/k", help=PART_HELP),
    target_accuracy: float | None = typer.Option(
        None, "--target-accuracy", metavar="PERCENT", help="The top-1 to reach, in percent (e.g. 91.5)."
    ),
    max_drop: float | None = typer.Option(
        None, "--max-drop", metavar="POINTS", help="Allowed top-1 loss against the full network, in points."
    ),
    thresholds: str | None = typer.Option(
        None, "--thresholds", metavar="t1,t2,...", help="Set the thresholds yourself (inf: never exit)."
    ),
    delta: float | None = typer.Option(
        None,
        "--delta",
        metavar="RISK",
        help="Guarantee the budget on new images: with probability at least 1-RISK (e.g. 0.1), images "
        "from the same data lose at most --max-drop points (or stay above --target-accuracy). "
        "Learn-then-Test on the tuning images; on too few, every gate stays closed and the report says "
        "why. Without it, the budget is met on the tuning images only.",
    ),
    seed: int | None = typer.Option(
        None,
        "--seed",
        help="With --delta: how the tuning images are split into ordering and testing halves [default: 0].",
    ),
    test_images: int | None = typer.Option(
        None,
        "--test-images",
        metavar="N",
        help="With --delta: guarantee the loss measured on a test set of N new images, not only the rate "
        "over all new images. A finite test set strays from the rate by its own sampling error, so "
        "less can be saved.",
    ),
    route_top_k: int | None = typer.Option(None, "--route-top-k", metavar="K", help=ROUTE_HELP),
    tune_route: bool = typer.Option(
        False,
        "--tune-route",
        help="Choose the routing width instead of thresholds: the fewest super-categories whose branches "
        "each image runs (K) within the budget (and with --delta, guaranteed), exit gates closed. The "
        "file keeps K; eval and predict route with it.",
    ),
    tune_route_and_thresholds: bool = typer.Option(
        False,
        "--tune-route-and-thresholds",
        help="Choose the routing width and the exit thresholds together, one budget for both against the "
        "whole network (with --delta, one guarantee for both; --seed splits the tuning images).",
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write here instead of updating the file."
    ),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per forward pass."),
    workers: int = typer.Option(2, "--workers", help="Data loading processes."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: cuda if available)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Set the exit thresholds: the lowest average GMACs that reaches a target top-1 on held-out data
    (with --delta, one that holds on new images with a stated probability)."""
    from nhlcli.gates.workflow import tune_route_file

    _check_tune_flags(tune_route, tune_route_and_thresholds, thresholds, route_top_k, seed, delta)
    given = parse_list(thresholds, "--thresholds", threshold, "1.5,2,inf") if thresholds is not None else None
    if tune_route or tune_route_and_thresholds:
        with ImageProgress(not as_json) as progress:
            result = tune_route_file(
                gated_file, data, split, part, target_accuracy, max_drop, delta, output, batch_size, workers,
                device, progress, holdout=holdout, test_images=test_images,
                with_thresholds=tune_route_and_thresholds, seed=seed or 0,
            )  # fmt: skip
    else:
        result = _tune(gated_file, data, split, part, target_accuracy, max_drop, given, route_top_k, output,
                       batch_size, workers, device, holdout, delta, seed or 0, as_json,
                       test_images)  # fmt: skip
    if as_json:
        print_json(result)
        return
    _print_tuned(result, gated_file, output, data, part, given)


def _check_tune_flags(
    tune_route: bool, both: bool, thresholds: str | None, route_top_k: int | None, seed: int | None,
    delta: float | None,
) -> None:  # fmt: skip
    """Refuse flags that make no sense together, before any file is read."""
    if tune_route and both:
        raise NhlError("--tune-route chooses the width alone, --tune-route-and-thresholds both; give one")
    clashing = {"--thresholds": thresholds, "--route-top-k": route_top_k}
    if tune_route:
        clashing["--seed"] = seed
    flag = next((flag for flag, value in clashing.items() if value is not None), None)
    if tune_route and flag is not None:
        raise NhlError(f"{flag} does not go with --tune-route, which chooses the width, every gate closed")
    if both and flag is not None:
        raise NhlError(f"{flag} does not go with --tune-route-and-thresholds, which chooses both")
    if seed is not None and delta is None:
        raise NhlError("--seed splits the tuning images for --delta; give --delta or drop --seed")


def _tune(
    gated_file: Path, data: str, split: str, part: str | None, target_accuracy: float | None,
    max_drop: float | None, given: list[float | None] | None, route_top_k: int | None, output: Path | None,
    batch_size: int, workers: int, device: str | None, holdout: float | None, delta: float | None, seed: int,
    as_json: bool, test_images: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    from nhlcli.gates.workflow import tune_file

    with ImageProgress(not as_json) as progress:
        result = tune_file(
            gated_file,
            data,
            split,
            part,
            target_accuracy,
            max_drop,
            given,
            route_top_k,
            output,
            batch_size,
            workers,
            device,
            progress,
            holdout=holdout,
            delta=delta,
            seed=seed,
            test_images=test_images,
        )
    return result


def _print_tuned(
    result: dict[str, Any], gated_file: Path, output: Path | None, data: str, part: str | None,
    given: list[float | None] | None,
) -> None:  # fmt: skip
    from nhlcli.model.files import read_metadata
    from nhlcli.model.gated import exit_names

    names = exit_names(read_metadata(output or gated_file)["gates"]["stages"])
    console.print(
        _exits_table(
            f"thresholds on {shown(data)} ({shown(result['split'])}"
            f"{', part ' + shown(part) if part else ''}, "
            f"{counted(result['images'], 'image')})",
            result,
            names,
        )
    )
    saved = 100 * (1 - result["gmacs"] / result["full_gmacs"])
    console.print(
        f"top-1 [bold]{result['top1']:.2%}[/] (full network {result['full_top1']:.2%}), "
        f"{result['gmacs']:.4f} GMACs per image on average against {result['full_gmacs']:.4f} "
        f"({saved:.1f}% fewer)"
    )
    if result.get("route_top_k") is not None:
        best = counted(result["route_top_k"], "best super-category", "best super-categories")
        console.print(f"each image runs the branches of its {best}")
    if result["guarantee"] is not None:
        from nhlcli.gates.guarantee import guarantee_sentence

        console.print(escape(guarantee_sentence(result["guarantee"])))
    elif given is None:
        console.print("met on these images only: on new ones the loss can exceed it (--delta guarantees it)")
    chose = "thresholds" if result.get("route_top_k") is None else "thresholds and routing width"
    console.print(f"wrote the {chose} into {shown(output or gated_file)}")


def sweep_command(
    gated_file: Path = typer.Argument(..., help="A gated file from 'nhl gates fit'."),
    data: str = typer.Option("fashion-mnist", "--data", "-d", help=DATA_HELP),
    split: str = typer.Option("val", "--split", help="The split to measure on."),
    holdout: float | None = typer.Option(None, "--holdout", metavar="FRACTION", help=HOLDOUT_HELP),
    part: str | None = typer.Option(None, "--part", metavar="i/k", help=PART_HELP),
    route_top_k: int | None = typer.Option(None, "--route-top-k", metavar="K", help=ROUTE_HELP),
    plot: Path | None = typer.Option(None, "--plot", help="Also draw the curve into this PNG."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per forward pass."),
    workers: int = typer.Option(2, "--workers", help="Data loading processes."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: cuda if available)."),
    as_json: bool = typer.Option(False, "--json", help="Print the curve as JSON."),
) -> None:
    """The accuracy-GMACs curve: thresholds tuned for allowed drops of 0 to 20 points (file unchanged)."""
    from nhlcli.data.datasets import split_name
    from nhlcli.gates.tune import plot_sweeps
    from nhlcli.gates.workflow import data_input, file_holdout, sweep_file
    from nhlcli.paths import check_output_file

    check_output_file(plot, [gated_file, data_input(data)], label="--plot")
    if plot is not None and plot.suffix.lower() != ".png":
        raise NhlError(f"--plot {plot}: the picture is written as PNG; name it .png")
    with ImageProgress(not as_json) as progress:
        points = sweep_file(
            gated_file, data, split, part, None, route_top_k, batch_size, workers, device, progress,
            holdout=holdout,
        )  # fmt: skip
    held = file_holdout(gated_file, split, holdout)
    named = split_name(data, split, held)
    if plot is not None:
        plot_sweeps({gated_file.stem: points}, plot, title=f"{gated_file.name} on {data} ({named})")
    if as_json:
        print_json({"points": points, "split": named, "holdout": held, "plot": str(plot) if plot else None})
        return
    where = f"{named}, part {part}" if part else named
    table = Table(title=f"{shown(gated_file.name)}: accuracy against cost on {shown(data)} ({shown(where)})")
    for col in ("allowed drop", "top-1", "GMACs / image", "fewer GMACs", "thresholds"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(
            f"{p['max_drop']:g} pt",
            f"{p['top1']:.2%}",
            f"{p['gmacs']:.4f}",
            f"{100 * (1 - p['gmacs'] / p['full_gmacs']):.1f}%",
            ", ".join(_thr(t) for t in p["thresholds"]),
        )
    console.print(table)
    console.print(f"full network: top-1 {points[0]['full_top1']:.2%}, {points[0]['full_gmacs']:.4f} GMACs")
    if plot is not None:
        console.print(f"wrote {shown(plot)}")


def gated_report_table(report: Mapping[str, Any]) -> Table:
    """What ``nhl eval`` prints for a gated file: where images left and what it cost."""
    title = f"gated inference on {counted(report['images'], 'image')}"
    if report.get("route_top_k"):
        title += f", routed through the top {report['route_top_k']} super-categories"
    table = Table(title=title)
    table.add_column("exit")
    table.add_column("images leaving", justify="right")
    table.add_column("top-1 there", justify="right")
    for row in report["exits"]:
        table.add_row(
            row["name"], f"{row['fraction']:.1%}", "-" if row["top1"] is None else f"{row['top1']:.2%}"
        )
    return table


def register(app: typer.Typer) -> None:
    gates_app.command("fit")(friendly_errors(fit_command))
    gates_app.command("tune")(friendly_errors(tune_command))
    gates_app.command("sweep")(friendly_errors(sweep_command))
    app.add_typer(gates_app, name="gates")
