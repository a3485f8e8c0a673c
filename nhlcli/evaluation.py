"""Evaluate a model file on a dataset, optionally on a subset of its classes (paper 003, eq. 3)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nhlcli.errors import NhlError
from nhlcli.taxonomy.tree import Tree


class ClassSubset(nn.Module):
    """A model's logits for some of its classes only: the softmax then runs over those (eq. 3)."""

    def __init__(self, model: nn.Module, tree: Tree) -> None:
        super().__init__()
        self.model = model
        self.tree = tree
        self.register_buffer(
            "index",
            torch.tensor([model.tree.class_index(c) for c in tree.classes], dtype=torch.long),
            persistent=False,
        )

    @property
    def classes(self) -> list[str]:
        return self.tree.classes

    def forward(self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        logits = self.model(x, attention) if attention else self.model(x)
        return logits.index_select(1, self.index)


def split_labels(text: str | None) -> list[str]:
    """``"a,b"`` or ``@file`` (one label a line) into labels."""
    if not text:
        return []
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise NhlError(f"--classes {text}: file {path} does not exist")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def evaluate_file(
    model_file: str | Path,
    data: str | Path,
    split: str = "val",
    classes: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
) -> dict[str, Any]:
    """Load a model file and report top-1, top-5, loss and per-class accuracy on ``data``."""
    from nhlcli.data import create_eval_loader
    from nhlcli.model.files import load_model
    from nhlcli.training.loop import evaluate

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(model_file, dev)
    net: nn.Module = model
    labels = split_labels(classes)
    if labels:
        net = ClassSubset(model, model.tree.subtree(labels)).to(dev)
    is_expert = bool(getattr(model, "metadata", {}).get("expert"))
    tree = net.tree  # the model's tree, or the subtree of the requested classes
    inp = model.input_config
    loader = create_eval_loader(
        data,
        tree,
        input_size=inp.size[1],
        mean=inp.mean,
        std=inp.std,
        in_chans=inp.size[0],
        interpolation=inp.interpolation,
        crop_pct=inp.crop_pct,
        split=split,
        batch_size=batch_size,
        workers=workers,
        subset=bool(labels) or is_expert,
    )
    report = evaluate(net, loader, dev)
    report["per_class"] = {tree.node(c).name: acc for c, acc in report["per_class"].items()}
    report["num_classes"] = len(tree.classes)
    report["model"] = str(model_file)
    report["data"] = str(data)
    report["split"] = split
    return report
