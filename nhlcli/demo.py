"""The main job end to end on the built-in default, Fashion-MNIST (``nhl demo``).

Tree from WordNet (the shipped tree when WordNet is not installed), a short training of the
default configuration, evaluation, a footwear expert (sandal, sneaker, ankle boot) cut out of
the trained model, its cost report, and a closing comparison of full model against expert.
Every step is the library call the matching ``nhl`` command makes, so the demo doubles as a
script to copy from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhlcli.errors import NhlError

# The default Fashion-MNIST configuration (the README's and the benchmark's: 10 epochs). The
# demo trains as many epochs as fit its training budget on the machine it runs on (measured
# before training), at most DEMO_EPOCHS, so that the whole demo stays within 10 minutes.
DEFAULT_EPOCHS = 10
DEMO_EPOCHS = 8
TRAIN_BUDGET_S = 450.0
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
RECIPE: dict[str, Any] = {
    "backbone": "resnet18",
    "input_size": 32,
    "batch_size": 128,
    "lr": 3e-3,
    "warmup_epochs": 0.3,
    "augment": "none",
    "crop_scale": "0.8,1",
    "label_smoothing": 0.1,
    "workers": 1,
}
FOOTWEAR = ("sandal", "sneaker", "ankle boot")
SHIPPED_TREE = "fashion-mnist-wordnet-l2"


def measure_train_rate(model: Any, steps: int = 6) -> float:
    """Training images per second of ``model`` with the demo's recipe, on random batches.

    Runs a few optimiser steps on a copy (the model itself is untouched) with the training
    loop's precision and memory layout, so the demo can size its training to the machine.
    """
    import copy

    import torch
    import torch.nn.functional as F

    from nhlcli.training.loop import _autocast

    probe = copy.deepcopy(model).train()
    probe.trunk.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=RECIPE["lr"])
    size = RECIPE["input_size"]
    batch = RECIPE["batch_size"]
    images = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, len(model.classes), (batch,))
    device = torch.device("cpu")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with _autocast(device, True, training=True):
            loss = F.cross_entropy(probe(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    warm = sorted(times[1:])  # the first step pays for kernel selection
    return batch / warm[len(warm) // 2]


def epochs_for_budget(rate: float, budget_s: float = TRAIN_BUDGET_S, most: int = DEMO_EPOCHS) -> int:
    """How many epochs (each one pass over the training images and one over the test images at
    about three times the training rate) fit ``budget_s`` at ``rate`` images/s, with a 25% margin
    for data loading; at least 1, at most ``most``."""
    epoch_s = (TRAIN_IMAGES + TEST_IMAGES / 3) / rate * 1.25
    return max(1, min(most, int(budget_s // epoch_s)))


def recipe_args(epochs: int = DEFAULT_EPOCHS) -> list[str]:
    """The recipe as ``nhl train`` options."""
    args = []
    for key, value in {**RECIPE, "epochs": epochs}.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


@dataclass
class DemoResult:
    """What the demo made and measured (``summary()`` is its ``--json`` output)."""

    workdir: Path
    tree_source: str
    epochs: int
    train_seconds: float = 0.0
    full: dict[str, Any] = field(default_factory=dict)
    expert: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "tree_source": self.tree_source,
            "epochs": self.epochs,
            "train_seconds": round(self.train_seconds, 1),
            "full": self.full,
            "expert": self.expert,
            "seconds": round(self.seconds, 1),
        }


def demo_tree() -> tuple[Any, str]:
    """Fashion-MNIST's tree built from WordNet, or the shipped one when WordNet is missing."""
    from nhlcli.taxonomy import build_tree, shipped_tree
    from nhlcli.taxonomy.classes import FASHION_MNIST

    try:
        return build_tree("wordnet", FASHION_MNIST, levels=2, name="fashion-mnist-wordnet-l2"), "wordnet"
    except NhlError:
        return shipped_tree(SHIPPED_TREE), f"shipped ({SHIPPED_TREE}; WordNet is not installed)"


def run_demo(
    workdir: str | Path,
    epochs: int | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    batch_size: int = 16,
) -> DemoResult:
    """Run every step, writing tree, model, expert and report into ``workdir``.

    ``epochs=None`` trains as many epochs as fit the training budget on this machine (at most
    ``DEMO_EPOCHS``), measured on a few steps before training starts.
    """
    from nhlcli.evaluation import evaluate_file
    from nhlcli.experts import compare, cutout_with_cost, save_expert
    from nhlcli.model.nhl import with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.training.loop import TrainConfig, train

    if epochs is not None and epochs < 1:
        raise NhlError(f"--epochs must be at least 1, got {epochs}")
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tree, source = demo_tree()
    tree_file = tree.save(workdir / "tree.json")
    result = DemoResult(workdir, source, epochs or 0)
    say(f"1/5 tree: {len(tree.classes)} classes, {tree.levels} levels, from {source} -> {tree_file}")

    model = create_model(tree, "nhl", TrunkConfig(RECIPE["backbone"], None, 1))
    model.input_config = with_input_size(model.input_config, RECIPE["input_size"])
    how = ""
    if epochs is None:
        rate = measure_train_rate(model)
        epochs = epochs_for_budget(rate)
        budget = f"{TRAIN_BUDGET_S / 60:.1f}-minute training budget"
        how = f" (fits the {budget} at {rate:.0f} img/s; --epochs to choose)"
    result.epochs = epochs
    config = TrainConfig(
        epochs=epochs,
        batch_size=RECIPE["batch_size"],
        lr=RECIPE["lr"],
        warmup_epochs=RECIPE["warmup_epochs"],
        augment=None,
        crop_scale=(0.8, 1.0),
        label_smoothing=RECIPE["label_smoothing"],
        workers=RECIPE["workers"],
    )
    say(f"2/5 training {RECIPE['backbone']} NHL on Fashion-MNIST for {epochs} epoch(s){how}")
    full_file = workdir / "fashion-nhl.safetensors"
    t0 = time.perf_counter()
    run = train(model, "fashion-mnist", full_file, config, progress=progress)
    if run.interrupted:
        raise KeyboardInterrupt
    result.train_seconds = time.perf_counter() - t0

    say("3/5 evaluating on the 10,000 test images")
    workers = RECIPE["workers"]
    full_eval = evaluate_file(full_file, "fashion-mnist", workers=workers)
    footwear_eval = evaluate_file(full_file, "fashion-mnist", classes=",".join(FOOTWEAR), workers=workers)

    say(f"4/5 cutting the footwear expert ({', '.join(FOOTWEAR)})")
    cut, full_cost, expert_cost = cutout_with_cost(full_file, list(FOOTWEAR), (1, batch_size))
    expert_file = workdir / "footwear-expert.safetensors"
    save_expert(cut, expert_file, cost=expert_cost)

    say("5/5 evaluating the expert on the footwear test images")
    expert_eval = evaluate_file(expert_file, "fashion-mnist", workers=workers)
    result.full = {
        "file": str(full_file),
        "top1": full_eval["top1"],
        "top1_on_footwear": footwear_eval["top1"],
        "cost": full_cost,
    }
    result.expert = {
        "file": str(expert_file),
        "classes": list(FOOTWEAR),
        "top1": expert_eval["top1"],
        "images": expert_eval["images"],
        "cut_seconds": round(cut.seconds, 3),
        "cost": expert_cost,
        "reduction_percent": compare(full_cost, expert_cost),
    }
    result.seconds = time.perf_counter() - started
    return result
