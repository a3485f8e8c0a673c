"""A new data set for nhl, whole: four grey shapes drawn in memory, and its registry entry.

This module and ``register_dataset(SPEC)`` are all a data set needs; ``tests/test_dataset_registry.py``
trains, evaluates and reports on it through nhl's library and commands without touching nhl.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from nhlcli.data import DatasetSpec, LabeledDataset
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.tree import Tree

NAME = "tiny-shapes"
SHAPES = ("ring", "disc", "bar", "column")
PER_CLASS = {"train": 12, "val": 5}


class ShapesDataset(LabeledDataset):
    """Each class one shape, drawn ``size`` pixels a side with a little noise (seeded per image)."""

    def __init__(self, split: str, transform: Any = None, mode: str = "L", size: int | None = None) -> None:
        self.split, self.mode, self.transform, self.name = split, mode, transform, NAME
        self.size = size or 16
        self.classes = [ClassEntry(shape, shape) for shape in SHAPES]
        self.targets = np.repeat(np.arange(len(SHAPES)), PER_CLASS[split]).tolist()

    def load_image(self, index: int) -> Image.Image:
        side = self.size
        ys, xs = np.mgrid[0:side, 0:side] - (side - 1) / 2
        radius = np.hypot(ys, xs)
        shape = SHAPES[self.targets[index]]
        mask = {
            "ring": (radius > side / 4) & (radius < side / 2.5),
            "disc": radius < side / 3,
            "bar": np.abs(ys) < side / 8,
            "column": np.abs(xs) < side / 8,
        }[shape]
        noise = np.random.default_rng([self.split == "train", index]).uniform(0, 60, (side, side))
        pixels = (mask * 190 + noise).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "L")
        return image if self.mode == "L" else image.convert(self.mode)

    def sample_name(self, index: int) -> str:
        return f"{NAME} {self.split} image {index}"


def shapes_tree() -> Tree:
    """round (ring, disc) and straight (bar, column)."""
    leaves = {"round": ("ring", "disc"), "straight": ("bar", "column")}
    root = {
        "id": "shape",
        "name": "shape",
        "children": [
            {"id": group, "name": group, "children": [{"id": s, "name": s} for s in shapes]}
            for group, shapes in leaves.items()
        ],
    }
    return Tree.from_nested(root, list(SHAPES), name="tiny-shapes-l2")


def spec(default_tree: str) -> DatasetSpec:
    """The registry entry: grey images (1 input channel), 16 px, held in memory (no loader
    workers), its val split its test set, and a default tree (a file or a shipped name)."""
    return DatasetSpec(
        NAME, ShapesDataset, mode="L", input_size=16, default_tree=default_tree,
        report_names={"val": "test"}, in_memory=True,
    )  # fmt: skip
