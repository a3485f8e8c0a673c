"""``nhl train`` and ``nhl eval``: fit a nested (or flat) model and measure it."""

from __future__ import annotations

from dataclasses import replace
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
from nhlcli.errors import NhlError
from nhlcli.model import DEFAULT_VARIANT
from nhlcli.text import counted

BUILTIN_DEFAULT_TREE = {"fashion-mnist": "fashion-mnist-wordnet-l2", "emoji": "emoji-unicode-l3"}
BUILTIN_DEFAULT_SIZE = {"emoji": 32}  # drawn data: its own default size, not the backbone's 224


def _parse_crop_scale(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    bounds = parse_list(text, "--crop-scale", number, "0.5,1")
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1] <= 1:
        raise NhlError(f"--crop-scale {text!r}: give two numbers 0 < low <= high <= 1, such as 0.5,1")
    return bounds[0], bounds[1]


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


def _negative_split(split: int, backbone: str, in_chans: int | None) -> str:
    """Why ``--split -1`` is refused: stages count from 0, and a negative one (the library's "from
    the end") would silently cut somewhere else than a user counting from the start meant."""
    from nhlcli.model.trunk import create_timm_model

    try:  # the backbone's stages, to say the range (an error path: building it is cheap enough)
        stages = len(create_timm_model(backbone, in_chans or 3, False, None).feature_info)
        valid = f"{backbone} has stages 0 to {stages - 1}"
    except Exception:  # an unknown backbone is reported later, in its own words
        valid = "stages count from 0"
    return f"--split {split}: {valid}; give a stage number counted from 0, or leave it out (before the last)"


def _input_files(*specs: str | Path | None) -> list[Path]:
    """The given specs that name existing files or folders (a shipped tree's name names none)."""
    return [Path(s) for s in specs if s and Path(s).exists()]


RUN_OPTIONS = {
    "data": str, "backbone": str, "variant": str, "split": int, "widths": str, "blocks": int,
    "input_size": int, "in_chans": int, "classes": str, "freeze_trunk": bool,
}  # fmt: skip


def _run_options(ckdir: Path) -> dict[str, Any]:
    """The model options and the tree of the run checkpointed in ``ckdir``, for ``--resume`` to take
    where left out (the help promises it); refuses a hand-edited record that does not read."""
    from nhlcli.taxonomy import Tree
    from nhlcli.training.checkpoint import read_sidecar

    sidecar = read_sidecar(ckdir)
    if sidecar is None:
        raise NhlError(f"no checkpoint in {ckdir} to resume from; start without --resume")
    stored = sidecar["extra"].get("options", {})
    run: dict[str, Any] = {}
    for key, kind in RUN_OPTIONS.items():
        value = stored.get(key)
        if value is not None and (not isinstance(value, kind) or kind is int and isinstance(value, bool)):
            raise NhlError(
                f"the checkpoint in {ckdir} is damaged: its option {key!r} is {value!r}; --resume cannot "
                "continue it (delete the directory, or pass --overwrite to start over)"
            )
        run[key] = value
    tree = sidecar["model"].get("tree")
    if tree is not None:
        run["tree"] = Tree.from_dict(tree)
    return run


