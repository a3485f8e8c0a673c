"""``nhl cutout`` and ``nhl profile``: cut an expert out of a model, and report what it costs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from nhlcli.atomic import atomic_write_json
from nhlcli.cli.common import CLASSES_HELP, console, friendly_errors, parse_names, print_json, shown
from nhlcli.errors import NhlError

BATCH_HELP = "The larger batch size latency and peak memory are measured at (besides batch 1)."
THREADS_HELP = "CPU threads for the timed runs (default: torch's default for this machine)."


# The largest timed batch: 1,024 images of 224 px are 0.6 GB of input before the model runs;
# larger is a typo that would allocate gigabytes for a latency figure.
MAX_BATCH = 1024


def _batches(batch_size: int) -> tuple[int, ...]:
    if not 1 <= batch_size <= MAX_BATCH:
        raise NhlError(
            f"--batch-size must be 1 to {MAX_BATCH:,} (latency and peak memory are measured on a "
            f"random batch of that many images), got {batch_size:,}"
        )
    return (1,) if batch_size == 1 else (1, batch_size)


def check_threads(threads: int | None) -> None:
    """``--threads``: 1 up to four per CPU core. More only adds switching between threads, and
    ``--threads 1000000`` would ask the OpenMP runtime for a million of them."""
    if threads is None:
        return
    cores = os.cpu_count() or 1
    if not 1 <= threads <= 4 * cores:
        raise NhlError(
            f"--threads {threads}: give 1 to {4 * cores} (this machine has {cores} CPU cores), or leave it "
            "out for torch's default"
        )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}%"


def cost_rows(report: Mapping[str, Any]) -> dict[str, float | None]:
    """One report as ``{row label: value}`` in display units."""
    rows: dict[str, float | None] = {"classes": report["classes"]}
    for group in ("total", "trunk", "branches"):
        rows[f"params {group} (M)"] = report["params"][group] / 1e6
    rows["GMACs / image"] = report["gmacs"]
    for run in report.get("latency", []):
        rows[f"latency batch {run['batch']} (ms)"] = run["median_ms"]
    for run in report.get("latency", []):
        rows[f"peak memory batch {run['batch']} (MB)"] = run["peak_memory_mb"]
    return rows


def cost_table(title: str, columns: Mapping[str, Mapping[str, Any]], show_reduction: bool = False) -> Table:
    """A rich table with one column per report; with two, the reduction of the second."""
    table = Table(title=title)
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right")
    if show_reduction:
        table.add_column("reduction", justify="right")
    rendered = [cost_rows(r) for r in columns.values()]
    for label in rendered[0]:
        values = [r.get(label) for r in rendered]
        digits = 0 if label == "classes" else (4 if label.startswith("GMACs") else 2)
        cells = [_fmt(v, digits) for v in values]
        if show_reduction:
            first, last = values[0], values[-1]
            cells.append(_pct(100 * (1 - last / first)) if first and last is not None else "")
        table.add_row(label, *cells)
    first = next(iter(columns.values()))
    if "latency" in first:
        runs = ", ".join(f"batch {r['batch']}: median of {r['runs']}" for r in first["latency"])
        table.caption = f"{first['device']}, {first['threads']} threads; {runs} runs"
    return table


def cutout_command(
    model_file: Path = typer.Argument(..., help="A trained NHL model file (or an expert) to cut from."),
    classes: str = typer.Option(
        ...,
        "--classes",
        "-c",
        help="Classes to keep: " + CLASSES_HELP,
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the expert (.safetensors)."),
    report: Path | None = typer.Option(None, "--report", help="Also write the cost report as JSON here."),
    latency: bool = typer.Option(
        True, "--latency/--no-latency", help="Measure latency and peak memory (params and GMACs always)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help=BATCH_HELP),
    threads: int | None = typer.Option(None, "--threads", help=THREADS_HELP),
    other: bool = typer.Option(
        False,
        "--other",
        help="Let the expert answer 'none of my classes': fit a linear test on the features its own "
        "branches compute (needs --data, the data the parent was trained on) and set its threshold so "
        "that at most --other-budget of its own images answer other, guaranteed with probability "
        "1-DELTA on new images.",
    ),
    data: str | None = typer.Option(
        None, "--data", "-d", help="With --other: the parent's data (ImageFolder, fashion-mnist or emoji)."
    ),
    other_budget: float = typer.Option(
        0.05, "--other-budget", metavar="SHARE",
        help="With --other: the share of own images allowed to answer other.",
    ),
    delta: float = typer.Option(
        0.1, "--delta", metavar="RISK", help="With --other: the chance the budget is exceeded on new images."
    ),
    test_images: int | None = typer.Option(
        None, "--test-images", metavar="N",
        help="With --other: guarantee the share on a test set of N new own images, not only as a rate "
        "over all new images (a finite test set strays from the rate, so the threshold is set lower).",
    ),
    part: str | None = typer.Option(
        None, "--part", metavar="i/k", help="With --other: the part of the val split setting the threshold."
    ),
    holdout: float | None = typer.Option(
        None, "--holdout", metavar="FRACTION",
        help="With --other: as nhl train --holdout (default: the parent's).",
    ),
    other_images: int = typer.Option(
        20000, "--other-images", metavar="N", help="With --other: training images to fit on, at most."
    ),
    workers: int = typer.Option(2, "--workers", help="With --other: data loading processes."),
    as_json: bool = typer.Option(False, "--json", help="Print the cost report as JSON instead of a table."),
) -> None:
    """Cut an expert for just the classes a task needs out of an NHL model.

    The expert keeps the trunk and only the branches on the paths to the kept classes. Its
    logits equal the parent's logits for those classes; its softmax runs over them alone. It
    loads without the parent file. The cost report compares parent and expert. With --other it
    can also answer "none of my classes".
    """
    from nhlcli.experts import compare, cutout_with_cost, save_expert
    from nhlcli.paths import check_distinct_outputs, check_output_file

    inputs = [model_file, classes[1:] if classes.startswith("@") and classes[1:].strip() else None]
    check_output_file(output, inputs, label="--output")
    check_output_file(report, inputs, label="--report")
    check_distinct_outputs({"--output": output, "--report": report})
    labels = parse_names(classes)
    batches = _batches(batch_size)
    check_threads(threads)
    request = _other_request(
        other, data, other_budget, delta, part, holdout, other_images, workers, test_images
    )
    cut, parent_cost, expert_cost = cutout_with_cost(model_file, labels, batches, latency, threads, request)
    save_expert(cut, output, cost=expert_cost)
    summary = {
        "parent": str(model_file),
        "expert": str(output),
        "kept_classes": [cut.model.tree.node(c).name for c in cut.model.tree.classes],
        "resolved": cut.lineage["selection"],
        "notes": list(cut.notes),
        "cut_seconds": round(cut.seconds, 3),
        "parent_cost": parent_cost,
        "expert_cost": expert_cost,
        "reduction_percent": compare(parent_cost, expert_cost),
    }
    if cut.other is not None:
        summary["other"] = cut.other
    if report is not None:
        atomic_write_json(report, summary)
    if as_json:
        print_json(summary)
        return
    columns = {"parent": parent_cost, "expert": expert_cost}
    title = f"{shown(model_file.name)} -> {shown(output.name)}"
    console.print(cost_table(title, columns, show_reduction=True))
    names = summary["kept_classes"]
    listed = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    console.print(f"kept classes: {shown(listed)}")
    for note in cut.notes:
        console.print(shown(note))
    if cut.other is not None:
        console.print(other_lines(cut.other))
    console.print(f"wrote [bold]{shown(output)}[/] (cut in {cut.seconds:.2f} s)")


def _other_request(
    other: bool, data: str | None, budget: float, delta: float, part: str | None, holdout: float | None,
    images: int, workers: int, test_images: int | None = None,
) -> Any:  # fmt: skip
    """``--other``'s request, checked before anything is read; its options alone are refused."""
    if not other:
        given = {"--data": data, "--part": part, "--holdout": holdout, "--test-images": test_images}
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            raise NhlError(f"{named[0]} goes with --other (fitting the expert's other answer); add "
                           "--other or drop it")
        return None
    if data is None:
        raise NhlError("--other needs --data: the data the parent was trained on, which holds the other "
                       "classes too")
    from nhlcli.experts.other import OtherRequest

    request = OtherRequest(data=data, budget=budget, delta=delta, part=part, holdout=holdout,
                           max_images=images, workers=workers, test_images=test_images)  # fmt: skip
    request.check()
    return request


