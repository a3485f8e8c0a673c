"""Experts against what an engineer would otherwise ship at the same cost (issue 20).

An expert is cut from the full NHL without training. The alternatives a practitioner would try
for the same classes and the same GMACs both start from the trained flat network:

- ``pruned``: structured channel pruning (torch-pruning, L2 magnitude of each coupled channel
  group, the classifier kept whole) until the network costs no more than the expert, then
  fine-tuned on all classes and evaluated with the softmax over the expert's classes (eq. 3);
- ``pruned + subset``: the same pruned network with the classifier cut to the expert's classes,
  fine-tuned on those classes' images only.

Both fine-tune for the same number of steps (``STEPS``: one epoch of Fashion-MNIST at the
recipe's batch), AdamW with a cosine schedule from a tenth of the recipe's peak rate; MACs are
counted with ``torch.utils.flop_counter`` like every cost report of nhl.

    python benchmarks/matched_controls.py --flat models/flat.safetensors --expert models/footwear.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nhlcli.data import open_dataset
from nhlcli.data.loaders import model_loader
from nhlcli.devices import resolve_device
from nhlcli.evaluation import ClassSubset, evaluate
from nhlcli.model.loading import open_model
from nhlcli.profiling import count_macs
from nhlcli.training import TrainConfig, train

BATCH = 128
STEPS = math.ceil(60_000 / BATCH)  # one epoch of Fashion-MNIST's training set
LR = 3e-4  # a tenth of the recipe's peak rate: fine-tuning, not training afresh
PRUNE_STEPS = 200  # channels go in steps of 0.5% of each layer until the MACs fit


def prune_to_macs(model: nn.Module, target_macs: int) -> dict[str, Any]:
    """Prune a flat model's channels (in place) until one image costs at most ``target_macs``."""
    import torch_pruning as tp

    net = model.model
    example = torch.zeros(1, *model.input_config.size)
    pruner = tp.pruner.MetaPruner(
        net,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=1.0,
        iterative_steps=PRUNE_STEPS,
        ignored_layers=[model.classifier()],
    )
    before, steps = count_macs(model), 0
    while count_macs(model) > target_macs:
        if steps == PRUNE_STEPS:
            raise RuntimeError(f"pruning did not reach {target_macs} MACs in {PRUNE_STEPS} steps")
        pruner.step()
        steps += 1
    return {
        "macs_before": before,
        "macs": count_macs(model),
        "params": sum(p.numel() for p in model.parameters()),
        "prune_steps": steps,
    }


def keep_classes(model: nn.Module, classes: Sequence[str]) -> nn.Module:
    """The flat model with its classifier cut to ``classes`` (their rows, in tree order)."""
    subtree = model.tree.select(list(classes)).subtree(model.tree)
    head = model.classifier()
    rows = torch.tensor([model.tree.class_index(c) for c in subtree.classes])
    cut = nn.Linear(head.in_features, len(rows))
    with torch.no_grad():
        cut.weight.copy_(head.weight[rows])
        cut.bias.copy_(head.bias[rows])
    parent, _, leaf = model.model.pretrained_cfg["classifier"].rpartition(".")  # timm names it
    setattr(model.model.get_submodule(parent) if parent else model.model, leaf, cut)
    model.tree = subtree
    return model


def fine_tune(model: nn.Module, data: str, classes: Sequence[str], seed: int, lr: float) -> dict[str, Any]:
    """``STEPS`` optimiser steps on ``data`` (only ``classes``' images when given)."""
    dataset = open_dataset(data, "train")
    wanted = {i for i, entry in enumerate(dataset.classes) if not classes or entry.id in classes}
    images = sum(1 for t in dataset.targets if t in wanted)
    per_epoch = math.ceil(images / BATCH)
    epochs = math.ceil(STEPS / per_epoch)
    config = TrainConfig(
        epochs=epochs,
        batch_size=BATCH,
        lr=lr,
        warmup_epochs=0.0,
        label_smoothing=0.1,
        seed=seed,
        workers=1,
        augment=None,
        crop_scale=(0.8, 1.0),
        max_steps_per_epoch=math.ceil(STEPS / epochs),
        classes=tuple(classes),
    )
    with tempfile.TemporaryDirectory() as ckdir:
        result = train(model, data, None, config, checkpoint_dir=ckdir)
    return {"steps": epochs * min(per_epoch, config.max_steps_per_epoch), "epochs": epochs,
            "train_wall_s": round(sum(r.seconds for r in result.history), 1)}  # fmt: skip


def subset_top1(model: nn.Module, data: str, classes: Sequence[str]) -> float:
    """Top-1 on the test images of ``classes``, softmax over them (eq. 3)."""
    net = model
    if list(model.tree.classes) != list(classes):
        net = ClassSubset(model, model.tree.select(list(classes)).subtree(model.tree))
    loader = model_loader(model, data, "val", 256, 1, tree=net.tree, subset=True)
    return evaluate(net, loader, resolve_device(None))["top1"]


def measure(flat: Path, expert: Path, data: str, seed: int, lr: float) -> dict[str, Any]:
    """Both controls for one expert: cost, steps and top-1 on the expert's classes."""
    target = open_model(expert)
    classes = list(target.tree.classes)
    target_macs = count_macs(target)
    rows: dict[str, Any] = {"classes": classes, "expert_macs": target_macs}
    for name, subset_only in (("pruned", False), ("pruned + subset", True)):
        torch.manual_seed(seed)
        model = open_model(flat).train()
        pruned = prune_to_macs(model, target_macs)
        if subset_only:
            keep_classes(model, classes)
        tuned = fine_tune(model, data, classes if subset_only else (), seed, lr)
        rows[name] = {**pruned, **tuned, "top1": subset_top1(model.eval(), data, classes)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flat", type=Path, required=True, help="the trained flat model to prune")
    parser.add_argument(
        "--expert", type=Path, required=True, help="the expert whose classes and GMACs to match"
    )
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lr", type=float, default=LR, help="peak fine-tuning rate (default: the recipe's / 10)"
    )
    args = parser.parse_args()
    print(json.dumps(measure(args.flat, args.expert, args.data, args.seed, args.lr), indent=2))


if __name__ == "__main__":
    main()
