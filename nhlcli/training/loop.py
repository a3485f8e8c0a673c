"""The training loop shared by NHL and flat models: one loop, so comparisons are like for like.

AdamW or SGD, cosine schedule with warmup (timm), timm's transforms with RandAugment, mixed
precision on GPU, a seed for the data order and augmentation of every epoch (so a resumed run
trains as the uninterrupted one; :func:`seed_everything` seeds the initial weights), validation
every epoch, an atomic checkpoint every epoch with a ``summary.csv`` log beside it (and TensorBoard
scalars on request; :mod:`nhlcli.training.log`), ``resume``, an optional time budget that ends the
run annealed (:class:`_TimeBudget`), Ctrl-C that saves and stops cleanly, and DDP under torchrun
(rank 0 writes).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nhlcli import locks
from nhlcli.data import (
    bad_image_names,
    split_bad,
    split_name,
    unreadable_image_message,
    unreadable_split_error,
)
from nhlcli.devices import autocast_for, bf16_unsafe_convolutions, cpu_has_fast_bf16
from nhlcli.distributed import DistInfo, all_sum, barrier, setup, teardown
from nhlcli.errors import NhlError
from nhlcli.evaluation import evaluate
from nhlcli.model.files import save_model
from nhlcli.progress import SilentProgress, TrainingProgress
from nhlcli.training import checkpoint as ckpt
from nhlcli.training.log import RunLog, require_tensorboard


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (recorded in the model file's ``training`` section)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    workers: int = 2
    augment: str | None = "rand-m9-mstd0.5"
    crop_scale: tuple[float, float] | None = None  # random-resized-crop area range (timm: 0.08-1)
    amp: bool = True
    device: str | None = None
    max_steps_per_epoch: int | None = None
    classes: tuple[str, ...] = ()  # the selection when the model covers only some of the data's classes
    skip_bad_images: bool = False  # leave undecodable images out (counted and named) instead of stopping
    time_budget_s: float | None = None  # stop when this is spent, annealed (at most ``epochs``): _TimeBudget
    holdout: float = 0.0  # validate on this stratified fraction of the training images, not the val split


# What a resumed run must keep: changing any of these would make the checkpoint's optimizer state,
# schedule, data order or class set mean something else than the run it came from.
RECIPE_FIELDS = (
    "batch_size", "lr", "weight_decay", "optimizer", "momentum", "warmup_epochs", "label_smoothing",
    "seed", "augment", "crop_scale", "max_steps_per_epoch", "classes", "holdout",
)  # fmt: skip
# What a resumed run may change (applied from the resume on, reported, and recorded): where and how
# fast it runs, and how long (more or fewer epochs: the cosine schedule is stretched to the new end).
RUNTIME_FIELDS = ("epochs", "workers", "amp", "device", "skip_bad_images")


SEED_LIMIT = 2**63  # torch.manual_seed takes 64 bits; one is kept back so seed + rank still fits
SEED_NEED = "a whole number from 0 to 2**63 - 1"


def _valid_seed(seed: object) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < SEED_LIMIT


def check_seed(seed: object) -> int:
    """``seed`` if torch, numpy and Python can all be seeded with it, else a one-line error."""
    if not _valid_seed(seed):
        raise NhlError(f"must be {SEED_NEED}, got {seed}", "seed")
    return seed  # type: ignore[return-value]


def validate_config(config: TrainConfig) -> None:
    """Refuse values that would silently mean something else (0 steps = no limit, -1 warmup, nan)."""
    checks = [
        (config.epochs >= 1, "epochs", "at least 1"),
        (config.batch_size >= 1, "batch_size", "at least 1"),
        (math.isfinite(config.lr) and config.lr > 0, "lr", "a positive number"),
        (math.isfinite(config.weight_decay) and config.weight_decay >= 0, "weight_decay", "0 or more"),
        (math.isfinite(config.warmup_epochs) and config.warmup_epochs >= 0, "warmup_epochs", "0 or more"),
        (0.0 <= config.label_smoothing < 1.0, "label_smoothing", "in [0, 1)"),
        (config.workers >= 0, "workers", "0 or more"),
        (config.max_steps_per_epoch is None or config.max_steps_per_epoch >= 1,
         "max_steps_per_epoch", "at least 1 (leave it out for whole epochs)"),
        (config.time_budget_s is None or (math.isfinite(config.time_budget_s) and config.time_budget_s > 0),
         "time_budget_s", "a positive number of seconds"),
        (_valid_seed(config.seed), "seed", SEED_NEED),
        (0.0 <= config.holdout < 1.0, "holdout", "a fraction in [0, 1) (0: validate on the val split)"),
    ]  # fmt: skip
    for ok, name, need in checks:
        if not ok:
            raise NhlError(f"must be {need}, got {getattr(config, name)}", name)
    if config.warmup_epochs > config.epochs:
        raise NhlError(
            f"{config.warmup_epochs:g} is longer than the run ({config.epochs} epochs); shorten the warmup",
            "warmup_epochs",
        )


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    val_top5: float
    images_per_s: float
    seconds: float
    lr: float | None = None  # the learning rate at the epoch's end (None in runs recorded before it was)


@dataclass
class TrainResult:
    """What a run reached; ``interrupted`` when Ctrl-C stopped it (a checkpoint was saved)."""

    output: str | None
    checkpoint_dir: str
    epochs_done: int
    history: list[EpochRecord] = field(default_factory=list)
    interrupted: bool = False
    interrupted_at: dict[str, int] | None = None  # epoch and steps done when Ctrl-C came (not kept)
    resumed_changes: dict[str, list[Any]] = field(default_factory=dict)  # runtime options a resume changed
    already_done: bool = False  # resumed a run that had finished: nothing trained, the model rewritten
    time_budget: dict[str, Any] | None = None  # a budgeted run: time spent, whether it ended the run
    bad_images: list[str] = field(default_factory=list)  # files left out by skip_bad_images
    precision_note: str | None = None  # why CPU training ran in float32 although amp was asked for

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else None
        return {
            "output": self.output,
            "checkpoint_dir": self.checkpoint_dir,
            "epochs_done": self.epochs_done,
            "interrupted": self.interrupted,
            "interrupted_at": self.interrupted_at,
            "resumed_changes": self.resumed_changes,
            "already_done": self.already_done,
            "time_budget": self.time_budget,
            "precision_note": self.precision_note,
            "bad_images": self.bad_images,
            "val_top1": last.val_top1 if last else None,
            "val_top5": last.val_top5 if last else None,
            "history": [asdict(h) for h in self.history],
        }


def _set_trunk_memory_format(model: nn.Module, memory_format: torch.memory_format) -> bool:
    """Lay the trunk's weights out in ``memory_format``; False for a model without a trunk."""
    trunk = getattr(model, "trunk", None) or getattr(model, "model", None)
    if trunk is None:
        return False
    trunk.to(memory_format=memory_format)
    return True


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (CPU and every GPU) from ``seed``.

    Call it before building the model: the initial weights are drawn when the model is built,
    so a model built before seeding differs from run to run whatever ``TrainConfig.seed`` says
    (``nhl train --seed`` and ``nhl demo`` do this). :func:`train` seeds again per epoch for the
    data order and augmentation. Refuses seeds outside 0 .. 2**63 - 1 in one line.
    """
    check_seed(seed)
    random.seed(seed)
    np.random.seed(np.random.SeedSequence(seed).generate_state(1)[0])  # numpy takes 32 bits
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch on one rank: a function of these three alone, so that a resumed run
    draws the same data order and augmentation for an epoch as an uninterrupted one."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0]) >> 1


def seed_epoch(seed: int, epoch: int, rank: int, train_loader: Any) -> None:
    """Seed the generators the epoch's training draws from: the process's own (augmentation and
    drawn images without loader workers, dropout) and the loader's (the shuffle, and the seeds
    of the worker processes it starts for the epoch)."""
    epoch_seed = _epoch_seed(seed, epoch, rank)
    seed_everything(epoch_seed)
    generator = getattr(train_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(epoch_seed)


def train(
    model: nn.Module,
    data: str | Path,
    output: str | Path | None,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: TrainingProgress | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    loaders: tuple[Any, Any] | None = None,
    overwrite: bool = False,
    options: Mapping[str, Any] | None = None,
    tensorboard: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` (ImageFolder directory or ``fashion-mnist``) and save it.

    Checkpoints go to ``checkpoint_dir`` (default: ``<output>.ckpt``) after every epoch;
    ``resume`` continues from there with the same recipe (see :data:`RECIPE_FIELDS`). A fresh
    run refuses to replace an unfinished run's checkpoint unless ``overwrite``. ``options`` (the
    command's model options) are kept in the checkpoint, so a resume can take them from there.
    The output and the checkpoint directory are locked while the run writes them. Under torchrun
    every rank calls this; rank 0 writes.

    After every epoch the checkpoint directory's ``summary.csv`` gets the epoch's row (timm's
    columns; a resumed run continues it, an epoch trained again replacing its row), and with
    ``tensorboard`` (a directory; needs the tensorboard package) TensorBoard gets the same scalars.

    ``config.seed`` seeds each epoch's data order and augmentation (loader workers included) by
    epoch and rank; the model's initial weights are seeded by :func:`seed_everything` before it
    is built. With ``config.time_budget_s`` the run stops when the budget is spent (at most
    ``config.epochs``), the learning rate annealed by the fraction spent; see :class:`_TimeBudget`.
    """
    if tensorboard is not None:
        require_tensorboard()  # before anything is written
    validate_config(config)
    checkpoint_dir = checkpoint_dir_for(output, checkpoint_dir)
    check_outputs(output, checkpoint_dir, data, tensorboard)
    with contextlib.ExitStack() as held:
        held.enter_context(locks.holding(checkpoint_dir, "checkpoint directory"))
        if output is not None:
            held.enter_context(locks.holding(output))
        if tensorboard is not None:
            held.enter_context(locks.holding(tensorboard, "TensorBoard directory"))
        check_fresh_start(checkpoint_dir, resume, overwrite)
        record = {"data": str(data), **(options or {})}
        info = setup(config.device)
        try:
            return _train(
                model, data, output, config, checkpoint_dir, resume, progress, on_epoch, loaders, info,
                options=record, log=RunLog(checkpoint_dir, tensorboard),
            )  # fmt: skip
        finally:
            teardown(info)