def train_command(
    data: str | None = typer.Option(
        None,
        "--data",
        "-d",
        help="An ImageFolder directory (train/ and val/ inside), fashion-mnist, or emoji (Unicode's "
        "1,861 emoji, drawn on the fly) [default: fashion-mnist].",
        show_default=False,
    ),
    hierarchy: str | None = typer.Option(
        None,
        "--hierarchy",
        "-t",
        help="Tree file or shipped tree name (default for fashion-mnist: its WordNet tree; for emoji: "
        "Unicode's emoji-unicode-l3).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the model (.safetensors)."),
    backbone: str | None = typer.Option(
        None, "--backbone", "-b", help="Any timm CNN with stages, e.g. resnet50 [default: resnet18]."
    ),
    variant: str | None = typer.Option(
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
        help="Train on these classes only (the tree is cut to them and images of other classes are left "
        "out; paper 003's subset baselines): " + CLASSES_HELP,
    ),
    holdout: float | None = typer.Option(
        None,
        "--holdout",
        help="Validate on this stratified fraction of the training images (e.g. 0.1; the rest trains) "
        "instead of the val or test split, to choose a recipe without looking at the test set.",
    ),
    freeze_trunk: bool = typer.Option(
        False,
        "--freeze-trunk",
        help="Keep the trunk fixed; train the branches only (flat: the last stage and the classifier; "
        "flat-trunk: the classifier).",
    ),
    split: int | None = typer.Option(
        None, "--split", help="Trunk stage to branch after (default: before the last)."
    ),
    widths: str | None = typer.Option(
        None,
        "--widths",
        help="Branch width per level, e.g. 128,64,32 (nhl-scale: per level above the leaves, e.g. 128,64).",
    ),
    blocks: int | None = typer.Option(
        None, "--blocks", help="Bottleneck blocks per branch node [default: 1]."
    ),
    input_size: int | None = typer.Option(
        None, "--input-size", help="Image side in pixels (default: the backbone's; 32 for emoji)."
    ),
    in_chans: int | None = typer.Option(
        None, "--in-chans", help="Input channels (default 1 for fashion-mnist, else 3)."
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", "-e", help="Passes over the training data [default: 10]."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Images per step (per process under torchrun) [default: 64]."
    ),
    lr: float | None = typer.Option(
        None, "--lr", help="Peak learning rate (cosine schedule after warmup) [default: 0.001]."
    ),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay [default: 0.05]."),
    optimizer: str | None = typer.Option(
        None, "--optimizer", help="adamw | sgd (any timm optimizer name) [default: adamw]."
    ),
    warmup_epochs: float | None = typer.Option(
        None, "--warmup-epochs", help="Linear warmup length in epochs [default: 1]."
    ),
    label_smoothing: float | None = typer.Option(
        None, "--label-smoothing", help="Label smoothing, 0-1 [default: 0]."
    ),
    augment: str | None = typer.Option(
        None,
        "--augment",
        help="timm RandAugment config (e.g. rand-m9-mstd0.5, the paper's), or 'none' "
        "[default: chosen from the input size and the number of images, and printed].",
    ),
    crop_scale: str | None = typer.Option(
        None,
        "--crop-scale",
        help="Random-resized-crop area range, e.g. 0.5,1 [default: chosen with --augment; ImageNet's 0.08,1 "
        "for large images].",
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Random seed (weights, data order, augmentation) [default: 0]."
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Data loading processes [default: from the cores and the dataset; 0 where a worker would "
        "compete with training for the cores].",
    ),
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
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the checkpointed run with its recipe (options left out are taken from it; "
        "--epochs, --workers, --device, --no-amp may change, the recipe may not).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Start afresh even where an unfinished run's checkpoint would be discarded.",
    ),
    skip_bad_images: bool = typer.Option(
        False,
        "--skip-bad-images",
        help="Leave out images that cannot be decoded (counted and named at the end) instead of stopping.",
    ),
    max_steps: int | None = typer.Option(
        None, "--max-steps-per-epoch", help="Cut epochs short (smoke tests)."
    ),
    tensorboard: Path | None = typer.Option(
        None,
        "--tensorboard",
        metavar="DIR",
        help="Also write each epoch's losses, accuracies and learning rate as TensorBoard events in DIR "
        "(view with: tensorboard --logdir DIR; needs pip install tensorboard).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary at the end."),
) -> None:
    """Train an NHL model (or a flat baseline) on a dataset and a category tree.

    Every epoch ends in a checkpoint (OUTPUT.ckpt) and a row of OUTPUT.ckpt/summary.csv (loss,
    top-1, top-5, learning rate; draw it with nhl plot-log); Ctrl-C stops at once and --resume
    continues from the last whole epoch.
    """
    from nhlcli.data import default_augmentation, default_workers, training_image_count
    from nhlcli.model.nhl import BranchConfig, with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.paths import check_distinct_outputs, check_output_dir, check_output_file
    from nhlcli.training.loop import (
        check_fresh_start,
        check_outputs,
        checkpoint_dir_for,
        option_name,
        resolve_config,
        train,
    )

    if tensorboard is not None:
        from nhlcli.training.log import require_tensorboard

        require_tensorboard()  # refused before any work or any file
    ckdir = checkpoint_dir_for(output, checkpoint_dir)
    stored_tree = None
    if resume:  # options left out are the run's: its data, model shape and tree
        run = _run_options(ckdir)
        stored_tree = None if hierarchy is not None else run.pop("tree", None)
        data = data if data is not None else run.get("data")
        backbone = backbone if backbone is not None else run.get("backbone")
        variant = variant if variant is not None or flat else run.get("variant")
        split = split if split is not None else run.get("split")
        widths = widths if widths is not None else run.get("widths")
        blocks = blocks if blocks is not None else run.get("blocks")
        input_size = input_size if input_size is not None else run.get("input_size")
        in_chans = in_chans if in_chans is not None else run.get("in_chans")
        classes = classes if classes is not None else run.get("classes")
        freeze_trunk = freeze_trunk or bool(run.get("freeze_trunk"))
        pretrained, pretrained_file = False, None  # the checkpoint holds the weights
    data = "fashion-mnist" if data is None else data
    backbone = backbone or "resnet18"
    inputs = _input_files(
        hierarchy, pretrained_file, data, classes[1:] if classes and classes[0] == "@" else None
    )
    check_outputs(output, ckdir, data, tensorboard)
    check_output_file(output, inputs, label="--output")
    check_output_dir(ckdir, inputs, label="--checkpoint-dir")
    check_output_dir(tensorboard, inputs, label="--tensorboard")
    check_distinct_outputs({"--output": output, "--checkpoint-dir": ckdir, "--tensorboard": tensorboard})
    check_fresh_start(ckdir, resume, overwrite)
    if flat and variant not in (None, "flat"):
        raise NhlError(f"--flat trains the plain classifier, not --variant {variant}; give one of the two")
    variant = "flat" if flat else variant or DEFAULT_VARIANT
    flat_shape = variant in ("flat", "flat-trunk")
    if variant == "flat" and split is not None and not freeze_trunk:
        raise NhlError(
            "--split does not cut a --flat model (it keeps every stage); use --variant flat-trunk for the "
            "plain classifier on a trunk cut at --split, or add --freeze-trunk to freeze the stages up to it"
        )
    if flat_shape and (widths is not None or blocks not in (None, 1)):
        raise NhlError(f"--widths and --blocks shape NHL branches; a {variant} model has none")
    if split is not None and split < 0:
        raise NhlError(_negative_split(split, backbone, in_chans))
    tree = _tree_for(hierarchy, data, flat_shape) if stored_tree is None else stored_tree
    selection = tuple(parse_names(classes)) if classes is not None else None
    from nhlcli.distributed import is_main_process

    # under torchrun every rank runs this command: rank 0 alone speaks, in text or JSON
    speaks = is_main_process()
    say = (lambda text: None) if as_json or not speaks else (lambda text: console.print(shown(text)))
    if classes is not None and stored_tree is None:  # a checkpoint's tree is already cut
        chosen = tree.select(selection)
        for note in chosen.notes(tree):
            say(note)
        tree = chosen.subtree(tree)
    chans = (1 if data == "fashion-mnist" else 3) if in_chans is None else in_chans
    from nhlcli.training.loop import TrainConfig, seed_everything

    if freeze_trunk and not resume and not (pretrained or pretrained_file):
        raise NhlError(
            "--freeze-trunk keeps the trunk's starting weights, and without --pretrained or "
            "--pretrained-file they are random; add one of them, or drop --freeze-trunk"
        )
    # before the model is built: its initial weights are the first draw (a resume restores them)
    seed_everything(TrainConfig.seed if seed is None else seed)
    model = create_model(
        tree,
        variant,
        TrunkConfig(backbone, split, chans),
        BranchConfig(tuple(parse_list(widths or "", "--widths", whole_number, "128,64,32")), blocks or 1)
        if not flat_shape
        else None,
        pretrained=pretrained,
        pretrained_file=pretrained_file,
    )
    input_size = BUILTIN_DEFAULT_SIZE.get(data) if input_size is None else input_size
    if input_size is not None:
        model.input_config = with_input_size(model.input_config, input_size)
    if freeze_trunk:
        if variant == "flat":
            model.freeze_trunk(split)  # the layers an NHL trunk holds; the last stage and head train
        else:
            model.trunk.freeze()
    given = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, seed=seed, workers=workers,
        augment=None if augment is None else ("" if augment == "none" else augment),
        crop_scale=_parse_crop_scale(crop_scale), amp=False if no_amp else None, device=device,
        max_steps_per_epoch=max_steps, classes=selection, skip_bad_images=skip_bad_images or None,
        holdout=holdout,
    )  # fmt: skip
    pretrained_load = getattr(model, "pretrained_load", None)
    if pretrained_load is not None:
        say(pretrained_load.describe())
    if not resume:
        if augment is None or crop_scale is None:
            side = model.input_config.size[-1]
            choice = default_augmentation(side, training_image_count(data))
            if augment is None:
                given["augment"] = choice.augment or ""
            if crop_scale is None:
                given["crop_scale"] = choice.crop_scale
            say(f"augmentation: {choice.reason} (--augment and --crop-scale to choose)")
        if workers is None:
            given["workers"] = default_workers(data)
        if selection is None:
            given["classes"] = ()
    config = resolve_config(given, ckdir if resume else None)
    config = replace(config, augment=config.augment or None)
    result = train(
        model, data, output, config, checkpoint_dir=ckdir, resume=resume, overwrite=overwrite,
        tensorboard=tensorboard, options=dict(
            data=str(Path(data).resolve()) if Path(data).is_dir() else data, backbone=backbone,
            variant=variant, split=split, widths=widths, blocks=blocks, input_size=input_size,
            in_chans=in_chans, classes=classes, freeze_trunk=freeze_trunk,
        ),
        progress=None if as_json else TrainingBar(),
    )  # fmt: skip
    for key, (before, now) in result.resumed_changes.items():
        say(f"resumed with {option_name(key)} {now} (the run had {before})")
    if result.precision_note:
        say(result.precision_note)
    if result.bad_images:
        listed = ", ".join(result.bad_images[:5]) + (" ..." if len(result.bad_images) > 5 else "")
        say(f"left out {counted(len(result.bad_images), 'image')} that could not be read: {listed}")
    if result.interrupted:
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
        raise typer.Exit(130)
    from nhlcli.data.datasets import split_name

    if not speaks:  # under torchrun rank 0 wrote the file and says so, once
        return
    if as_json:
        summary = result.summary()
        summary["pretrained"] = pretrained_load.to_dict() if pretrained_load is not None else None
        print_json(summary)
        return
    if result.already_done:
        console.print(
            f"the run in {result.checkpoint_dir} had already finished its "
            f"{counted(result.epochs_done, 'epoch')}; wrote [bold]{escape(str(output))}[/] from its "
            "last checkpoint"
        )
        return
    last = result.history[-1]
    scored_on = split_name(data, "val", config.holdout)
    console.print(
        f"wrote [bold]{escape(str(output))}[/]: {scored_on} top-1 {last.val_top1:.2%}, "
        f"top-5 {last.val_top5:.2%} after {counted(result.epochs_done, 'epoch')}"
    )


