"""One training run from a request: what ``nhl train`` does, as a library call a notebook makes.

:class:`TrainRequest` holds what a user chooses (the data, the tree, the model's shape, the
recipe, where the files go); :func:`run_training` fills in what is left out from the data set's
spec (:mod:`nhlcli.data.registry`: channels, input size, default tree), the variant (its model
class says which options apply) and, resuming, the checkpointed run; builds the model and
trains it with :func:`nhlcli.training.loop.train`. Problems are one-line :class:`NhlError`\\ s
naming the argument at fault.

    from nhlcli.training.run import TrainRequest, run_training
    run = run_training(TrainRequest("m.safetensors", data="fashion-mnist", config={"epochs": 2}))
    print(run.scored_on, run.result.history[-1].val_top1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nhlcli.data.datasets import split_name
from nhlcli.data.registry import DEFAULT_DATASET, dataset_spec, registered_dataset
from nhlcli.errors import NhlError
from nhlcli.model.contract import NhlModel
from nhlcli.progress import TrainingProgress
from nhlcli.taxonomy.tree import Tree
from nhlcli.training.loop import TrainConfig, TrainResult

DEFAULT_BACKBONE = "resnet18"


@dataclass
class TrainRequest:
    """A training run as asked for; ``None`` leaves a choice to the data, the variant or the
    checkpointed run (``resume``).

    ``hierarchy``: a tree, a tree file or a shipped tree's name (default: the data set's default
    tree; a flat model on a folder gets a flat tree over its classes). ``classes``: train on
    these classes only (the tree is cut to them). ``variant``/``flat``: the model's shape;
    ``widths`` and ``blocks`` shape NHL branches. ``config``: :class:`TrainConfig` fields chosen
    (``None`` values are left out; ``augment=""`` is none, ``None`` picks one from the input
    size and the number of images, and says why). ``read_files``: other files the request was
    read from (a class list), which no output may replace.
    """

    output: str | Path
    data: str | Path | None = None
    hierarchy: str | Path | Tree | None = None
    backbone: str | None = None
    variant: str | None = None
    flat: bool = False
    pretrained: bool = False
    pretrained_file: str | Path | None = None
    classes: Sequence[str] | None = None
    freeze_trunk: bool = False
    split: int | None = None
    widths: Sequence[int] | None = None
    blocks: int | None = None
    input_size: int | None = None
    in_chans: int | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_dir: str | Path | None = None
    resume: bool = False
    overwrite: bool = False
    tensorboard: str | Path | None = None
    read_files: Sequence[str | Path] = ()


@dataclass
class TrainRun:
    """What a run gave: the loop's :class:`TrainResult`, the config it trained with, what a
    pretrained file loaded (``None`` without one), and what the last validation was scored on."""

    result: TrainResult
    config: TrainConfig
    pretrained: Any
    scored_on: str

    def summary(self) -> dict[str, Any]:
        """The run as JSON (what ``nhl train --json`` prints)."""
        summary = self.result.summary()
        summary["pretrained"] = self.pretrained.to_dict() if self.pretrained is not None else None
        return summary


# The model options a checkpoint records (the command's, as given), and their types.
RUN_OPTIONS = {
    "data": str, "backbone": str, "variant": str, "split": int, "widths": str, "blocks": int,
    "input_size": int, "in_chans": int, "classes": (str, list), "freeze_trunk": bool,
}  # fmt: skip


def run_training(
    request: TrainRequest,
    progress: TrainingProgress | None = None,
    say: Callable[[str], None] | None = None,
) -> TrainRun:
    """Build the model ``request`` asks for and train it (see :class:`TrainRequest`).

    ``progress`` follows the epochs and steps (``None``: silent); ``say`` (``None``: silent) gets
    the choices made for the user (the augmentation picked, what a pretrained file loaded, which
    asked-for classes the tree holds), with arguments in backticks. Every check that needs no
    data runs before anything is written.
    """
    from nhlcli.training.log import require_tensorboard
    from nhlcli.training.loop import checkpoint_dir_for, seed_everything, train

    say = say or (lambda text: None)
    if request.tensorboard is not None:
        require_tensorboard()  # refused before any work or any file
    ckdir = checkpoint_dir_for(request.output, request.checkpoint_dir)
    request, stored_tree = _with_run_options(request, ckdir) if request.resume else (request, None)
    data = DEFAULT_DATASET if request.data is None else request.data
    _check_outputs(request, ckdir, data)
    variant, model_class = _check_shape(request)
    tree = stored_tree if stored_tree is not None else _run_tree(request, data, model_class, say)
    seed = request.config.get("seed")
    # before the model is built: its initial weights are the first draw (a resume restores them)
    seed_everything(TrainConfig.seed if seed is None else seed)
    model, options = _build_model(request, data, tree, variant)
    if model.pretrained_load is not None:
        say(model.pretrained_load.describe())
    config = _run_config(request, model, data, ckdir, say)
    result = train(
        model, data, request.output, config, checkpoint_dir=ckdir, resume=request.resume,
        overwrite=request.overwrite, tensorboard=request.tensorboard, options=options, progress=progress,
    )  # fmt: skip
    return TrainRun(result, config, model.pretrained_load, split_name(data, "val", config.holdout))


def stored_run_options(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The model options and the tree (``"tree"``) of the run checkpointed in ``checkpoint_dir``,
    for a resume to take where left out; refuses a hand-edited record that does not read."""
    from nhlcli.training.checkpoint import read_sidecar

    sidecar = read_sidecar(Path(checkpoint_dir))
    if sidecar is None:
        raise NhlError(f"no checkpoint in {checkpoint_dir} to resume from; start without `resume`")
    stored = sidecar["extra"].get("options", {})
    run: dict[str, Any] = {}
    for key, kind in RUN_OPTIONS.items():
        value = stored.get(key)
        if value is not None and (not isinstance(value, kind) or kind is int and isinstance(value, bool)):
            raise _damaged(checkpoint_dir, f"its option {key!r} is {value!r}")
        run[key] = value
    run["widths"] = _stored_widths(run["widths"], checkpoint_dir)
    # the selection as the run's config holds it, parsed when the run began
    run["classes"] = tuple(sidecar["extra"].get("config", {}).get("classes") or ()) or None
    tree = sidecar["model"].get("tree")
    if tree is not None:
        run["tree"] = Tree.from_dict(tree)
    return run


