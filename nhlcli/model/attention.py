"""Top-down attention (paper 003, 4.4): scale chosen classes' branch feature maps at inference.

An NHL model knows which feature maps belong to which category: each tree node owns a branch.
Multiplying a node's output maps by a scalar (above 1 amplifies, below 1 inhibits) steers the
prediction without retraining. The result is the ``attention`` mapping ``NHLModel.forward``
takes: level (1-based) to one scale per node of that level, or one per sample and node.

Levels: by default the last branch level (each class's own branch, as the paper's PHL test);
a level number picks that level (a class then acts through its ancestor there, an inner node
through all of its descendants there); ``"path"`` scales every level on the path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nhlcli.errors import NhlError
from nhlcli.taxonomy.tree import Tree

PATH = "path"


def check_attend(pairs: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """``[("tabby", 2.0), ("dog", 0.5)]`` checked: finite scales >= 0, each class named once."""
    checked: list[tuple[str, float]] = []
    for label, scale in pairs:
        label, scale = str(label).strip(), float(scale)
        if not label:
            raise NhlError("has an empty class name; name each class to scale", "attend")
        if not math.isfinite(scale) or scale < 0:
            raise NhlError(
                f"{label}={scale:g}: the scale must be a finite number >= 0 (1 = unchanged)", "attend"
            )
        for earlier, value in checked:
            if earlier == label:
                raise NhlError(
                    f"names {label!r} twice ({earlier}={value:g} and {label}={scale:g}); give each class "
                    "one scale",
                    "attend",
                )
        checked.append((label, scale))
    return checked


def attention_levels(tree: Tree, level: int | str | None) -> list[int]:
    """The branch levels attention acts on: ``None`` = the last, an int, or ``"path"`` = all."""
    if level is None:
        return [tree.levels]
    if str(level).lower() in (PATH, "all"):
        return list(range(1, tree.levels + 1))
    try:
        depth = int(level)
    except ValueError:
        raise NhlError(f"{level!r}: give a level from 1 to {tree.levels} or 'path'", "attend_level") from None
    if not 1 <= depth <= tree.levels:
        raise NhlError(f"{depth}: this model's branches have levels 1 to {tree.levels}", "attend_level")
    return [depth]


def _check_attendable(model: torch.nn.Module) -> Tree:
    problem = getattr(model, "attention_problem", "top-down attention needs a model with per-class branches")
    if problem:
        raise NhlError(problem)
    return model.tree


def class_attention(
    model: torch.nn.Module, attend: Sequence[tuple[str, float]], level: int | str | None = None
) -> dict[int, torch.Tensor]:
    """Per-level node scales for ``--attend CLASS=SCALE``.

    Names resolve as ``--classes`` does (a class, an inner node, or a WordNet concept: the nodes
    above and below its classes). Each takes one scale: naming the same classes twice (also by
    two spellings, e.g. name and WordNet id) is refused, since the user would expect one of them
    to win. Scales of overlapping names (an inner node and a class below it) meet on shared nodes
    and multiply there.
    """
    tree = _check_attendable(model)
    matches = tree.select([label for label, _ in attend], option="attend").matches
    named: dict[tuple[str, ...], str] = {}
    for match in matches:
        if match.classes in named:
            raise NhlError(
                f"names the same classes twice ({named[match.classes]!r} and {match.name!r}); "
                "give each class one scale",
                "attend",
            )
        named[match.classes] = match.name
    attention = {}
    for depth in attention_levels(tree, level):
        position = {n: i for i, n in enumerate(tree.level(depth))}
        scale = torch.ones(len(position))
        for match, (_, value) in zip(matches, attend, strict=True):
            for node in {tree.path(c)[depth] for c in match.classes}:
                scale[position[node]] *= value
        attention[depth] = scale
    return attention


def ancestor_table(tree: Tree, depth: int) -> torch.Tensor:
    """For each class index, the position of its ancestor (itself at the last level) at ``depth``."""
    position = {n: i for i, n in enumerate(tree.level(depth))}
    return torch.tensor([position[tree.path(c)[depth]] for c in tree.classes], dtype=torch.long)


class TruthAttention:
    """The paper's oracle experiment: each image's own class path scaled by ``scale``.

    Call with a batch's targets (class indices) to get the per-sample attention mapping.
    """

    def __init__(self, model: torch.nn.Module, scale: float, level: int | str | None = None) -> None:
        tree = _check_attendable(model)
        if not math.isfinite(scale) or scale < 0:
            raise NhlError(f"{scale}: the scale must be a finite number >= 0", "attend_truth")
        self.scale = float(scale)
        self.tables = {d: ancestor_table(tree, d) for d in attention_levels(tree, level)}
        self.sizes = {d: len(tree.level(d)) for d in self.tables}

    def __call__(self, targets: torch.Tensor) -> dict[int, torch.Tensor]:
        rows = torch.arange(len(targets))
        attention = {}
        for depth, table in self.tables.items():
            scale = torch.ones(len(targets), self.sizes[depth])
            scale[rows, table[targets.cpu()]] = self.scale
            attention[depth] = scale.to(targets.device)
        return attention
