"""Cost against the number of kept classes: how much an expert of k classes saves.

Two selections per k bound what a user can expect: ``related`` keeps k neighbouring classes in
tree order (they share ancestors, so the fewest branch nodes survive), ``random`` keeps k classes
drawn at random (seeded; they share the fewest ancestors). Beside a model's own curve,
:func:`variant_curves` draws the same tree and trunk under each NHL variant preset (the paper's
``nhl``, ``nhl-lean`` and ``nhl-scale``) and :func:`base_network_macs` the plain network's cost,
the line an expert has to stay under to be worth cutting.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from nhlcli.atomic import atomic_write
from nhlcli.errors import NhlError
from nhlcli.experts.cutout import cut_model
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.profiling import count_macs

CURVE_VARIANTS = ("nhl", "nhl-lean", "nhl-scale")  # the presets drawn beside a model's own curve

STEPS = (1, 2, 5)


def default_points(num_classes: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to and including ``num_classes``."""
    points, scale = [], 1
    while scale <= num_classes:
        points += [s * scale for s in STEPS if s * scale < num_classes]
        scale *= 10
    return sorted(set(points)) + [num_classes]


def cost_curve(model: nn.Module, points: Sequence[int] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Params and GMACs of experts of k classes, for each k in ``points`` and both selections."""
    problem = getattr(model, "cut_problem", "cannot be cut into experts")
    if problem:
        raise NhlError(f"a cost curve cuts experts, and this model {problem}")
    tree = model.tree
    leaves = tree.level(tree.levels)
    points = sorted(set(points or default_points(len(leaves))))
    if not points or points[0] < 1 or points[-1] > len(leaves):
        raise NhlError(f"curve points must lie between 1 and {len(leaves)} classes")
    rng = random.Random(seed)
    rows = []
    for k in points:
        for selection, labels in (("related", leaves[:k]), ("random", rng.sample(leaves, k))):
            expert = model if k == len(leaves) else cut_model(model, labels)
            groups = expert.parameter_groups()
            rows.append(
                {
                    "classes": k,
                    "selection": selection,
                    "params": groups["total"],
                    "branch_params": groups["branches"],
                    "gmacs": round(count_macs(expert) / 1e9, 6),
                }
            )
    return rows


def variant_curves(model: nn.Module, points: Sequence[int] | None = None, seed: int = 0) -> dict[str, list]:
    """Random-selection curves of the same tree, trunk and input under each preset of
    :data:`CURVE_VARIANTS` whose branches differ from ``model``'s (untrained weights: cost only)."""
    curves = {}
    for variant in CURVE_VARIANTS:
        other = create_model(model.tree, variant, model.trunk.config)
        if other.branch_config == model.branch_config:
            continue
        other.input_config = model.input_config
        rows = cost_curve(other.eval(), points, seed)
        curves[variant] = [r for r in rows if r["selection"] == "random"]
    return curves


def base_network_macs(model: nn.Module) -> int:
    """Multiply-accumulates of the plain timm network the model's trunk comes from, with a
    classifier over the same classes, at the same input."""
    trunk = model.trunk.config
    base = create_model(model.tree, "flat", TrunkConfig(trunk.backbone, None, trunk.in_chans))
    base.input_config = model.input_config
    return count_macs(base)


def plot_cost_curve(
    rows: Sequence[dict[str, Any]],
    output: str | Path,
    title: str,
    variants: dict[str, Sequence[dict[str, Any]]] | None = None,
    base_gmacs: float | None = None,
) -> Path:
    """A PNG of params and GMACs against kept classes (log x), written atomically; other
    variants' random-selection curves dotted, the base network's GMACs as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in ((axes[0], "params", "parameters (M)"), (axes[1], "gmacs", "GMACs per image")):
        for selection, style in (("related", "o-"), ("random", "s--")):
            points = [r for r in rows if r["selection"] == selection]
            scale = 1e6 if key == "params" else 1.0
            ax.plot([r["classes"] for r in points], [r[key] / scale for r in points], style,
                    label=f"{selection} classes")  # fmt: skip
        for name, points in (variants or {}).items():
            scale = 1e6 if key == "params" else 1.0
            ax.plot([r["classes"] for r in points], [r[key] / scale for r in points], ":",
                    label=f"{name} (same tree, random classes)")  # fmt: skip
        if key == "gmacs" and base_gmacs is not None:
            ax.axhline(base_gmacs, color="grey", linestyle="-.", label="base network")
        ax.set_xscale("log")
        ax.set_xlabel("classes kept by the expert")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    try:
        return atomic_write(output, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