def resolve_config(given: Mapping[str, Any], checkpoint_dir: str | Path | None = None) -> TrainConfig:
    """The config a run uses: the options given, the rest from the checkpointed run when resuming
    from ``checkpoint_dir`` (so ``--resume`` alone continues with the recipe the run started with),
    else the defaults. Unknown names are a programming error."""
    base: dict[str, Any] = {}
    if checkpoint_dir is not None:
        sidecar = ckpt.read_sidecar(checkpoint_dir)
        if sidecar is None:
            raise NhlError(f"no checkpoint in {checkpoint_dir} to resume from; start without `resume`")
        base = dict(sidecar["extra"].get("config", {}))
        problem = _stored_config_problem(base)
        if problem:
            raise NhlError(
                f"the checkpoint in {checkpoint_dir} is damaged: {problem}; `resume` cannot continue it "
                "(delete the directory, or pass `overwrite` to start over)"
            )
    fields = {f for f in TrainConfig.__dataclass_fields__}
    merged = {k: v for k, v in base.items() if k in fields}
    merged.update({k: v for k, v in given.items() if v is not None})
    for key in ("crop_scale", "classes"):
        if merged.get(key) is not None:
            merged[key] = tuple(merged[key])
    return TrainConfig(**merged)


def _stored_config_problem(stored: Mapping[str, Any]) -> str | None:
    """What is wrong with a checkpoint's recorded config (hand-edited: ``"epochs": "two"``), judged
    against the types of :class:`TrainConfig`'s defaults; ``None``: nothing."""
    defaults = asdict(TrainConfig())
    for key, value in stored.items():
        if key not in defaults or value is None:
            continue
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int) or key == "max_steps_per_epoch":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float) or key == "time_budget_s":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str) or key in ("augment", "device"):
            ok = isinstance(value, str)
        elif key == "crop_scale":
            ok = (
                isinstance(value, list)
                and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            )
        elif key == "classes":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = True
        if not ok:
            return f"its config's '{key}' is {value!r}"
    return None