def _damaged(checkpoint_dir: str | Path, problem: str) -> NhlError:
    return NhlError(
        f"the checkpoint in {checkpoint_dir} is damaged: {problem}; `resume` cannot continue it "
        "(delete the directory, or pass `overwrite` to start over)"
    )


def _stored_widths(text: str | None, checkpoint_dir: str | Path) -> tuple[int, ...] | None:
    """The branch widths a checkpoint records as the command gave them (``"128,64"``)."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise _damaged(checkpoint_dir, f"its option 'widths' is {text!r}") from None


def _with_run_options(request: TrainRequest, ckdir: Path) -> tuple[TrainRequest, Tree | None]:
    """``request`` with what it leaves out taken from the checkpointed run: its data, model shape
    and tree (a given ``hierarchy`` replaces the tree); the checkpoint holds the weights, so no
    pretrained file is read."""
    run = stored_run_options(ckdir)
    stored_tree = run.pop("tree", None)
    if request.hierarchy is not None:
        stored_tree = None
    taken = {key: run[key] for key in run if getattr(request, key) is None}
    if request.flat:
        taken.pop("variant", None)
    taken["freeze_trunk"] = request.freeze_trunk or bool(run.get("freeze_trunk"))
    return replace(request, **taken, pretrained=False, pretrained_file=None), stored_tree


def _check_outputs(request: TrainRequest, ckdir: Path, data: str | Path) -> None:
    """Outputs that would replace an input, each other, or an unfinished run are refused before
    anything is written."""
    from nhlcli.paths import check_distinct_outputs, check_output_dir, check_output_file
    from nhlcli.training.loop import check_fresh_start, check_outputs

    named = [request.hierarchy, request.pretrained_file, data, *request.read_files]
    inputs = [Path(s) for s in named if isinstance(s, (str, Path)) and str(s) and Path(s).exists()]
    check_outputs(request.output, ckdir, data, request.tensorboard)
    check_output_file(request.output, inputs, label="`output`")
    check_output_dir(ckdir, inputs, label="`checkpoint_dir`")
    check_output_dir(request.tensorboard, inputs, label="`tensorboard`")
    check_distinct_outputs(
        {"`output`": request.output, "`checkpoint_dir`": ckdir, "`tensorboard`": request.tensorboard}
    )
    check_fresh_start(ckdir, request.resume, request.overwrite)


def _check_shape(request: TrainRequest) -> tuple[str, type[NhlModel]]:
    """The variant the request builds and its model class, once the shape options suit it."""
    from nhlcli.model.registry import resolve_variant, variant_class

    variant = resolve_variant(request.variant, request.flat)
    model_class = variant_class(variant)
    if model_class.keeps_every_stage and request.split is not None and not request.freeze_trunk:
        raise NhlError(
            f"does not cut a {variant} model (it keeps every stage); use `variant` flat-trunk for the "
            "plain classifier on a trunk cut at `split`, or add `freeze_trunk` to freeze the stages up to it",
            "split",
        )
    if not model_class.branch_shaped and (request.widths is not None or request.blocks not in (None, 1)):
        raise NhlError(f"`widths` and `blocks` shape NHL branches; a {variant} model has none")
    if request.split is not None and request.split < 0:
        backbone = request.backbone or DEFAULT_BACKBONE
        raise NhlError(_negative_split(request.split, backbone, request.in_chans), "split")
    return variant, model_class


def _negative_split(split: int, backbone: str, in_chans: int | None) -> str:
    """Why a negative split is refused: stages count from 0, and a negative one (the library's
    "from the end") would silently cut somewhere else than a user counting from the start meant."""
    from nhlcli.model.trunk import create_timm_model

    try:  # the backbone's stages, to say the range (an error path: building it is cheap enough)
        stages = len(create_timm_model(backbone, in_chans or 3, False, None).feature_info)
        valid = f"{backbone} has stages 0 to {stages - 1}"
    except Exception:  # an unknown backbone is reported later, in its own words
        valid = "stages count from 0"
    return f"{split}: {valid}; give a stage number counted from 0, or leave it out (before the last)"


def _run_tree(
    request: TrainRequest, data: str | Path, model_class: type[NhlModel], say: Callable[[str], None]
) -> Tree:
    """The tree to train on: the one asked for, else the data set's default, else (a flat model)
    a flat tree over the data's classes; cut to ``classes`` where given."""
    from nhlcli.data import open_dataset
    from nhlcli.taxonomy import resolve_tree
    from nhlcli.taxonomy.sources import build_flat_tree

    default = dataset_spec(data).default_tree
    if isinstance(request.hierarchy, Tree):
        tree = request.hierarchy
    elif request.hierarchy:
        tree = resolve_tree(str(request.hierarchy))
    elif default is not None:
        tree = resolve_tree(default)
    elif not model_class.branch_shaped:
        tree = build_flat_tree(open_dataset(data, "train").classes, name=f"{Path(data).name}-flat")
    else:
        raise NhlError(
            "give `hierarchy` TREE (build one over the data's classes with 'nhl hierarchy build'), "
            "or `flat` for a plain model"
        )
    if request.classes is None:
        return tree
    chosen = tree.select(tuple(request.classes))
    for note in chosen.notes(tree):
        say(note)
    return chosen.subtree(tree)


