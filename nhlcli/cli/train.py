"""``nhl train`` and ``nhl eval``: fit a nested (or flat) model and measure it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from nhlcli.cli.common import console, friendly_errors, print_json
from nhlcli.cli.predict import ATTEND_HELP, ATTEND_LEVEL_HELP
from nhlcli.errors import NhlError

BUILTIN_DEFAULT_TREE = {"fashion-mnist": "fashion-mnist-wordnet-l2"}


def _parse_ints(text: str | None, what: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise NhlError(f"{what} {text!r}: give whole numbers separated by commas") from exc


def _parse_scale(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise NhlError(f"--crop-scale {text!r}: give two numbers such as 0.5,1") from exc
    if not 0 < low <= high <= 1:
        raise NhlError(f"--crop-scale {text!r}: need 0 < low <= high <= 1")
    return low, high


def _tree_for(hierarchy: str | None, data: str, flat: bool):
    from nhlcli.data import open_dataset
    from nhlcli.taxonomy import resolve_tree
    from nhlcli.taxonomy.sources import build_flat_tree

    if hierarchy:
        return resolve_tree(hierarchy)
    if data in BUILTIN_DEFAULT_TREE:
        return resolve_tree(BUILTIN_DEFAULT_TREE[data])
    if flat:
        return build_flat_tree(open_dataset(data, "train").classes, name=f"{Path(data).name}-flat")
    raise NhlError(
        "give --hierarchy TREE (build one with 'nhl hierarchy build --classes DATA'), "
        "or --flat for a plain model"
    )


def train_command(
    data: str = typer.Option(
        "fashion-mnist",
        "--data",
        "-d",
        help="An ImageFolder directory (train/ and val/ inside) or fashion-mnist.",
    ),
    hierarchy: str | None = typer.Option(
        None,
        "--hierarchy",
        "-t",
        help="Tree file or shipped tree name (default for fashion-mnist: its WordNet tree).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the model (.safetensors)."),
    backbone: str = typer.Option(
        "resnet18", "--backbone", "-b", help="Any timm CNN with stages, e.g. resnet50."
    ),
    variant: str = typer.Option(
        "nhl", "--variant", help="nhl | phl-small | phl-big | phl-latesp | phl-1branch | flat."
    ),
    flat: bool = typer.Option(
        False, "--flat", help="Train the plain timm classifier (baseline), same file format."
    ),
    pretrained: bool = typer.Option(
        False, "--pretrained", help="Start the trunk from timm's pretrained weights."
    ),
    pretrained_file: Path | None = typer.Option(
        None, "--pretrained-file", help="Start the trunk from a local .safetensors file of timm weights."
    ),
    classes: str | None = typer.Option(
        None,
        "--classes",
        "-c",
        help="Train on these classes only (names, ids, groups or @file): the tree is cut to them "
        "and images of other classes are left out (paper 003's subset baselines).",
    ),
    freeze_trunk: bool = typer.Option(
        False,
        "--freeze-trunk",
        help="Keep the trunk fixed; train the branches only (flat: the last stage and the classifier).",
    ),
    split: int | None = typer.Option(
        None, "--split", help="Trunk stage to branch after (default: before the last)."
    ),
    widths: str | None = typer.Option(None, "--widths", help="Branch width per level, e.g. 128,64,32."),
    blocks: int = typer.Option(1, "--blocks", help="Bottleneck blocks per branch node."),
    input_size: int | None = typer.Option(
        None, "--input-size", help="Image side in pixels (default: backbone's)."
    ),
    in_chans: int | None = typer.Option(
        None, "--in-chans", help="Input channels (default 1 for fashion-mnist, else 3)."
    ),
    epochs: int = typer.Option(10, "--epochs", "-e", help="Passes over the training data."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per step (per process under torchrun)."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (cosine schedule after warmup)."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", help="Weight decay."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | sgd (any timm optimizer name)."),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", help="Linear warmup length in epochs."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", help="Label smoothing, 0-1."),
    augment: str = typer.Option(
        "rand-m9-mstd0.5", "--augment", help="timm RandAugment config, or 'none' (paper: RandAugment)."
    ),
    crop_scale: str | None = typer.Option(
        None, "--crop-scale", help="Random-resized-crop area range, e.g. 0.5,1 (timm default 0.08,1)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights, data order, augmentation)."),
    workers: int = typer.Option(2, "--workers", help="Data loading processes."),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."
    ),
    no_amp: bool = typer.Option(
        False,
        "--no-amp",
        help="Train in float32 (default: mixed precision on GPU, bfloat16 on CPUs with native bf16).",
    ),
    checkpoint_dir: Path | None = typer.Option(
        None, "--checkpoint-dir", help="Where epoch checkpoints go (default: OUTPUT.ckpt)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    max_steps: int | None = typer.Option(
        None, "--max-steps-per-epoch", help="Cut epochs short (smoke tests)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary at the end."),
) -> None:
    """Train an NHL model (or a flat baseline) on a dataset and a category tree."""
    from nhlcli.evaluation import split_labels
    from nhlcli.experts.cutout import select_classes
    from nhlcli.model.nhl import BranchConfig, with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.training.loop import TrainConfig, train

    if flat:
        variant = "flat"
    tree = _tree_for(hierarchy, data, variant == "flat")
    selection = tuple(split_labels(classes))
    if classes is not None:
        tree = select_classes(tree, selection)
    chans = in_chans or (1 if data == "fashion-mnist" else 3)
    model = create_model(
        tree,
        variant,
        TrunkConfig(backbone, split, chans),
        BranchConfig(_parse_ints(widths, "--widths"), blocks) if variant != "flat" else None,
        pretrained=pretrained,
        pretrained_file=pretrained_file,
    )
    if input_size:
        model.input_config = with_input_size(model.input_config, input_size)
    if freeze_trunk:
        if variant == "flat":
            model.freeze_trunk(split)  # the layers an NHL trunk holds; the last stage and head train
        else:
            model.trunk.freeze()
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        seed=seed,
        workers=workers,
        augment=None if augment == "none" else augment,
        crop_scale=_parse_scale(crop_scale),
        amp=not no_amp,
        device=device,
        max_steps_per_epoch=max_steps,
        classes=selection,
    )
    result = train(
        model, data, output, config, checkpoint_dir=checkpoint_dir, resume=resume, progress=not as_json
    )
    if result.interrupted:
        console.print(
            f"interrupted after {result.epochs_done} epoch(s); checkpoint in {result.checkpoint_dir}; "
            "continue with the same command and --resume"
        )
        raise typer.Exit(130)
    if as_json:
        print_json(result.summary())
    else:
        last = result.history[-1]
        console.print(
            f"wrote [bold]{output}[/]: val top-1 {last.val_top1:.2%}, top-5 {last.val_top5:.2%} after "
            f"{result.epochs_done} epochs"
        )


ROUTE_HELP = "Gated NHL files: run just the branches of each image's K likeliest super-categories."
PART_HELP = "Use only part i of k of the split (fixed shuffle), e.g. 2/2 when thresholds were tuned on 1/2."


def eval_command(
    model_file: Path = typer.Argument(..., help="An nhl model file (.safetensors)."),
    data: str = typer.Option("fashion-mnist", "--data", "-d", help="ImageFolder directory or fashion-mnist."),
    split: str = typer.Option("val", "--split", help="val (or test data) | train."),
    classes: str | None = typer.Option(
        None,
        "--classes",
        "-c",
        help="Only these classes (names, ids or groups, comma-separated): softmax over them.",
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per batch."),
    workers: int = typer.Option(2, "--workers", help="Data loading processes."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: cuda if available)."),
    attend: list[str] | None = typer.Option(None, "--attend", metavar="CLASS=SCALE", help=ATTEND_HELP),
    attend_level: str | None = typer.Option(None, "--attend-level", metavar="N|path", help=ATTEND_LEVEL_HELP),
    attend_truth: str | None = typer.Option(
        None,
        "--attend-truth",
        metavar="SCALE[,SCALE...]",
        help="Scale each image's own class path by SCALE (paper 003's oracle test; not with --attend). "
        "Several scales, e.g. 0.5,1,2,5: the accuracy curve over them, in one pass over the data.",
    ),
    route_top_k: int | None = typer.Option(None, "--route-top-k", metavar="K", help=ROUTE_HELP),
    part: str | None = typer.Option(None, "--part", metavar="i/k", help=PART_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Top-1, top-5 and per-class accuracy of a model file on a dataset.

    For a gated file (nhl gates): top-1, average GMACs per image, where images left the network,
    and measured throughput against the ungated model on the same batches.
    """
    from nhlcli.cli.common import ImageProgress
    from nhlcli.cli.gates import gated_report_table
    from nhlcli.evaluation import attention_curve_file, describe_attention, evaluate_file, parse_scales

    scales = parse_scales(attend_truth) if attend_truth is not None else []
    with ImageProgress(not as_json) as progress:
        common = dict(
            split=split, classes=classes, batch_size=batch_size, workers=workers, device=device,
            attend_level=attend_level, part=part, progress=progress,
        )  # fmt: skip
        if len(scales) > 1:
            if attend or route_top_k is not None:
                raise NhlError("several --attend-truth scales go without --attend and --route-top-k")
            report = attention_curve_file(model_file, data, scales, **common)
        else:
            truth = scales[0] if scales else None
            report = evaluate_file(
                model_file, data, attend=attend, attend_truth=truth, route_top_k=route_top_k, **common
            )
    if as_json:
        print_json(report)
        return
    if "curve" in report:
        console.print(attention_curve_table(report, model_file.name, data))
        return
    if "exits" in report:
        console.print(gated_report_table(report))
        console.print(
            f"top-1 [bold]{report['top1']:.2%}[/]  {report['gmacs']:.4f} GMACs per image on average "
            f"(full network {report['full_gmacs']:.4f}, {report['gmacs_reduction_percent']:.1f}% fewer)  "
            f"{report['images_per_s']:.0f} img/s against {report['ungated_images_per_s']:.0f} ungated "
            f"(x{report['speedup']:.2f}, {report['threads']} threads)"
        )
        return
    table = Table(title=f"{model_file.name} on {data} ({split}, {report['images']} images)")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name, acc in report["per_class"].items():
        table.add_row(name, "-" if acc is None else f"{acc:.2%}")
    console.print(table)
    console.print(
        f"top-1 [bold]{report['top1']:.2%}[/]  top-{report['top5_k']} {report['top5']:.2%}  "
        f"loss {report['loss']:.4f}  over {report['num_classes']} classes"
    )
    if report["attention"]:
        console.print(f"attention: {escape(describe_attention(report['attention']))}")


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


def register(app: typer.Typer) -> None:
    app.command("train")(friendly_errors(train_command))
    app.command("eval")(friendly_errors(eval_command))
