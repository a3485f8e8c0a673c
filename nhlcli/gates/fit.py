"""Fitting decision gates on a frozen network (paper 004, 2.2).

The network is never trained: one pass over the training data in eval mode collects the
globally pooled output of every gated stage (a few hundred numbers per image), and each gate is
then trained on all of those features independently, as the paper does. Features are
standardised while training (the hinge loss is scale-sensitive) and the scaling is folded back
into the linear layer, so a gate stays one linear layer on the raw pooled features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nhlcli.errors import NhlError
from nhlcli.gates.loss import LOSSES, gate_loss
from nhlcli.model.gated import GatedModel, GateSpec


@dataclass(frozen=True)
class GateTraining:
    """How each gate is trained on the cached features."""

    loss: str = "hinge"
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.01
    weight_decay: float = 1e-4  # the paper's lambda ||w||
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse a recipe that cannot train, when it is made, before any image is read
        (``lr=nan`` would otherwise train every gate to NaN)."""
        if self.loss not in LOSSES:
            raise NhlError(f"{self.loss!r}: choose one of {', '.join(LOSSES)}", "loss")
        if self.epochs < 1 or self.batch_size < 1:
            raise NhlError("gate training needs `epochs` and `batch_size` of at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NhlError(f"{self.lr}: give a positive learning rate, e.g. 0.01", "lr")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise NhlError(f"{self.weight_decay}: give 0 or more", "weight_decay")


def default_stages(model: nn.Module) -> list[int]:
    """Every stage an exit can follow: NHL up to the split point, flat up to its next-to-last."""
    return list(range(model.staged().last_exit + 1))


def super_targets(model: nn.Module) -> torch.Tensor:
    """For each class index, the index of its level-1 node (the routing gate's label)."""
    from nhlcli.model.attention import ancestor_table

    return ancestor_table(model.tree, 1)


@torch.no_grad()
def pooled_features(
    gated: GatedModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    progress: Any = None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Globally pooled stage outputs ``{stage: [N, C]}`` for the gated stages (and the split point
    when routing) and the labels, from one pass of the frozen network."""
    wanted = set(gated.spec.stages)
    if gated.route is not None:
        wanted.add(gated.staged().split)
    last = max(wanted)
    chunks: dict[int, list[torch.Tensor]] = {s: [] for s in wanted}
    labels = []
    gated.eval()
    for images, targets in batches:
        h = images.to(device)
        for s, stage in enumerate(gated.staged().stages[: last + 1]):
            h = stage(h)
            if s in wanted:
                chunks[s].append(h.float().mean(dim=(2, 3)).cpu())
        labels.append(targets.cpu())
        if progress is not None:
            progress(len(targets))
    if not labels:
        raise NhlError("the training data holds no images; gates need labelled images to fit on")
    return {s: torch.cat(c) for s, c in chunks.items()}, torch.cat(labels)


def train_linear(
    features: torch.Tensor, targets: torch.Tensor, outputs: int, config: GateTraining
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A linear classifier on ``features`` with ``config.loss``; returns weight, bias (for the raw
    features) and its training accuracy."""
    generator = torch.Generator().manual_seed(config.seed)
    mean = features.mean(0)
    std = features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    linear = nn.Linear(features.shape[1], outputs)
    with torch.no_grad():
        bound = 1.0 / features.shape[1] ** 0.5
        linear.weight.uniform_(-bound, bound, generator=generator)
        linear.bias.zero_()
    optimizer = torch.optim.AdamW(linear.parameters(), lr=config.lr, weight_decay=0.0)
    n = len(targets)
    steps = config.epochs * max(1, -(-n // config.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            rows = order[start : start + config.batch_size]
            out = linear(z[rows])
            loss = gate_loss(config.loss, out, targets[rows])
            loss = loss + 0.5 * config.weight_decay * linear.weight.pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        weight = linear.weight / std  # fold the standardisation into the layer
        bias = linear.bias - weight @ mean
        accuracy = float(((features @ weight.T + bias).argmax(1) == targets).float().mean())
    return weight, bias, accuracy


def fit_gates(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    stages: Sequence[int] | None = None,
    route: bool | None = None,
    config: GateTraining | None = None,
    device: torch.device | str = "cpu",
    progress: Any = None,
) -> GatedModel:
    """Gates for ``model`` (NHL, expert or flat), trained on ``batches`` of (images, class index).

    ``stages``: where the exit gates go (default :func:`default_stages`); ``route``: also fit the
    routing gate over the tree's level-1 nodes (default: for NHL models with per-node branches).
    """
    config = config or GateTraining()  # a GateTraining checks its own values when made
    device = torch.device(device)
    model = model.to(device).eval()
    if route is None:
        route = model.staged().route_problem is None and len(model.tree.level(1)) > 1
    stages = list(default_stages(model) if stages is None else stages)
    if not stages and not route:
        raise NhlError("no gates to fit: give `stages` or keep the routing gate")
    spec = GateSpec(stages=stages, loss=config.loss, route=route)
    gated = GatedModel(model, spec, check=True).to(device).eval()
    started = time.perf_counter()
    features, labels = pooled_features(gated, batches, device, progress)
    num_classes = len(model.classes)
    if int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise NhlError(f"labels run outside the model's {num_classes} classes; use data matching its tree")
    report: dict[str, Any] = {
        "images": len(labels),
        "loss": config.loss,
        "epochs": config.epochs,
        "gates": [],
    }
    for gate, stage in zip(gated.exits, stages, strict=True):
        weight, bias, acc = train_linear(features[stage], labels, num_classes, config)
        with torch.no_grad():
            gate.linear.weight.copy_(weight)
            gate.linear.bias.copy_(bias)
        report["gates"].append({"stage": stage, "features": features[stage].shape[1], "train_top1": acc})
    if gated.route is not None:
        supers = super_targets(model)[labels]
        weight, bias, acc = train_linear(
            features[gated.staged().split], supers, gated.route.linear.out_features, config
        )
        with torch.no_grad():
            gated.route.linear.weight.copy_(weight)
            gated.route.linear.bias.copy_(bias)
        report["route"] = {
            "stage": gated.staged().split,
            "outputs": gated.route.linear.out_features,
            "train_top1": acc,
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    gated.spec.fit = report
    return gated


__all__ = ["GateTraining", "default_stages", "fit_gates", "pooled_features", "train_linear"]