def _build_model(
    request: TrainRequest, data: str | Path, tree: Tree, variant: str
) -> tuple[NhlModel, dict[str, Any]]:
    """The model, its input size and channels from the data set's spec where not given, its trunk
    frozen where asked; and the options the checkpoint records for a resume."""
    from nhlcli.model.nhl import BranchConfig, with_input_size
    from nhlcli.model.registry import create_model, variant_class
    from nhlcli.model.trunk import TrunkConfig

    spec = dataset_spec(data)
    if request.freeze_trunk and not request.resume and not (request.pretrained or request.pretrained_file):
        raise NhlError(
            "keeps the trunk's starting weights, and without `pretrained` or `pretrained_file` they are "
            "random; add one of them, or drop `freeze_trunk`",
            "freeze_trunk",
        )
    backbone = request.backbone or DEFAULT_BACKBONE
    chans = spec.in_chans if request.in_chans is None else request.in_chans
    branches = BranchConfig(tuple(request.widths or ()), request.blocks or 1)
    model = create_model(
        tree, variant, TrunkConfig(backbone, request.split, chans),
        branches if variant_class(variant).branch_shaped else None,
        pretrained=request.pretrained, pretrained_file=request.pretrained_file,
    )  # fmt: skip
    input_size = spec.input_size if request.input_size is None else request.input_size
    if input_size is not None:
        model.input_config = with_input_size(model.input_config, input_size)
    if request.freeze_trunk:
        model.freeze_trunk(request.split)
    recorded = data if registered_dataset(data) or not Path(data).is_dir() else str(Path(data).resolve())
    options = dict(
        data=str(recorded), backbone=backbone, variant=variant, split=request.split,
        widths=None if request.widths is None else ",".join(str(w) for w in request.widths),
        blocks=request.blocks, input_size=input_size, in_chans=request.in_chans,
        classes=None if request.classes is None else list(request.classes), freeze_trunk=request.freeze_trunk,
    )  # fmt: skip
    return model, options


def _run_config(
    request: TrainRequest, model: NhlModel, data: str | Path, ckdir: Path, say: Callable[[str], None]
) -> TrainConfig:
    """The recipe: what ``request.config`` chose; starting afresh, an augmentation fitted to the
    input size and the number of images and loader workers fitted to the machine and the data;
    resuming, the rest from the run."""
    from nhlcli.data import default_augmentation, default_workers, training_image_count
    from nhlcli.training.loop import resolve_config

    given = dict(request.config)
    given["classes"] = None if request.classes is None else tuple(request.classes)
    if not request.resume:
        if given.get("augment") is None or given.get("crop_scale") is None:
            side = model.input_config.size[-1]
            choice = default_augmentation(side, training_image_count(data))
            if given.get("augment") is None:
                given["augment"] = choice.augment or ""
            if given.get("crop_scale") is None:
                given["crop_scale"] = choice.crop_scale
            say(f"augmentation: {choice.reason} (`augment` and `crop_scale` to choose)")
        if given.get("workers") is None:
            given["workers"] = default_workers(data)
        if given["classes"] is None:
            given["classes"] = ()
    config = resolve_config(given, ckdir if request.resume else None)
    return replace(config, augment=config.augment or None)