def check_outputs(
    output: str | Path | None,
    checkpoint_dir: str | Path,
    data: str | Path | None,
    tensorboard: str | Path | None = None,
) -> None:
    """Refuse a model file inside the checkpoint directory (the checkpoint's next save or clean-up
    would remove it, or it would replace the checkpoint), a TensorBoard directory there (nhl refuses
    a checkpoint directory holding files it did not write), and outputs inside the data folder (a
    checkpoint directory there becomes a class folder, breaking every later run on the data)."""
    if tensorboard is not None:
        if _at_or_inside(tensorboard, checkpoint_dir):
            raise NhlError(
                f"{tensorboard} is the checkpoint directory {checkpoint_dir} or inside it, which holds "
                "nhl's files alone; write TensorBoard's events elsewhere",
                "tensorboard",
            )
        if Path(tensorboard).exists() and not Path(tensorboard).is_dir():
            raise NhlError(f"{tensorboard} is a file, not a directory; choose another path", "tensorboard")
    if output is not None and _at_or_inside(output, checkpoint_dir):
        raise NhlError(
            f"{output} is inside the checkpoint directory {checkpoint_dir}, whose files the run "
            "replaces and removes; write the model outside it",
            "output",
        )
    if data is not None and str(data).strip() and Path(data).is_dir():
        outputs = (("output", output), ("checkpoint_dir", checkpoint_dir), ("tensorboard", tensorboard))
        for label, path in outputs:
            if path is not None and _at_or_inside(path, data):
                raise NhlError(
                    f"{path} is inside the data folder {data}; it would become part of the data set "
                    "(a class folder or an image): choose a path outside it",
                    label,
                )


def _at_or_inside(path: str | Path, directory: str | Path) -> bool:
    """Whether ``path`` is ``directory`` or lies inside it, judged on resolved paths."""
    target, folder = Path(path).resolve(), Path(directory).resolve()
    return target == folder or folder in target.parents


def checkpoint_dir_for(output: str | Path | None, checkpoint_dir: str | Path | None) -> Path:
    """Where a run's checkpoints go: ``checkpoint_dir``, or ``<output>.ckpt`` beside the model."""
    if checkpoint_dir is not None:
        return Path(checkpoint_dir)
    if output is None:
        raise NhlError("give an output file or a checkpoint directory")
    return Path(f"{output}.ckpt")


