"""Training throughput: an NHL model against the flat timm model on the same trunk, side by side.

For each backbone it builds the NHL model over a tree and the plain (``--flat``) classifier over
the same classes, then times full training steps (forward, loss, backward, AdamW step) on
random batches, alternating the two models so that machine noise hits both alike. Reports
images/s, GMACs per image (forward, ``torch.utils.flop_counter``) and parameters.

    python benchmarks/bench_training.py [--tree fashion-mnist-wordnet-l2] [--size 28] [--batch 64] [--json]
    python benchmarks/bench_training.py --tree emoji-unicode-l3 --in-chans 3 --variants nhl,nhl-lean,flat
    python benchmarks/bench_training.py --steps 8 --results training-throughput   # store for report.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from nhlcli.model.nhl import with_input_size
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.profiling import count_macs
from nhlcli.taxonomy import resolve_tree


def gmacs_per_image(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Through ``nhlcli.profiling.count_macs``: it runs the unfused path, whose convolutions
    ``FlopCounterMode`` sees (under ``no_grad`` the branch levels use oneDNN's fused ops, which
    it does not count)."""
    return count_macs(model, shape) / 1e9


def step_time(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> float:
    model.train()
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


# the tables docs/benchmarks.md shows (--results NAME): their columns, as report.py renders them
TABLES = {
    "training-throughput": [
        ["backbone", "backbone", "{}"], ["model", "model", "{}"], ["images/s", "images_per_s", "{:.0f}"],
        ["GMACs/image", "gmacs_per_image", "{:.4f}"], ["params", "params_m", "{:.2f}M"],
    ],
    "training-throughput-emoji1861": [
        ["backbone", "backbone", "{}"], ["model", "model", "{}"], ["images/s", "images_per_s", "{:.1f}"],
        ["step ms", "step_ms", "{:,.0f}"], ["GMACs/image", "gmacs_per_image", "{:.3f}"],
        ["params", "params_m", "{:.2f}M"],
    ],
    "lean-training-emoji1861": [
        ["model", "model", "{}"], ["images/s", "images_per_s", "{:.1f}"], ["step ms", "step_ms", "{:,.0f}"],
        ["GMACs/image", "gmacs_per_image", "{:.3f}"], ["params", "params_m", "{:.2f}M"],
    ],
}  # fmt: skip
LABELS = {
    "training-throughput": {"nhl": "NHL", "flat": "flat"},
    "training-throughput-emoji1861": {"nhl": "NHL (widths 128/64/32)", "flat": "flat"},
    "lean-training-emoji1861": {"nhl": "paper (`nhl`)", "nhl-lean": "lean (`nhl-lean`)", "flat": "flat"},
}


def store(name: str, result: dict, steps: int, classes: int) -> None:
    """The rows as ``benchmarks/results/<name>.json``, the table report.py puts in the docs."""
    from results_store import invoked_command, write_results

    variants = dict.fromkeys(r["model"] for r in result["rows"])
    write_results(
        name,
        title=f"Training steps, NHL against flat over {result['tree']}'s {classes:,} classes",
        command=invoked_command(),
        setup={"tree": result["tree"], "input": result["input"], "batch": result["batch"], "steps": steps,
               "arms": {v: {"label": LABELS[name].get(v, f"`{v}`")} for v in variants},
               "table": {"columns": TABLES[name]}},
        runs=result["rows"],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default="fashion-mnist-wordnet-l2", help="tree file or shipped tree name")
    parser.add_argument("--backbones", default="resnet18,convnextv2_atto")
    parser.add_argument("--size", type=int, default=32, help="input side in pixels")
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (after 2 warm-up)")
    parser.add_argument(
        "--variants", default="nhl,flat", help="variants timed side by side (any of nhl train's)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", choices=sorted(TABLES), help="store the rows as this results file")
    args = parser.parse_args()

    torch.manual_seed(0)
    tree = resolve_tree(args.tree)
    shape = (args.in_chans, args.size, args.size)
    x = torch.randn(args.batch, *shape)
    y = torch.randint(0, tree.num_classes, (args.batch,))
    rows = []
    for backbone in args.backbones.split(","):
        models = {}
        for variant in args.variants.split(","):
            model = create_model(tree, variant, TrunkConfig(backbone, None, args.in_chans))
            model.input_config = with_input_size(model.input_config, args.size)
            models[variant] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
        times: dict[str, list[float]] = {v: [] for v in models}
        for i in range(args.steps + 2):
            for variant, (model, opt) in models.items():
                elapsed = step_time(model, opt, x, y)
                if i >= 2:
                    times[variant].append(elapsed)
        for variant, (model, _) in models.items():
            median = statistics.median(times[variant])
            rows.append(
                {
                    "backbone": backbone,
                    "model": variant,
                    "images_per_s": round(args.batch / median, 1),
                    "step_ms": round(median * 1e3, 1),
                    "gmacs_per_image": round(gmacs_per_image(model, shape), 4),
                    "params_m": round(model.parameter_groups()["total"] / 1e6, 3),
                }
            )
    result = {
        "tree": tree.name,
        "input": list(shape),
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    if args.results:
        store(args.results, result, args.steps, tree.num_classes)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"training steps, tree {tree.name} ({tree.num_classes} classes, {tree.levels} levels), input "
        f"{'x'.join(map(str, shape))}, batch {args.batch}, {torch.get_num_threads()} threads"
    )
    print(f"{'backbone':<18}{'model':<10}{'img/s':>9}{'step ms':>10}{'GMACs/img':>11}{'params M':>10}")
    for r in rows:
        print(
            f"{r['backbone']:<18}{r['model']:<10}{r['images_per_s']:>9}{r['step_ms']:>10}"
            f"{r['gmacs_per_image']:>11}{r['params_m']:>10}"
        )


if __name__ == "__main__":
    main()
