"""What ``nhl profile`` reports of a model file, as data a notebook can read.

The cost is measured on the network itself (a gated file's base network: its exits are reported
beside it), an expert adds its lineage and the costs recorded when it was cut, and a cost curve
(parameters and GMACs against the number of kept classes) can be drawn beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nhlcli.profiling import compare, cost_report
from nhlcli.taxonomy.tree import Tree


def tree_summary(tree: Tree) -> dict[str, Any]:
    """A tree's name, classes, levels and nodes per level: how reports describe it."""
    return {
        "name": tree.name,
        "classes": len(tree.classes),
        "levels": tree.levels,
        "nodes_per_level": [len(tree.level(d)) for d in range(1, tree.levels + 1)],
    }


def expert_lineage(meta: dict[str, Any]) -> dict[str, Any] | None:
    """An expert's parent and the parent's and expert's costs recorded at cut time (``None``
    for a file that is not an expert)."""
    lineage = meta.get("expert")
    if not lineage:
        return None
    at_cut = {"parent": lineage.get("parent_cost"), "expert": meta.get("cost")}
    return {
        "parent_file": lineage["parent_file"],
        "parent_sha256": lineage["parent_sha256"],
        "parent_classes": lineage["parent_classes"],
        "at_cut": at_cut,
        "reduction_percent": compare(at_cut["parent"], at_cut["expert"]) if all(at_cut.values()) else None,
    }


def draw_cost_curve(model: Any, curve: str | Path, title: str) -> dict[str, Any]:
    """Params and GMACs against kept classes, beside the other NHL variants, drawn to ``curve``."""
    from nhlcli.experts.curve import base_network_macs, cost_curve, plot_cost_curve, variant_curves

    rows = cost_curve(model)
    variants = variant_curves(model)
    base_gmacs = round(base_network_macs(model) / 1e9, 6)
    plot_cost_curve(rows, curve, title, variants, base_gmacs)
    return {"file": str(curve), "points": rows, "variants": variants, "base_gmacs": base_gmacs}


def profile_model_file(
    model_file: str | Path,
    batches: tuple[int, ...] = (1, 16),
    *,
    latency: bool = True,
    repeats: int = 20,
    threads: int | None = None,
    curve: str | Path | None = None,
) -> dict[str, Any]:
    """Params, GMACs, latency and peak memory of a model file (its base network), its exits where
    it has gates, its lineage where it is an expert, and its cost curve drawn to ``curve``."""
    from nhlcli.model.loading import open_model

    model = open_model(model_file)
    meta = model.metadata
    base = model.base_network  # the cost of the network any gates sit on; the exits beside it
    result: dict[str, Any] = {
        "file": str(model_file),
        "kind": meta["kind"],
        "backbone": meta["trunk"]["backbone"],
        "tree": tree_summary(base.tree),
        "cost": cost_report(base, batches, latency=latency, repeats=repeats, threads=threads),
    }
    exits = model.exit_report()
    if exits is not None:
        result["gates"] = exits
    lineage = expert_lineage(meta)
    if lineage is not None:
        result["expert"] = lineage
    if curve is not None:
        title = f"{Path(model_file).name}: expert cost against kept classes"
        result["curve"] = draw_cost_curve(base, curve, title)
    return result