def other_lines(record: Mapping[str, Any]) -> str:
    """What the other head does, for people: its threshold's promise and how well it separates."""
    calibration = record["calibration"]
    share = f"{calibration['budget']:.0%}"
    if calibration.get("delta") is None:
        promise = f"at most {share} of the calibration images' own classes answer other (no guarantee)"
    elif calibration["guaranteed"]:
        where = "new images"
        if calibration.get("test_images") is not None:
            where = f"a test set of {calibration['test_images']} new own images"
        promise = (f"at most {share} of its own images answer other, with probability at least "
                   f"{1 - calibration['delta']:.0%} on {where} ({calibration['images_mine']} own "
                   "images tested)")  # fmt: skip
    else:
        promise = (f"no threshold can be guaranteed: {calibration['images_mine']} own calibration "
                   f"images, {calibration['images_needed']} needed; it never answers other")  # fmt: skip
    lines = [f"other: {promise}"]
    if "auroc" in calibration:
        scores = "  ".join(f"{name} {value:.3f}" for name, value in calibration["auroc"].items())
        lines.append(f"own against other classes (AUROC, calibration images): {scores}")
    lines.append(f"the other test adds {record['extra_macs_percent']:.3g}% MACs per image")
    return "\n".join(lines)


def profile_command(
    model_file: Path = typer.Argument(..., help="An nhl model file (full, expert, flat, gated) or .onnx."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure latency and peak memory."),
    batch_size: int = typer.Option(16, "--batch-size", help=BATCH_HELP),
    threads: int | None = typer.Option(None, "--threads", help=THREADS_HELP),
    repeats: int = typer.Option(20, "--repeats", help="Timed runs per batch size (fewer for slow models)."),
    curve: Path | None = typer.Option(
        None,
        "--curve",
        help="Also draw params and GMACs against the number of kept classes to this PNG, beside the same "
        "tree under the other NHL variants (nhl, nhl-lean, nhl-scale) and the plain network's GMACs.",
    ),
    torch_file: Path | None = typer.Option(
        None,
        "--torch",
        "--torch-file",
        help="For .onnx: the model file to time torch on (default: its source beside it).",
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Only check the file: its tensor data against the sha256 recorded when it was saved, and "
        "that it loads. Prints one line.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Params, GMACs, latency and peak memory of a model file; for an expert, against its parent.

    An .onnx file from nhl export: params, GMACs and onnxruntime latency beside torch's.
    """
    from nhlcli.experts.profile import profile_model_file
    from nhlcli.paths import check_output_file

    if verify:
        _verify(model_file, as_json)
        return
    check_output_file(curve, [model_file, torch_file], label="--curve")
    if curve is not None and curve.suffix.lower() != ".png":
        raise NhlError(f"--curve {curve}: the curve is drawn as PNG; name the file .png")
    check_threads(threads)
    if repeats < 1:
        raise NhlError(f"--repeats must be at least 1, got {repeats}")
    if model_file.suffix.lower() == ".onnx":
        from nhlcli.cli.export import onnx_profile_table
        from nhlcli.export import profile_onnx

        report = profile_onnx(model_file, _batches(batch_size), repeats, threads, torch_file)
        if as_json:
            print_json(report)
        else:
            console.print(onnx_profile_table(report))
        return
    result = profile_model_file(
        model_file, _batches(batch_size), latency=latency, repeats=repeats, threads=threads, curve=curve
    )
    if as_json:
        print_json(result)
        return
    _print_profile(model_file, result)


def _print_profile(model_file: Path, result: dict[str, Any]) -> None:
    """``nhl profile``'s report as text."""
    from nhlcli.text import counted

    tree = result["tree"]
    console.print(
        f"[bold]{shown(model_file.name)}[/]: {shown(result['kind'])} model on {shown(result['backbone'])}, "
        f"tree {shown(repr(tree['name']))}: "
        f"{counted(tree['classes'], 'class')}, {counted(tree['levels'], 'level')}, "
        f"nodes per level {tree['nodes_per_level']}"
    )
    console.print(cost_table("cost", {"this file": result["cost"]}))
    if "gates" in result:
        _print_exits(result["gates"])
    lineage = result.get("expert")
    if lineage:
        console.print(
            f"expert of {shown(lineage['parent_file'])} ({lineage['parent_classes']} classes, "
            f"sha256 {lineage['parent_sha256'][:12]})"
        )
        if lineage["reduction_percent"] is not None:
            console.print(cost_table("recorded at cut time", lineage["at_cut"], show_reduction=True))
    if "curve" in result:
        console.print(f"wrote the cost curve to [bold]{shown(result['curve']['file'])}[/]")


def _print_exits(gates: dict[str, Any]) -> None:
    thresholds = [*gates["thresholds"], None]
    exits = ", ".join(
        f"{e['name']} {e['gmacs']:.4f} GMACs (threshold {'inf' if t is None else f'{t:.3g}'})"
        if i < len(gates["exits"]) - 1
        else f"{e['name']} {e['gmacs']:.4f} GMACs"
        for i, (e, t) in enumerate(zip(gates["exits"], thresholds, strict=True))
    )
    console.print(f"{gates['loss']} gates ({gates['params']:,} params): {exits}")
    if gates["tuned"]:
        t = gates["tuned"]
        console.print(f"tuned: top-1 {t['top1']:.2%} at {t['gmacs']:.4f} GMACs on average ({t['split']})")


def _verify(model_file: Path, as_json: bool) -> None:
    """``nhl profile --verify``: the digest check and a load, reported in one line."""
    from nhlcli.model.files import read_model_file
    from nhlcli.model.loading import model_from_contents

    if model_file.suffix.lower() == ".onnx":
        raise NhlError(
            f"--verify checks nhl model files (.safetensors); {model_file} is ONNX, which records no "
            "digest: verify the model file it was exported from"
        )
    contents = read_model_file(model_file)  # one read: bounds, both digests, then the load
    model_from_contents(contents)  # the weights fit the model the metadata describes
    digest, meta_digest = contents.header.tensor_digest, contents.header.metadata_digest
    if as_json:
        print_json(
            {
                "file": str(model_file),
                "verified": digest is not None,
                "tensor_sha256": digest,
                "metadata_sha256": meta_digest,
            }
        )
    elif digest is None:
        console.print(
            f"{shown(model_file)}: loads, but there is no digest to check (written by an nhl "
            "from before model files recorded one)"
        )
    else:
        if meta_digest:
            what, older = "the metadata and tensor data match the digests", ""
        else:
            what = "the tensor data matches the digest"
            older = " (the metadata has no digest: written by an nhl from before one was recorded)"
        console.print(
            f"{shown(model_file)}: verified: {what} recorded at save time (sha256 {digest[:12]}...) "
            f"and the model loads{older}"
        )


def register(app: typer.Typer) -> None:
    app.command("cutout")(friendly_errors(cutout_command))
    app.command("profile")(friendly_errors(profile_command))