ROUTE_HELP = "Gated NHL files: run just the branches of each image's K likeliest super-categories."
PART_HELP = "Use only part i of k of the split (fixed shuffle), e.g. 2/2 when thresholds were tuned on 1/2."


def eval_command(
    model_file: Path = typer.Argument(..., help="An nhl model file (.safetensors)."),
    data: str = typer.Option(
        "fashion-mnist", "--data", "-d", help="ImageFolder directory, fashion-mnist or emoji."
    ),
    split: str = typer.Option("val", "--split", help="val (or test data) | train."),
    classes: str | None = typer.Option(
        None,
        "--classes",
        "-c",
        help="Only these classes, softmax over them: " + CLASSES_HELP,
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per batch."),
    workers: int | None = typer.Option(
        None, "--workers", help="Data loading processes [default: from the cores and the dataset]."
    ),
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
    holdout: float | None = typer.Option(None, "--holdout", metavar="FRACTION", help=HOLDOUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Top-1, top-5 and per-class accuracy of a model file on a dataset.

    For a gated file (nhl gates): top-1, average GMACs per image, where images left the network,
    and measured throughput against the ungated model on the same batches.
    """
    from nhlcli.cli.common import ImageProgress
    from nhlcli.cli.gates import gated_report_table
    from nhlcli.data import default_workers
    from nhlcli.evaluation import attention_curve_file, describe_attention, evaluate_file

    if workers is None:
        workers = default_workers(data)
    elif workers < 0:
        raise NhlError(f"--workers must be 0 or more, got {workers}")
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
            if pairs or route_top_k is not None:
                raise NhlError("several --attend-truth scales go without --attend and --route-top-k")
            report = attention_curve_file(model_file, data, scales, **common)
        else:
            truth = scales[0] if scales else None
            report = evaluate_file(
                model_file, data, attend=pairs, attend_truth=truth, route_top_k=route_top_k, **common
            )
    if as_json:
        print_json(report)
        return
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
