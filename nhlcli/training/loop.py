"""The training loop shared by NHL and flat models: one loop, so comparisons are like for like.

AdamW or SGD, cosine schedule with warmup (timm), timm's transforms with RandAugment, mixed
precision on GPU, a fixed seed, validation every epoch, an atomic checkpoint every epoch,
``resume``, Ctrl-C that saves and stops cleanly, and DDP under torchrun (rank 0 writes).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nhlcli.errors import NhlError
from nhlcli.model.files import save_model
from nhlcli.training import checkpoint as ckpt
from nhlcli.training.distributed import DistInfo, all_sum, barrier, setup, teardown


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


@dataclass
class TrainResult:
    """What a run reached; ``interrupted`` when Ctrl-C stopped it (a checkpoint was saved)."""

    output: str | None
    checkpoint_dir: str
    epochs_done: int
    history: list[EpochRecord] = field(default_factory=list)
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else None
        return {
            "output": self.output,
            "checkpoint_dir": self.checkpoint_dir,
            "epochs_done": self.epochs_done,
            "interrupted": self.interrupted,
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
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix maths natively (AVX512-BF16 or AMX), so that CPU
    autocast speeds training up instead of emulating bf16 in software."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _autocast(device: torch.device, enabled: bool, training: bool = False) -> Any:
    """Mixed precision: fp16/bf16 on GPU; bf16 for CPU training where the CPU has native bf16
    (evaluation on CPU stays float32, so reported accuracies match the exported expert's)."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and enabled and training and cpu_has_fast_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


Scales = Mapping[int, torch.Tensor]  # top-down attention: level -> per-node (or per-sample) scales


class Tally:
    """Running counts of one evaluation: per-class hits, top-5 hits and summed loss, so that
    several evaluations can share one pass over the data (and DDP ranks sum them at the end)."""

    def __init__(self, num_classes: int) -> None:
        self.correct = torch.zeros(num_classes, dtype=torch.float64)
        self.total = torch.zeros(num_classes, dtype=torch.float64)
        self.top5_hits = 0.0
        self.loss_sum = 0.0
        self.k = min(5, num_classes)

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.float()
        self.loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(self.k, dim=1).indices
        hit1 = (top[:, 0] == targets).double().cpu()
        self.top5_hits += (top == targets[:, None]).any(dim=1).sum().item()
        t = targets.cpu()
        self.correct.index_add_(0, t, hit1)
        self.total.index_add_(0, t, torch.ones_like(hit1))

    def report(self, classes: list[str], info: DistInfo) -> dict[str, Any]:
        """Top-1, top-5, mean loss and per-class accuracy, summed over DDP ranks."""
        num_classes = len(classes)
        counts = all_sum(info, self.top5_hits, self.loss_sum, *self.correct.tolist(), *self.total.tolist())
        top5_hits, loss_sum = counts[0], counts[1]
        correct = torch.tensor(counts[2 : 2 + num_classes])
        total = torch.tensor(counts[2 + num_classes :])
        n = float(total.sum())
        if n == 0:
            raise NhlError("the evaluation data holds no images")
        per_class = {
            c: (float(correct[i] / total[i]) if total[i] > 0 else None) for i, c in enumerate(classes)
        }
        return {
            "images": int(n),
            "top1": float(correct.sum() / n),
            "top5": top5_hits / n,
            "top5_k": self.k,
            "loss": loss_sum / n,
            "per_class": per_class,
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    info: DistInfo | None = None,
    attention: Scales | Callable[[torch.Tensor], Scales] | None = None,
    amp: bool = True,
) -> dict[str, Any]:
    """Top-1, top-5, mean loss and per-class accuracy over ``loader`` (summed over DDP ranks).

    ``attention``: per-level node scales for every batch, or a callable giving them from each
    batch's targets (per-sample attention, e.g. :class:`~nhlcli.model.attention.TruthAttention`).
    """
    info = info or DistInfo(device=device)
    model.eval()
    tally = Tally(len(model.classes))
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        scales = attention(targets) if callable(attention) else attention
        with _autocast(device, amp):
            logits = model(images, scales) if scales else model(images)
        tally.add(logits, targets)
    return tally.report(list(model.classes), info)


def train(
    model: nn.Module,
    data: str | Path,
    output: str | Path | None,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    loaders: tuple[Any, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` (ImageFolder directory or ``fashion-mnist``) and save it.

    Checkpoints go to ``checkpoint_dir`` (default: ``<output>.ckpt``) after every epoch;
    ``resume`` continues from there. Under torchrun every rank calls this; rank 0 writes.
    """
    info = setup(config.device)
    try:
        return _train(model, data, output, config, checkpoint_dir, resume, progress, on_epoch, loaders, info)
    finally:
        teardown(info)


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
    )


def _train(
    model: nn.Module,
    data: str | Path,
    output: str | Path | None,
    config: TrainConfig,
    checkpoint_dir: str | Path | None,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[EpochRecord], None] | None,
    loaders: tuple[Any, Any] | None,
    info: DistInfo,
) -> TrainResult:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0:
        raise NhlError("--epochs and --batch-size must be at least 1 and --lr positive")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise NhlError(f"--label-smoothing must lie in [0, 1), got {config.label_smoothing}")
    if checkpoint_dir is None:
        if output is None:
            raise NhlError("give an output file or a checkpoint directory")
        checkpoint_dir = Path(f"{output}.ckpt")
    checkpoint_dir = Path(checkpoint_dir)
    seed_everything(config.seed + info.rank)
    device = info.device
    model.to(device)
    # oneDNN and cuDNN convolutions run faster channels-last; the branches already are
    channels_last = _set_trunk_memory_format(model, torch.channels_last)
    train_loader, val_loader = loaders or _make_loaders(model, data, config, info)
    steps_per_epoch = len(train_loader)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise NhlError(f"{data}: the training split holds no images")
    try:
        optimizer = create_optimizer_v2(
            model,
            opt=config.optimizer,
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
        )
    except (ValueError, AssertionError) as exc:
        raise NhlError(f"--optimizer {config.optimizer!r}: {exc}; use adamw or sgd") from exc
    total_steps = config.epochs * steps_per_epoch
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps, 2),  # timm warns about a 1-step cosine
        warmup_t=int(config.warmup_epochs * steps_per_epoch),
        warmup_lr_init=config.lr * 0.01,
        lr_min=config.lr * 1e-3,
        t_in_epochs=False,
    )
    start_epoch, step, history = 0, 0, []
    if resume:
        state = ckpt.load_checkpoint(checkpoint_dir)
        if state.meta["model"] != model.config():
            raise NhlError(
                f"the checkpoint in {checkpoint_dir} is for a different model or tree; resume with the "
                "same options or delete the directory"
            )
        ckpt.restore(state, model, optimizer, scheduler)
        start_epoch, step = state.epoch, state.step
        history = [EpochRecord(**h) for h in state.meta.get("extra", {}).get("history", [])]
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and config.amp else None
    use_scaler = scaler is not None and not torch.cuda.is_bf16_supported()
    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
        )
    result = TrainResult(str(output) if output else None, str(checkpoint_dir), start_epoch, history)

    def save_state(epochs_done: int, **flags: Any) -> None:
        extra = {"history": [asdict(h) for h in history], "config": asdict(config), **flags}
        ckpt.save_checkpoint(checkpoint_dir, model, optimizer, scheduler, epochs_done, step, extra=extra)

    bar = _Progress(progress and info.is_main, config.epochs, steps_per_epoch, start_epoch)
    epoch = start_epoch
    try:
        with bar:
            for epoch in range(start_epoch, config.epochs):
                sampler = getattr(train_loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                net.train()
                started, seen, loss_sum, hits = time.perf_counter(), 0, 0.0, 0
                for i, (images, targets) in enumerate(train_loader):
                    if i >= steps_per_epoch:
                        break
                    images, targets = (
                        images.to(device, non_blocking=True),
                        targets.to(device, non_blocking=True),
                    )
                    if channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    with _autocast(device, config.amp, training=True):
                        logits = net(images)
                        loss = F.cross_entropy(
                            logits.float(), targets, label_smoothing=config.label_smoothing
                        )
                    if not math.isfinite(loss.item()):
                        raise NhlError(f"the loss became {loss.item()} at step {step}; lower --lr")
                    optimizer.zero_grad(set_to_none=True)
                    if use_scaler:
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        optimizer.step()
                    step += 1
                    scheduler.step_update(step)
                    seen += targets.numel()
                    loss_sum += loss.item() * targets.numel()
                    hits += int((logits.argmax(1) == targets).sum())
                    rate = seen * info.world_size / (time.perf_counter() - started)
                    bar.step(epoch, i + 1, loss_sum / seen, hits / seen, rate)
                seconds = time.perf_counter() - started
                seen_all, loss_all, hits_all = all_sum(info, seen, loss_sum, hits)
                val = evaluate(model, val_loader, device, info, amp=config.amp)
                record = EpochRecord(
                    epoch=epoch + 1,
                    train_loss=loss_all / max(seen_all, 1),
                    train_top1=hits_all / max(seen_all, 1),
                    val_loss=val["loss"],
                    val_top1=val["top1"],
                    val_top5=val["top5"],
                    images_per_s=seen_all / seconds if seconds > 0 else 0.0,
                    seconds=seconds,
                )
                history.append(record)
                result.epochs_done = epoch + 1
                bar.epoch_done(record)
                if info.is_main:
                    save_state(epoch + 1)
                    if on_epoch:
                        on_epoch(record)
                barrier(info)
    except KeyboardInterrupt:
        if info.is_main:
            save_state(epoch, interrupted=True)
        result.interrupted = True
        return result
    finally:  # hand back the model laid out as a loaded one is, so both give identical logits
        _set_trunk_memory_format(model, torch.contiguous_format)
    if output is not None and info.is_main:
        from nhlcli.experts.cost import cost_report

        training = {**asdict(config), "history": [asdict(h) for h in history]}
        save_model(model, output, training=training, cost=cost_report(model, latency=False))
    barrier(info)
    return result


class _Progress:
    """A rich progress bar: epoch, step, loss, accuracy, images/s and time left (rank 0 only)."""

    def __init__(self, enabled: bool, epochs: int, steps: int, start_epoch: int) -> None:
        self.enabled = enabled
        self.epochs, self.steps = epochs, steps
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}  {task.fields[rate]:.0f} img/s"
                ),
                TextColumn("{task.fields[val]}"),
                TimeRemainingColumn(),
            )
            self.task = self.progress.add_task(
                "train",
                total=epochs * steps,
                completed=start_epoch * steps,
                epoch=start_epoch + 1,
                epochs=epochs,
                loss=0.0,
                acc=0.0,
                rate=0.0,
                val="",
            )

    def __enter__(self) -> _Progress:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def step(self, epoch: int, i: int, loss: float, acc: float, rate: float) -> None:
        if self.progress:
            self.progress.update(
                self.task, completed=epoch * self.steps + i, epoch=epoch + 1, loss=loss, acc=acc, rate=rate
            )

    def epoch_done(self, record: EpochRecord) -> None:
        if self.progress:
            self.progress.update(self.task, val=f"val {record.val_top1:.1%}")
            self.progress.console.print(
                f"epoch {record.epoch}: train loss {record.train_loss:.3f} acc {record.train_top1:.1%}, "
                f"val top-1 {record.val_top1:.1%} top-5 {record.val_top5:.1%}, "
                f"{record.images_per_s:.0f} img/s, {record.seconds:.0f} s"
            )
