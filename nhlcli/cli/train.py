"""``nhl train`` and ``nhl eval``: fit a nested (or flat) model and measure it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from nhlcli.cli.common import (
    CLASSES_HELP,
    HOLDOUT_HELP,
    TrainingBar,
    console,
    friendly_errors,
    number,
    parse_attend,
    parse_list,
    parse_names,
    print_json,
    shown,
    unique,
    whole_number,
)
from nhlcli.cli.predict import ATTEND_HELP, ATTEND_LEVEL_HELP
from nhlcli.errors import NhlError, with_flags
from nhlcli.model import DEFAULT_VARIANT
from nhlcli.text import counted


def _parse_crop_scale(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    bounds = parse_list(text, "--crop-scale", number, "0.5,1")
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1] <= 1:
        raise NhlError(f"--crop-scale {text!r}: give two numbers 0 < low <= high <= 1, such as 0.5,1")
    return bounds[0], bounds[1]


TRAIN_OPTIONS: dict[str, Any] = {
    "data": typer.Option(
        None,
        "--data",
        "-d",
        help="An ImageFolder directory (train/ and val/ inside), fashion-mnist, or emoji (Unicode's "
        "1,861 emoji, drawn on the fly) [default: fashion-mnist].",
        show_default=False,
    ),
    "hierarchy": typer.Option(
        None,
        "--hierarchy",
        "-t",
        help="Tree file or shipped tree name (default for fashion-mnist: its WordNet tree; for emoji: "
        "Unicode's emoji-unicode-l3).",
    ),
    "output": typer.Option(..., "-o", "--output", help="Where to write the model (.safetensors)."),
    "backbone": typer.Option(
        None, "--backbone", "-b", help="Any timm CNN with stages, e.g. resnet50 [default: resnet18]."
    ),
    "variant": typer.Option(
        None,
        "--variant",
        help=f"Model shape (default {DEFAULT_VARIANT}): nhl-scale (nhl-lean's levels above the leaves, "
        "each leaf one linear read of its parent's features: trains near the base network's speed "
        "at 1,861 classes) | nhl-lean (every level, leaves included, outputs the same channels, "
        "identity shortcuts; level 1 pools maps of 8 px or more) | nhl (the paper's shape: widths "
        "128/64/32, several times the base network's cost at 1000 classes) | phl-small | phl-big | "
        "phl-latesp | phl-1branch | flat | flat-trunk (the plain classifier on the NHL's trunk, cut "
        "at --split: the control for the stages an NHL drops).",
    ),
    "flat": typer.Option(
        False, "--flat", help="Train the plain timm classifier (baseline), same file format."
    ),
    "pretrained": typer.Option(False, "--pretrained", help="Start the trunk from timm's pretrained weights."),
    "pretrained_file": typer.Option(
        None, "--pretrained-file", help="Start the trunk from a local .safetensors file of timm weights."
    ),
    "classes": typer.Option(
        None,
        "--classes",
        "-c",
        help="Train on these classes only (the tree is cut to them and images of other classes are left "
        "out; paper 003's subset baselines): " + CLASSES_HELP,
    ),
    "holdout": typer.Option(
        None,
        "--holdout",
        help="Validate on this stratified fraction of the training images (e.g. 0.1; the rest trains) "
        "instead of the val or test split, to choose a recipe without looking at the test set.",
    ),
    "freeze_trunk": typer.Option(
        False,
        "--freeze-trunk",
        help="Keep the trunk fixed; train the branches only (flat: the last stage and the classifier; "
        "flat-trunk: the classifier).",
    ),
    "split": typer.Option(None, "--split", help="Trunk stage to branch after (default: before the last)."),
    "widths": typer.Option(
        None,
        "--widths",
        help="Branch width per level, e.g. 128,64,32 (nhl-scale: per level above the leaves, e.g. 128,64).",
    ),
    "blocks": typer.Option(None, "--blocks", help="Bottleneck blocks per branch node [default: 1]."),
    "input_size": typer.Option(
        None, "--input-size", help="Image side in pixels (default: the backbone's; 32 for emoji)."
    ),
    "in_chans": typer.Option(
        None, "--in-chans", help="Input channels (default 1 for fashion-mnist, else 3)."
    ),
    "epochs": typer.Option(None, "--epochs", "-e", help="Passes over the training data [default: 10]."),
    "batch_size": typer.Option(
        None, "--batch-size", help="Images per step (per process under torchrun) [default: 64]."
    ),
    "lr": typer.Option(
        None, "--lr", help="Peak learning rate (cosine schedule after warmup) [default: 0.001]."
    ),
    "weight_decay": typer.Option(None, "--weight-decay", help="Weight decay [default: 0.05]."),
    "optimizer": typer.Option(
        None, "--optimizer", help="adamw | sgd (any timm optimizer name) [default: adamw]."
    ),
    "warmup_epochs": typer.Option(
        None, "--warmup-epochs", help="Linear warmup length in epochs [default: 1]."
    ),
    "label_smoothing": typer.Option(None, "--label-smoothing", help="Label smoothing, 0-1 [default: 0]."),
    "augment": typer.Option(
        None,
        "--augment",
        help="timm RandAugment config (e.g. rand-m9-mstd0.5, the paper's), or 'none' "
        "[default: chosen from the input size and the number of images, and printed].",
    ),
    "crop_scale": typer.Option(
        None,
        "--crop-scale",
        help="Random-resized-crop area range, e.g. 0.5,1 [default: chosen with --augment; ImageNet's 0.08,1 "
        "for large images].",
    ),
    "seed": typer.Option(
        None, "--seed", help="Random seed (weights, data order, augmentation) [default: 0]."
    ),
    "workers": typer.Option(
        None,
        "--workers",
        help="Data loading processes [default: from the cores and the dataset; 0 where a worker would "
        "compete with training for the cores].",
    ),
    "device": typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."),
    "no_amp": typer.Option(
        False,
        "--no-amp",
        help="Train in float32 (default: mixed precision on GPU, bfloat16 on CPUs with native bf16).",
    ),
    "checkpoint_dir": typer.Option(
        None, "--checkpoint-dir", help="Where epoch checkpoints go (default: OUTPUT.ckpt)."
    ),
    "resume": typer.Option(
        False,
        "--resume",
        help="Continue the checkpointed run with its recipe (options left out are taken from it; "
        "--epochs, --workers, --device, --no-amp may change, the recipe may not).",
    ),
    "overwrite": typer.Option(
        False,
        "--overwrite",
        help="Start afresh even where an unfinished run's checkpoint would be discarded.",
    ),
    "skip_bad_images": typer.Option(
        False,
        "--skip-bad-images",
        help="Leave out images that cannot be decoded (counted and named at the end) instead of stopping.",
    ),
    "max_steps": typer.Option(None, "--max-steps-per-epoch", help="Cut epochs short (smoke tests)."),
    "tensorboard": typer.Option(
        None,
        "--tensorboard",
        metavar="DIR",
        help="Also write each epoch's losses, accuracies and learning rate as TensorBoard events in DIR "
        "(view with: tensorboard --logdir DIR; needs pip install tensorboard).",
    ),
    "as_json": typer.Option(False, "--json", help="Print a JSON summary at the end."),
}


def train_command(
    data: str | None = TRAIN_OPTIONS["data"],
    hierarchy: str | None = TRAIN_OPTIONS["hierarchy"],
    output: Path = TRAIN_OPTIONS["output"],
    backbone: str | None = TRAIN_OPTIONS["backbone"],
    variant: str | None = TRAIN_OPTIONS["variant"],
    flat: bool = TRAIN_OPTIONS["flat"],
    pretrained: bool = TRAIN_OPTIONS["pretrained"],
    pretrained_file: Path | None = TRAIN_OPTIONS["pretrained_file"],
    classes: str | None = TRAIN_OPTIONS["classes"],
    holdout: float | None = TRAIN_OPTIONS["holdout"],
    freeze_trunk: bool = TRAIN_OPTIONS["freeze_trunk"],
    split: int | None = TRAIN_OPTIONS["split"],
    widths: str | None = TRAIN_OPTIONS["widths"],
    blocks: int | None = TRAIN_OPTIONS["blocks"],
    input_size: int | None = TRAIN_OPTIONS["input_size"],
    in_chans: int | None = TRAIN_OPTIONS["in_chans"],
    epochs: int | None = TRAIN_OPTIONS["epochs"],
    batch_size: int | None = TRAIN_OPTIONS["batch_size"],
    lr: float | None = TRAIN_OPTIONS["lr"],
    weight_decay: float | None = TRAIN_OPTIONS["weight_decay"],
    optimizer: str | None = TRAIN_OPTIONS["optimizer"],
    warmup_epochs: float | None = TRAIN_OPTIONS["warmup_epochs"],
    label_smoothing: float | None = TRAIN_OPTIONS["label_smoothing"],
    augment: str | None = TRAIN_OPTIONS["augment"],
    crop_scale: str | None = TRAIN_OPTIONS["crop_scale"],
    seed: int | None = TRAIN_OPTIONS["seed"],
    workers: int | None = TRAIN_OPTIONS["workers"],
    device: str | None = TRAIN_OPTIONS["device"],
    no_amp: bool = TRAIN_OPTIONS["no_amp"],
    checkpoint_dir: Path | None = TRAIN_OPTIONS["checkpoint_dir"],
    resume: bool = TRAIN_OPTIONS["resume"],
    overwrite: bool = TRAIN_OPTIONS["overwrite"],
    skip_bad_images: bool = TRAIN_OPTIONS["skip_bad_images"],
    max_steps: int | None = TRAIN_OPTIONS["max_steps"],
    tensorboard: Path | None = TRAIN_OPTIONS["tensorboard"],
    as_json: bool = TRAIN_OPTIONS["as_json"],
) -> None:
    """Train an NHL model (or a flat baseline) on a dataset and a category tree.

    Every epoch ends in a checkpoint (OUTPUT.ckpt) and a row of OUTPUT.ckpt/summary.csv (loss,
    top-1, top-5, learning rate; draw it with nhl plot-log); Ctrl-C stops at once and --resume
    continues from the last whole epoch.
    """
    from nhlcli.distributed import is_main_process
    from nhlcli.training.run import TrainRequest, run_training

    speaks = is_main_process()  # under torchrun every rank runs this command: rank 0 alone speaks
    say = _speaker(not as_json and speaks)
    config = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, seed=seed, workers=workers,
        augment=None if augment is None else ("" if augment == "none" else augment),
        crop_scale=_parse_crop_scale(crop_scale), amp=False if no_amp else None, device=device,
        max_steps_per_epoch=max_steps, skip_bad_images=skip_bad_images or None, holdout=holdout,
    )  # fmt: skip
    request = TrainRequest(
        output, data=data, hierarchy=hierarchy, backbone=backbone, variant=variant, flat=flat,
        pretrained=pretrained, pretrained_file=pretrained_file, classes=_parse_classes(classes),
        freeze_trunk=freeze_trunk, split=split, widths=_parse_widths(widths), blocks=blocks,
        input_size=input_size, in_chans=in_chans, config=config, checkpoint_dir=checkpoint_dir,
        resume=resume, overwrite=overwrite, tensorboard=tensorboard,
        read_files=[classes[1:]] if classes and classes.startswith("@") else [],
    )  # fmt: skip
    run = run_training(request, progress=None if as_json else TrainingBar(), say=say)
    _report_training(run, output, say, as_json=as_json, speaks=speaks)


def _speaker(speaks: bool) -> Callable[[str], None]:
    """What the library says to the user, printed (its arguments as flags), or nothing."""
    if not speaks:
        return lambda text: None
    return lambda text: console.print(shown(with_flags(text)))


def _parse_classes(text: str | None) -> tuple[str, ...] | None:
    return tuple(parse_names(text)) if text is not None else None


def _parse_widths(text: str | None) -> tuple[int, ...] | None:
    return tuple(parse_list(text, "--widths", whole_number, "128,64,32")) if text is not None else None


def _report_training(
    run: Any, output: Path, say: Callable[[str], None], *, as_json: bool, speaks: bool
) -> None:
    """What ``nhl train`` prints at the end: the run's notes, then where the model went and how it
    scored (or the JSON summary); exit 130 after a Ctrl-C."""
    result = run.result
    for key, (before, now) in result.resumed_changes.items():
        say(f"resumed with {with_flags(f'`{key}`')} {now} (the run had {before})")
    if result.precision_note:
        say(result.precision_note)
    if result.bad_images:
        listed = ", ".join(result.bad_images[:5]) + (" ..." if len(result.bad_images) > 5 else "")
        say(f"left out {counted(len(result.bad_images), 'image')} that could not be read: {listed}")
    if result.interrupted:
        _say_interrupted(result)
        raise typer.Exit(130)
    if not speaks:  # under torchrun rank 0 wrote the file and says so, once
        return
    if as_json:
        print_json(run.summary())
    elif result.already_done:
        console.print(
            f"the run in {result.checkpoint_dir} had already finished its "
            f"{counted(result.epochs_done, 'epoch')}; wrote [bold]{escape(str(output))}[/] from its "
            "last checkpoint"
        )
    else:
        last = result.history[-1]
        console.print(
            f"wrote [bold]{escape(str(output))}[/]: {run.scored_on} top-1 {last.val_top1:.2%}, "
            f"top-5 {last.val_top5:.2%} after {counted(result.epochs_done, 'epoch')}"
        )


def _say_interrupted(result: Any) -> None:
    """Where a Ctrl-C left the run, and whether ``--resume`` can continue it."""
    at = result.interrupted_at or {}
    kept = (
        f"the checkpoint in {result.checkpoint_dir} holds the end of epoch {result.epochs_done}; "
        "continue with the same command and --resume"
        if result.epochs_done
        else "no epoch had finished, so there is nothing to resume"
    )
    console.print(
        f"interrupted in epoch {at.get('epoch')} after {at.get('steps_done')} of {at.get('steps')} "
        f"steps; {kept}"
    )


ROUTE_HELP = "Gated NHL files: run just the branches of each image's K likeliest super-categories."
PART_HELP = "Use only part i of k of the split (fixed shuffle), e.g. 2/2 when thresholds were tuned on 1/2."


EVAL_OPTIONS: dict[str, Any] = {
    "model_file": typer.Argument(..., help="An nhl model file (.safetensors)."),
    "data": typer.Option(
        # the data registry's DEFAULT_DATASET (reading it needs torch; tests/test_architecture.py checks)
        "fashion-mnist", "--data", "-d", help="ImageFolder directory, fashion-mnist or emoji."
    ),
    "split": typer.Option("val", "--split", help="val (or test data) | train."),
    "classes": typer.Option(
        None,
        "--classes",
        "-c",
        help="Only these classes, softmax over them: " + CLASSES_HELP,
    ),
    "batch_size": typer.Option(64, "--batch-size", help="Images per batch."),
    "workers": typer.Option(
        None, "--workers", help="Data loading processes [default: from the cores and the dataset]."
    ),
    "device": typer.Option(None, "--device", help="cpu, cuda (default: cuda if available)."),
    "attend": typer.Option(None, "--attend", metavar="CLASS=SCALE", help=ATTEND_HELP),
    "attend_level": typer.Option(None, "--attend-level", metavar="N|path", help=ATTEND_LEVEL_HELP),
    "attend_truth": typer.Option(
        None,
        "--attend-truth",
        metavar="SCALE[,SCALE...]",
        help="Scale each image's own class path by SCALE (paper 003's oracle test; not with --attend). "
        "Several scales, e.g. 0.5,1,2,5: the accuracy curve over them, in one pass over the data.",
    ),
    "route_top_k": typer.Option(None, "--route-top-k", metavar="K", help=ROUTE_HELP),
    "part": typer.Option(None, "--part", metavar="i/k", help=PART_HELP),
    "holdout": typer.Option(None, "--holdout", metavar="FRACTION", help=HOLDOUT_HELP),
    "hierarchy": typer.Option(
        None,
        "--hierarchy",
        "-H",
        metavar="TREE.json",
        help="Measure the hierarchical metrics (per-level top-1, mistake severity, hierarchical "
        "distance, hF1; docs/metrics.md) on this tree [default: the tree in the model file]. Give the "
        "same tree to compare a flat model with a nested one.",
    ),
    "compare": typer.Option(
        None,
        "--compare",
        metavar="OTHER.safetensors",
        help="Evaluate a second model over the same classes on the same images and show both side by "
        "side, with the difference (other minus first) and its 95% paired-bootstrap interval.",
    ),
    "as_json": typer.Option(False, "--json", help="Print the results as JSON."),
}


def eval_command(
    model_file: Path = EVAL_OPTIONS["model_file"],
    data: str = EVAL_OPTIONS["data"],
    split: str = EVAL_OPTIONS["split"],
    classes: str | None = EVAL_OPTIONS["classes"],
    batch_size: int = EVAL_OPTIONS["batch_size"],
    workers: int | None = EVAL_OPTIONS["workers"],
    device: str | None = EVAL_OPTIONS["device"],
    attend: list[str] | None = EVAL_OPTIONS["attend"],
    attend_level: str | None = EVAL_OPTIONS["attend_level"],
    attend_truth: str | None = EVAL_OPTIONS["attend_truth"],
    route_top_k: int | None = EVAL_OPTIONS["route_top_k"],
    part: str | None = EVAL_OPTIONS["part"],
    holdout: float | None = EVAL_OPTIONS["holdout"],
    hierarchy: Path | None = EVAL_OPTIONS["hierarchy"],
    compare: Path | None = EVAL_OPTIONS["compare"],
    as_json: bool = EVAL_OPTIONS["as_json"],
) -> None:
    """Top-1, top-5, per-class accuracy, per-level top-1, mistake severity, hierarchical distance,
    hierarchical F1 and calibration error of a model file on a dataset.

    For a gated file (nhl gates): top-1, average GMACs per image, where images left the network,
    and measured throughput against the ungated model on the same batches. With --compare, two
    models side by side on the same images.
    """
    from nhlcli.cli.common import ImageProgress
    from nhlcli.data import default_workers

    if workers is None:
        workers = default_workers(data)
    elif workers < 0:
        raise NhlError(f"--workers must be 0 or more, got {workers}")
    if compare is not None:
        _refuse_with_compare(
            classes=classes, attend=attend, attend_level=attend_level, attend_truth=attend_truth,
            route_top_k=route_top_k, part=part,
        )  # fmt: skip
        _compare(model_file, compare, data, split, batch_size, workers, device, hierarchy, holdout, as_json)
        return
    from nhlcli.evaluation import attention_curve_file, evaluate_file

    scales = (
        unique(parse_list(attend_truth, "--attend-truth", number, "0.5,1,2"))
        if attend_truth is not None
        else []
    )
    pairs = parse_attend(attend)
    with ImageProgress(not as_json) as progress:
        common = dict(
            split=split, classes=parse_names(classes) or None, batch_size=batch_size, workers=workers,
            device=device,
            attend_level=attend_level, part=part, progress=progress, holdout=holdout,
        )  # fmt: skip
        if len(scales) > 1:
            if pairs or route_top_k is not None or hierarchy is not None:
                raise NhlError(
                    "several --attend-truth scales go without --attend, --route-top-k and --hierarchy"
                )
            report = attention_curve_file(model_file, data, scales, **common)
        else:
            truth = scales[0] if scales else None
            report = evaluate_file(
                model_file, data, attend=pairs, attend_truth=truth, route_top_k=route_top_k,
                hierarchy=hierarchy, **common,
            )  # fmt: skip
    if as_json:
        print_json(report)
    else:
        _print_eval_report(report, model_file, data)


def _print_eval_report(report: dict[str, Any], model_file: Path, data: str) -> None:
    """``nhl eval``'s report for people: the attention curve, the gated file's exits and
    throughput, or per-class accuracy and top-1/top-5."""
    from nhlcli.cli.gates import gated_report_table
    from nhlcli.evaluation import describe_attention

    if "curve" in report:
        console.print(attention_curve_table(report, shown(model_file.name), shown(data)))
        return
    if "exits" in report:
        console.print(gated_report_table(report))
        console.print(
            f"top-1 [bold]{report['top1']:.2%}[/] (ungated {report['ungated_top1']:.2%})  "
            f"{report['gmacs']:.4f} GMACs per image on average "
            f"(full network {report['full_gmacs']:.4f}, {report['gmacs_reduction_percent']:.1f}% fewer)  "
            f"{report['images_per_s']:.0f} img/s against {report['ungated_images_per_s']:.0f} ungated "
            f"(x{report['speedup']:.2f}, {report['threads']} threads)"
        )
        return
    table = Table(
        title=f"{shown(model_file.name)} on {shown(data)} ({report['split']}, {report['images']} images)"
    )
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name, acc in report["per_class"].items():
        table.add_row(shown(name), "-" if acc is None else f"{acc:.2%}")
    console.print(table)
    console.print(
        f"top-1 [bold]{report['top1']:.2%}[/]  top-{report['top5_k']} {report['top5']:.2%}  "
        f"loss {report['loss']:.4f}  over {counted(report['num_classes'], 'class')}"
    )
    if report["attention"]:
        console.print(f"attention: {escape(describe_attention(report['attention']))}")
    if "hierarchy" in report:
        console.print(hierarchy_lines(report["hierarchy"]))
    if "other" in report and "skipped" in report["other"]:
        console.print(f"other: not measured ({shown(report['other']['skipped'])})")
    elif "other" in report:
        other = report["other"]
        scores = "  ".join(f"{name} {value:.3f}" for name, value in other["auroc"].items())
        console.print(
            f"with other: top-1 {other['top1_mine_with_other']:.2%} on its {other['images_mine']} own "
            f"images, {other['rejected_mine']:.2%} of them sent to other; "
            f"{other['rejected_other']:.2%} of the {other['images_other']} images of other classes sent to "
            "other\n"
            f"own against other classes (AUROC): {scores}"
        )


def hierarchy_lines(metrics: dict[str, Any]) -> str:
    """The hierarchical metrics and calibration error for people, two lines."""
    levels = "  ".join(f"L{row['level']} {row['top1']:.2%}" for row in metrics["levels"])
    severity = metrics["mistake_severity"]
    return (
        f"per level: {levels}\n"
        f"{counted(metrics['mistakes'], 'mistake')}, mean LCA height "
        f"{'-' if severity is None else f'{severity:.3f}'} of {len(metrics['levels'])}  "
        f"hdist@1 {metrics['hdist_at_1']:.3f}  hdist@{metrics['hdist_k']} {metrics['hdist_at_k']:.3f}  "
        f"hF1 {metrics['hf1']:.2%}  ECE {metrics['ece']:.2%}"
    )


def _refuse_with_compare(**options: Any) -> None:
    """``--compare`` measures two whole models: options that restrict or steer one make no sense."""
    given = [name for name, value in options.items() if value]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise NhlError(f"{flag} does not go with --compare, which measures both whole models; drop one")


def _compare(
    model_file: Path, other: Path, data: str, split: str, batch_size: int, workers: int,
    device: str | None, hierarchy: Path | None, holdout: float | None, as_json: bool,
) -> None:  # fmt: skip
    from nhlcli.evaluation import compare_files

    report = compare_files(
        model_file, other, data, split=split, batch_size=batch_size, workers=workers, device=device,
        hierarchy=hierarchy, holdout=holdout,
    )  # fmt: skip
    if as_json:
        print_json(report)
        return
    console.print(compare_table(report, shown(model_file.name), shown(other.name), shown(data)))


COMPARED = (  # (report key, label, format)
    ("top1", "top-1", "{:.2%}"),
    ("top5", "top-5", "{:.2%}"),
    ("hdist_at_1", "hierarchical distance @1", "{:.4f}"),
    ("hdist_at_k", "hierarchical distance @{k}", "{:.4f}"),
    ("mistake_severity", "mistake severity (mean LCA height)", "{:.4f}"),
    ("hf1", "hierarchical F1", "{:.2%}"),
    ("ece", "expected calibration error", "{:.2%}"),
)


def compare_table(report: dict[str, Any], name_a: str, name_b: str, data: str) -> Table:
    """``nhl eval A --compare B`` for people: one row a metric, B minus A with its interval."""
    tree = report["tree"]
    table = Table(
        title=f"{name_a} against {name_b} on {data} ({report['split']}, {report['images']} images), "
        f"measured on the {tree['levels']}-level tree {shown(tree['name'] or '')}".rstrip()
    )
    for column in ("metric", name_a, name_b, f"{name_b} - {name_a} (95% interval)"):
        table.add_column(column, justify="right")
    for key, label, fmt in COMPARED:
        values = [_metric(report[side], key) for side in ("a", "b")]
        cells = ["-" if v is None else fmt.format(v) for v in values]
        difference = report["differences"].get(key)
        if difference is not None and difference["b_minus_a"] is not None:
            low, high = difference["ci95"]
            verdict = "" if difference["detectable"] else ", no detectable difference"
            delta = fmt.replace(":", ":+").format(difference["b_minus_a"])
            cells.append(f"{delta} [{fmt.format(low)}, {fmt.format(high)}]{verdict}")
        elif None not in values:
            cells.append(fmt.replace(":", ":+").format(values[1] - values[0]))
        else:
            cells.append("-")
        table.add_row(label.format(k=report["a"]["hierarchy"]["hdist_k"]), *cells)
    return table


def _metric(report: dict[str, Any], key: str) -> float | None:
    return report[key] if key in report else report["hierarchy"][key]


def attention_curve_table(report: dict[str, Any], name: str, data: str) -> Table:
    """``nhl eval --attend-truth A,B,...`` for people: one row a scale, the best marked."""
    attention = report["attention"]
    where = (
        "on every level of the path" if attention["level"] == "path" else f"at level {attention['levels'][0]}"
    )
    table = Table(
        title=f"{name} on {data} ({report['split']}, {report['images']} images): each image's own "
        f"class scaled {where}"
    )
    for column in ("scale", "top-1", "top-5", "loss"):
        table.add_column(column, justify="right")
    for point in report["curve"]:
        best = point["scale"] == report["best_scale"]
        table.add_row(
            f"x{point['scale']:g}" + (" (best)" if best else ""),
            f"{point['top1']:.2%}",
            f"{point['top5']:.2%}",
            f"{point['loss']:.4f}",
        )
    return table


def plot_log_command(
    log: Path = typer.Argument(
        ...,
        metavar="LOG.csv",
        help="A training log: the summary.csv that nhl train writes in its checkpoint directory "
        "(OUTPUT.ckpt/summary.csv); timm's summary.csv works too.",
        show_default=False,
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Where to write the picture (.png).", show_default=False
    ),
) -> None:
    """Draw a training run's curves as a PNG: loss (training and validation) and validation top-1
    against epoch.

    nhl train adds a row to OUTPUT.ckpt/summary.csv after every epoch, so this works during a run as
    well as after it, e.g. nhl plot-log model.safetensors.ckpt/summary.csv -o curves.png
    """
    from nhlcli.paths import check_output_file
    from nhlcli.training.log import plot_summary

    if output.suffix.lower() != ".png":
        raise NhlError(f"{output} does not end in .png; this command writes PNG pictures", "output")
    check_output_file(output, [log], label="--output")
    written = plot_summary(log, output)
    console.print(f"wrote [bold]{escape(str(written))}[/]")


def register(app: typer.Typer) -> None:
    app.command("train")(friendly_errors(train_command))
    app.command("eval")(friendly_errors(eval_command))
    app.command("plot-log")(friendly_errors(plot_log_command))