def check_fresh_start(checkpoint_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start afresh over an unfinished run's checkpoint (that would throw its epochs away),
    and refuse ``resume`` with ``overwrite`` (they ask for opposite things)."""
    if resume and overwrite:
        raise NhlError("`resume` continues the checkpointed run and `overwrite` discards it; give one")
    ckpt.check_ownership(checkpoint_dir)  # never write over, or discard, files nhl did not write
    if resume or overwrite:
        return
    sidecar = ckpt.read_sidecar(checkpoint_dir)
    if sidecar is None:
        return
    planned = sidecar["extra"].get("config", {}).get("epochs")
    if _whole_number(planned) and sidecar["epoch"] >= planned:
        return  # a finished run: its result is the model file; the checkpoint can go
    done = f"{sidecar.get('epoch')} of {planned}" if planned else str(sidecar.get("epoch"))
    raise NhlError(
        f"{checkpoint_dir} holds an unfinished run ({done} epochs done); continue it with `resume`, "
        "or pass `overwrite` to start over and discard it"
    )


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _make_loaders(model: nn.Module, data: str | Path, config: TrainConfig, info: DistInfo) -> tuple[Any, Any]:
    from nhlcli.data import create_loaders

    inp = model.input_config
    return create_loaders(
        data,
        model.tree,
        input_size=inp.size[1],
        in_chans=inp.size[0],
        mean=inp.mean,
        std=inp.std,
        interpolation=inp.interpolation,
        crop_pct=inp.crop_pct,  # the same evaluation transform as 'nhl eval'
        batch_size=config.batch_size,
        workers=config.workers,
        augment=config.augment,
        scale=config.crop_scale,
        distributed=info.enabled,
        seed=config.seed,
        subset=bool(config.classes),  # images of classes outside the model's tree are left out
        skip_bad_images=config.skip_bad_images,
        holdout=config.holdout,
    )


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    """A config as the checkpoint's JSON holds it (tuples as lists), for like-for-like comparison."""
    return json.loads(json.dumps(asdict(config)))


def resume_changes(stored: Mapping[str, Any], config: TrainConfig) -> dict[str, list[Any]]:
    """The runtime options a resume changes (``{field: [before, now]}``); refuses recipe changes."""
    now = _config_dict(config)
    differ = [k for k in now if k in stored and stored[k] != now[k]]
    recipe = [k for k in differ if k in RECIPE_FIELDS]
    if recipe:
        listed = ", ".join(f"`{k}` {now[k]} (the run's: {stored[k]})" for k in recipe)
        raise NhlError(
            f"`resume` continues the run with the recipe it started with, and {listed} would change it; "
            "drop the option, or start a new run with `overwrite`",
        )
    return {k: [stored[k], now[k]] for k in differ if k in RUNTIME_FIELDS}


class _TimeBudget:
    """Ends a run when its time budget is spent, however the machine's speed changes meanwhile.

    The epoch count is not decided up front (a machine that slows down under another process's
    load would overrun it): the run trains until the budget is spent or ``epochs`` are done,
    whichever comes first, and the learning-rate schedule follows the run's progress, the
    further along of the fraction of steps done and the fraction of the budget spent. So the
    warmup and the cosine decay stretch or shrink with the machine's speed and the last step
    ends at the schedule's minimum either way. The budget covers training and validation: one
    validation's time (probed after a few steps, then measured each epoch) is kept back for the
    final one. The time spent is kept in the checkpoint, so a resumed run gets what is left.
    """

    WARMUP_STEPS = 5  # steps before the validation probe (the first ones pay for start-up)
    VAL_PROBE_BATCHES = 4
    clock = staticmethod(time.perf_counter)  # tests replace it with a fake clock

    def __init__(self, budget_s: float, total_steps: int, spent_s: float = 0.0) -> None:
        self.budget_s = budget_s
        self.total_steps = max(total_steps, 1)
        self.spent_before = spent_s
        self.started = self.clock()
        self.val_s: float | None = None  # the time one validation takes, once known
        self.ended = False  # the budget, not the epoch count, ended the run

    def spent(self) -> float:
        """Seconds of the budget spent, by this process and by the runs it resumes."""
        return self.spent_before + self.clock() - self.started

    def progress(self, step: int) -> float:
        """The fraction of the run done after ``step`` steps: of the steps, or of the budget
        less one validation, whichever is further along (1.0: the run is over)."""
        train_s = max(self.budget_s - (self.val_s or 0.0), 0.1 * self.budget_s)
        return min(1.0, max(step / self.total_steps, self.spent() / train_s))

    def record(self, epochs: int, steps: int, lr: float) -> dict[str, Any]:
        """What the training summary and the checkpoint keep about the budget."""
        return {
            "budget_seconds": self.budget_s,
            "spent_seconds": round(self.spent(), 3),
            "ended_by_budget": self.ended,
            "epochs": epochs,
            "steps": steps,
            "final_lr": lr,
        }


def _budget_spent(state: ckpt.Checkpoint | None) -> tuple[float, bool]:
    """The seconds of its time budget a checkpointed run had spent (0 for a fresh run), and
    whether the budget ended it (a resume then trains nothing more)."""
    if state is None:
        return 0.0, False
    record = state.meta.get("extra", {}).get("time_budget", {})
    spent = record.get("spent_seconds", 0.0) if isinstance(record, dict) else None
    if isinstance(spent, bool) or not isinstance(spent, (int, float)) or not 0 <= spent < math.inf:
        raise NhlError(
            f"the checkpoint's time budget record says {spent!r} seconds spent, not a number of "
            "seconds; start the run over with `overwrite`"
        )
    return float(spent), record.get("ended_by_budget") is True


@torch.no_grad()
def _time_validation(model: nn.Module, loader: Any, device: torch.device, amp: bool, batches: int) -> float:
    """Seconds per validation batch, timed on a few batches (the first one's start-up left out)."""
    model.eval()
    times, start = [], time.perf_counter()
    for i, (images, _) in enumerate(loader):
        with autocast_for(device, amp):
            model(images.to(device))
        now = time.perf_counter()
        if i > 0:
            times.append(now - start)
        start = now
        if i >= batches:
            break
    model.train()
    return sorted(times)[len(times) // 2] if times else 0.0


def _train(
    model: nn.Module,
    data: str | Path,
    output: str | Path | None,
    config: TrainConfig,
    checkpoint_dir: Path,
    resume: bool,
    progress: TrainingProgress | None,
    on_epoch: Callable[[EpochRecord], None] | None,
    loaders: tuple[Any, Any] | None,
    info: DistInfo,
    options: Mapping[str, Any] | None = None,
    log: RunLog | None = None,
) -> TrainResult:
    """Set the run up, train the epochs left with the progress bar and the log, save the model;
    Ctrl-C stops at the checkpoint of the last whole epoch."""
    run = _start_run(model, data, output, config, checkpoint_dir, resume, loaders, info, options)
    epochs = run.config.epochs
    bar = progress if progress is not None and info.is_main and run.start_epoch < epochs else SilentProgress()
    bar.begin(epochs, run.steps_per_epoch, run.start_epoch, split_name(data, "val", config.holdout))
    log = log or RunLog(checkpoint_dir)
    if info.is_main:
        log.start(run.result.history)  # a resumed run continues the log of the epochs its checkpoint holds
    try:
        with contextlib.closing(bar):
            run.train_epochs(bar, log, on_epoch)
    except KeyboardInterrupt:
        return run.interrupted()
    finally:  # hand back the model laid out as a loaded one is, so both give identical logits
        _set_trunk_memory_format(model, torch.contiguous_format)
        log.close()
    return run.finish(output)


def _start_run(
    model: nn.Module,
    data: str | Path,
    output: str | Path | None,
    config: TrainConfig,
    checkpoint_dir: Path,
    resume: bool,
    loaders: tuple[Any, Any] | None,
    info: DistInfo,
    options: Mapping[str, Any] | None,
) -> _Run:
    """Everything before the first step: the model on its device, the checkpoint to resume (checked
    against the model and the config), the loaders, the optimizer and schedule, and the budget."""
    seed_everything(config.seed)  # the data order and augmentation are seeded per epoch and rank
    model.to(info.device)
    # oneDNN and cuDNN convolutions run faster channels-last; the branches already are
    channels_last = _set_trunk_memory_format(model, torch.channels_last)
    state = _checkpoint_to_resume(checkpoint_dir, resume, info)
    changes = {} if state is None else _checked_resume(state, model, config, checkpoint_dir)
    train_loader, val_loader = loaders or _make_loaders(model, data, config, info)
    steps_per_epoch = _steps_per_epoch(train_loader, config, data)
    optimizer, scheduler = optimizer_and_scheduler(model, config, steps_per_epoch)
    result = TrainResult(str(output) if output else None, str(checkpoint_dir), 0, resumed_changes=changes)
    run = _Run(
        model, config, info, checkpoint_dir, train_loader, val_loader, steps_per_epoch, optimizer,
        scheduler, result, options, channels_last,
    )  # fmt: skip
    if state is not None:
        run.restore(state, changes)
    run.config, run.budget = _time_budget(config, state, steps_per_epoch, changes)
    run.amp, result.precision_note = _training_precision(model, info.device, config.amp)
    run.scaler = torch.amp.GradScaler("cuda") if info.device.type == "cuda" and run.amp else None
    run.use_scaler = run.scaler is not None and not torch.cuda.is_bf16_supported()
    run.net = _parallel(model, info)
    return run


def _checkpoint_to_resume(checkpoint_dir: Path, resume: bool, info: DistInfo) -> ckpt.Checkpoint | None:
    """The checkpoint a resumed run continues (``None`` for a fresh run, whose start discards the
    old one: a crash of this run must not resume the one it replaces)."""
    state = ckpt.load_checkpoint(checkpoint_dir) if resume else None
    if info.is_main:  # holding the directory's lock: what a crash left half-made is nobody's
        ckpt.clean_stale(checkpoint_dir)
        if state is None:
            ckpt.discard(checkpoint_dir)
    return state


def _checked_resume(
    state: ckpt.Checkpoint, model: nn.Module, config: TrainConfig, checkpoint_dir: Path
) -> dict[str, list[Any]]:
    """The runtime options a resume changes, after refusing another model, another recipe, or
    fewer epochs than the checkpoint already holds."""
    difference = ckpt.model_difference(state.meta["model"], model.config())
    if difference:
        raise NhlError(
            f"the checkpoint in {checkpoint_dir} is for another model: {difference}; resume with the "
            "run's options (or leave them out), or start over with `overwrite`"
        )
    changes = resume_changes(state.meta.get("extra", {}).get("config", {}), config)
    if config.epochs < state.epoch:
        raise NhlError(
            f"{config.epochs} cannot undo the run in {checkpoint_dir}, which has already trained "
            f"{state.epoch} epochs; give {state.epoch} or more",
            "epochs",
        )
    return changes


def _steps_per_epoch(train_loader: Any, config: TrainConfig, data: str | Path) -> int:
    """Training steps in one epoch: the loader's batches, at most ``max_steps_per_epoch``."""
    steps = len(train_loader)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    if steps == 0:
        raise NhlError(f"{data}: the training split holds no images")
    return steps


def optimizer_and_scheduler(model: nn.Module, config: TrainConfig, steps_per_epoch: int) -> tuple[Any, Any]:
    """timm's optimizer for ``config.optimizer`` and its cosine schedule with warmup, stepped per step."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    try:
        optimizer = create_optimizer_v2(
            model,
            opt=config.optimizer,
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
        )
    except (ValueError, AssertionError) as exc:
        raise NhlError(f"{config.optimizer!r}: {exc}; use adamw or sgd", "optimizer") from exc
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(config.epochs * steps_per_epoch, 2),  # timm warns about a 1-step cosine
        warmup_t=int(config.warmup_epochs * steps_per_epoch),
        warmup_lr_init=config.lr * 0.01,
        lr_min=config.lr * 1e-3,
        t_in_epochs=False,
    )
    return optimizer, scheduler


def _time_budget(
    config: TrainConfig, state: ckpt.Checkpoint | None, steps_per_epoch: int, changes: dict[str, list[Any]]
) -> tuple[TrainConfig, _TimeBudget | None]:
    """The run's config and its time budget (``None`` without one). A resumed run whose budget is
    spent trains nothing more: its epoch count becomes the epochs it holds."""
    if config.time_budget_s is None:
        return config, None
    spent, ended = _budget_spent(state)
    if state is not None and (ended or spent >= config.time_budget_s):  # nothing left to train
        config = replace(config, epochs=state.epoch)
        changes.pop("epochs", None)
    budget = _TimeBudget(config.time_budget_s, config.epochs * steps_per_epoch, spent)
    budget.ended = ended
    return config, budget


def _training_precision(model: nn.Module, device: torch.device, amp: bool) -> tuple[bool, str | None]:
    """Whether to train in mixed precision, and why not where ``amp`` was asked for but CPU
    bfloat16 would give wrong gradients (recorded in the summary)."""
    if device.type != "cpu" or not amp or not cpu_has_fast_bf16():
        return amp, None
    unsafe = bf16_unsafe_convolutions(model, tuple(model.input_config.size))
    if not unsafe:
        return amp, None
    # oneDNN's bf16 backward is wrong there: train in float32
    return False, (
        f"trained in float32: at {model.input_config.size[1]} px the convolution {unsafe[0]} "
        "strides past its whole input map, where CPU bfloat16 gradients are wrong"
    )


def _parallel(model: nn.Module, info: DistInfo) -> nn.Module:
    """``model`` as the steps run it: wrapped in DDP under torchrun."""
    if not info.enabled:
        return model
    device = info.device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
    )


@dataclass
class _EpochTally:
    """What one rank's training steps of an epoch saw."""

    seen: int = 0
    loss_sum: float = 0.0
    hits: int = 0
    seconds: float = 0.0

    def add(self, seen: int, loss_sum: float, hits: int) -> None:
        self.seen += seen
        self.loss_sum += loss_sum
        self.hits += hits


@dataclass(eq=False)
class _Run:
    """One run in progress: the parts the steps use, and what they update that the checkpoint keeps."""

    model: nn.Module
    config: TrainConfig
    info: DistInfo
    checkpoint_dir: Path
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int
    optimizer: Any
    scheduler: Any
    result: TrainResult
    options: Mapping[str, Any] | None = None
    channels_last: bool = False
    net: nn.Module | None = None  # the model as the steps run it (DDP under torchrun)
    amp: bool = True
    scaler: Any = None
    use_scaler: bool = False
    budget: _TimeBudget | None = None
    start_epoch: int = 0
    resumed: bool = False
    step: int = 0
    resumes: list[dict[str, Any]] = field(default_factory=list)
    bad_names: list[str] = field(default_factory=list)
    bad_indices: set[int] = field(default_factory=set)
    epoch: int = 0  # the epoch in progress, and its steps done (what Ctrl-C reports)
    steps_done: int = 0

    def restore(self, state: ckpt.Checkpoint, changes: dict[str, list[Any]]) -> None:
        """Continue from ``state``: weights, optimizer, schedule (stretched to a changed epoch
        count), step, history and the files left out so far."""
        ckpt.restore(state, self.model, self.optimizer, self.scheduler)
        self.scheduler.t_initial = max(self.config.epochs * self.steps_per_epoch, 2)
        self.start_epoch, self.step, self.resumed = state.epoch, state.step, True
        self.epoch = self.result.epochs_done = state.epoch
        extra = state.meta.get("extra", {})
        try:
            self.result.history = [EpochRecord(**h) for h in extra.get("history", [])]
        except TypeError as exc:
            raise NhlError(
                f"the checkpoint in {self.checkpoint_dir} is damaged: its history does not read ({exc}); "
                "`resume` cannot continue it (delete the directory, or pass `overwrite` to start over)"
            ) from None
        self.resumes = [*extra.get("resumes", []), {"at_epoch": state.epoch, "changed": changes}]
        self.bad_names = list(extra.get("bad_images", []))

    def train_epochs(
        self, bar: TrainingProgress, log: RunLog, on_epoch: Callable[[EpochRecord], None] | None
    ) -> None:
        """Train from the first epoch not done to the last, each one validated and checkpointed."""
        for epoch in range(self.start_epoch, self.config.epochs):
            self.epoch = epoch
            if epoch >= self.config.epochs:  # a time budget shortened the run
                break
            tally = self.train_epoch(epoch, bar)
            self.end_epoch(epoch, tally, bar, log, on_epoch)

    def train_epoch(self, epoch: int, bar: TrainingProgress) -> _EpochTally:
        """One epoch's training steps (fewer where the time budget runs out)."""
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        seed_epoch(self.config.seed, epoch, self.info.rank, self.train_loader)
        self.net.train()
        tally, started, self.steps_done = _EpochTally(), time.perf_counter(), 0
        for i, (images, targets) in enumerate(_batches(self.train_loader), start=1):
            if i > self.steps_per_epoch:
                break
            counts = self.train_step(images, targets)
            if counts is None:
                continue
            tally.add(*counts)
            self.step += 1
            self.steps_done = i
            finished = self.advance_schedule(i)
            rate = tally.seen * self.info.world_size / (time.perf_counter() - started)
            bar.step(epoch, i, tally.loss_sum / max(tally.seen, 1), tally.hits / max(tally.seen, 1), rate)
            if finished:
                self.budget.ended = self.step < self.config.epochs * self.steps_per_epoch
                break
        tally.seconds = time.perf_counter() - started
        return tally

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[int, float, int] | None:
        """One optimizer step: images, summed loss and hits trained on (``None``: a step skipped)."""
        if self.config.skip_bad_images:
            images, targets, bad = split_bad(images, targets)
            self.bad_indices.update(bad)
        device = self.info.device
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if not (targets.numel() or self.info.enabled):  # under DDP every rank joins every backward
            return 0, 0.0, 0
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, self.amp, training=True):
            logits = self._forward(images, targets)
            if logits is None:
                return None
            if targets.numel():
                loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing)
            else:
                loss = logits.float().sum() * 0.0
        if not math.isfinite(loss.item()):
            raise NhlError(f"the loss became {loss.item()} at step {self.step}; lower `lr`")
        self._backward(loss)
        count = targets.numel()
        return count, loss.item() * count, int((logits.argmax(1) == targets).sum())

    def _forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """The logits; ``None`` for a lone image BatchNorm cannot train on that unreadable images
        left of a batch (skipped), a one-line error where the batch size itself is the cause."""
        try:
            return self.net(images)
        except ValueError as exc:
            if "more than 1 value per channel" not in str(exc):
                raise
            if targets.numel() == 1 and self.config.batch_size > 1 and not self.info.enabled:
                return None
            raise NhlError(
                "BatchNorm cannot train on one image whose feature map is 1 pixel "
                f"(a step of {targets.numel()} image); give `batch_size` 2 or more, "
                "or a larger input size"
            ) from None

    def _backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.use_scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def advance_schedule(self, steps_in_epoch: int) -> bool:
        """Set the learning rate for the next step; True when the time budget is spent."""
        budget = self.budget
        if budget is None:
            self.scheduler.step_update(self.step)
            return False
        if steps_in_epoch == budget.WARMUP_STEPS and budget.val_s is None:
            budget.val_s = len(self.val_loader) * _time_validation(
                self.model, self.val_loader, self.info.device, self.config.amp, budget.VAL_PROBE_BATCHES
            )
        done = budget.progress(self.step)
        if self.info.enabled:  # every rank the same learning rate and the same last step
            done = all_sum(self.info, done)[0] / self.info.world_size
        self.scheduler.step_update(done * self.scheduler.t_initial)  # timm takes fractional steps
        return done >= 1.0

    def end_epoch(
        self,
        epoch: int,
        tally: _EpochTally,
        bar: TrainingProgress,
        log: RunLog,
        on_epoch: Callable[[EpochRecord], None] | None,
    ) -> None:
        """Validate, then record the epoch: history, files left out, checkpoint, log row."""
        seen_all, loss_all, hits_all = all_sum(self.info, tally.seen, tally.loss_sum, tally.hits)
        if seen_all == 0:
            raise unreadable_split_error(self.train_loader.dataset, sorted(self.bad_indices))
        val_bad: set[int] = set()
        val = self.validate(epoch, bar, val_bad)
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=loss_all / seen_all,
            train_top1=hits_all / seen_all,
            val_loss=val["loss"],
            val_top1=val["top1"],
            val_top5=val["top5"],
            images_per_s=seen_all / tally.seconds if tally.seconds > 0 else 0.0,
            seconds=tally.seconds,
            lr=sum(lrs) / len(lrs),
        )
        self.result.history.append(record)
        self.result.epochs_done = epoch + 1
        if self.config.skip_bad_images:
            named = bad_image_names(self.train_loader.dataset, _gather(self.info, self.bad_indices))
            named += bad_image_names(self.val_loader.dataset, _gather(self.info, val_bad))
            self.bad_names = sorted(set(self.bad_names) | set(named))
        bar.epoch_done(record)
        if self.info.is_main:
            self.save_checkpoint(epoch + 1)
            log.epoch(self.result.history)  # after the checkpoint: the log never runs ahead of it
            if on_epoch:
                on_epoch(record)
        barrier(self.info)

    def validate(self, epoch: int, bar: TrainingProgress, bad_indices: set[int]) -> dict[str, Any]:
        """The epoch's validation metrics; with a budget, its time, and the run's end if spent."""
        started = time.perf_counter()
        val = evaluate(
            self.model, _batches(self.val_loader), self.info.device, self.info, amp=self.config.amp,
            bad_indices=bad_indices,
        )  # fmt: skip
        if self.budget is not None:
            self.budget.val_s = time.perf_counter() - started
            if self.budget.ended:  # the run is over: its length is what ran, so resume sees it done
                self.config = replace(self.config, epochs=epoch + 1)
                bar.set_epochs(epoch + 1)
        return val

    def run_record(self) -> dict[str, Any]:
        """What ran, as the checkpoint and the model file keep it."""
        return {
            "config": asdict(self.config),
            "history": [asdict(h) for h in self.result.history],
            **({"resumes": self.resumes} if self.resumes else {}),
            **({"bad_images": self.bad_names} if self.bad_names else {}),
            **({"time_budget": self.budget_record()} if self.budget is not None else {}),
        }

    def budget_record(self) -> dict[str, Any]:
        assert self.budget is not None
        lr = float(self.optimizer.param_groups[0]["lr"])
        return self.budget.record(self.result.epochs_done, self.step, lr)

    def save_checkpoint(self, epochs_done: int) -> None:
        options = {"options": dict(self.options)} if self.options else {}
        ckpt.save_checkpoint(
            self.checkpoint_dir, self.model, self.optimizer, self.scheduler, epochs_done, self.step,
            extra={**self.run_record(), **options},
        )  # fmt: skip

    def interrupted(self) -> TrainResult:
        """The result of a run Ctrl-C stopped. The checkpoint on disk is the end of the last whole
        epoch: weights from the middle of an epoch saved as a whole one would make a resume train
        part of that epoch twice."""
        self.result.interrupted = True
        self.result.interrupted_at = {
            "epoch": self.epoch + 1, "steps_done": self.steps_done, "steps": self.steps_per_epoch
        }  # fmt: skip
        return self.result

    def finish(self, output: str | Path | None) -> TrainResult:
        """The result of a run that trained to its end, and the model file (rank 0 writes)."""
        result = self.result
        result.bad_images = self.bad_names
        if self.budget is not None:
            result.time_budget = self.budget_record()
        result.already_done = self.resumed and self.start_epoch >= self.config.epochs
        if output is not None and self.info.is_main:
            from nhlcli.profiling import cost_report

            record = self.run_record()  # the model file keeps the config's fields at the top of its section
            training = {**record.pop("config"), **record}
            save_model(self.model, output, training=training, cost=cost_report(self.model, latency=False))
        barrier(self.info)
        return result


def _gather(info: DistInfo, indices: set[int]) -> list[int]:
    """Every rank's sample indices, sorted (each rank sees only its share of the data)."""
    if not info.enabled:
        return sorted(indices)
    import torch.distributed as dist

    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, sorted(indices))
    return sorted({i for part in parts for i in part})


def _batches(loader: Iterable[Any]) -> Iterator[Any]:
    """``loader``'s batches, with an unreadable image reported in one line wherever it was read.

    A worker process's exception reaches here re-raised by the DataLoader as its own type, so the
    data layer's one-line message is fished back out of it.
    """
    try:
        yield from loader
    except NhlError:
        raise
    except Exception as exc:
        message = unreadable_image_message(exc)
        if message is None:
            raise
        raise NhlError(message) from None
