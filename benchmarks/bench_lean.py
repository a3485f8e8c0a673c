"""The lean NHL against the paper's: cost of the full model and its experts, training memory.

    python benchmarks/bench_lean.py cost                 # 1000 classes, 224 px, ConvNeXtV2-tiny and ResNet50
    python benchmarks/bench_lean.py cost --backbone resnet50 --candidates paper,lean
    python benchmarks/bench_lean.py cost --json
    python benchmarks/bench_lean.py cost --results lean-cost   # store benchmarks/results/lean-cost.json
    python benchmarks/bench_lean.py accuracy --data fashion-mnist --seeds 0,1,2 --epochs 2
    python benchmarks/bench_lean.py accuracy --data emoji --classes "Animals & Nature" --seeds 0,1 --epochs 4
    python benchmarks/bench_lean.py accuracy ... --holdout 0.2      # to choose: score a hold-out of train
    python benchmarks/bench_lean.py accuracy ... --results NAME     # store benchmarks/results/NAME.json

Every candidate is built on the shipped ``imagenet-1k-wordnet-l3`` (19 / 126 / 1,000 nodes) with
untrained weights (cost does not depend on them) and measured side by side in one process:
GMACs (FlopCounterMode, one image), parameters, the 5-class domestic-cat expert (ImageNet
classes 281-285) and 20-class experts (the first 20 classes in tree order, and 20 drawn at
random, seeded), each against the plain timm network ("base"), and the activations a training
step keeps for backward per image (unique storages saved by autograd, batch 2, float32), the
full model's CPU latency (one image, inference mode, median of 5 after a warm-up) and its
training speed (forward, loss, backward and AdamW step on batches of 4, median of 3 steps after
a warm-up).

``accuracy`` trains each variant with ``nhl train`` (the demo's recipe, one process per run, the
variants of one seed back to back) and prints top-1 per seed, mean and spread, the paired
difference to the first variant, and training images/s. Top-1 is the test split's unless
``--holdout`` is given: then each run trains without that stratified fraction of the training
images and is scored on it, which is what a choice between shapes must be made on.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from evidence import difference
from results_store import add_runs, invoked_command, machine, write_results

from nhlcli.demo import recipe_args
from nhlcli.experts import count_macs, cut_model
from nhlcli.model.nhl import BranchConfig
from nhlcli.model.registry import VARIANTS, create_model, variant_branches
from nhlcli.model.trunk import TrunkConfig
from nhlcli.taxonomy import shipped_tree
from nhlcli.taxonomy.classes import load_class_list

TREE = "imagenet-1k-wordnet-l3"
CAT_IDS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def candidates(levels: int) -> dict[str, BranchConfig]:
    """Every branch shape tried (name -> config); ``paper`` and the shipped ``lean`` included.

    ``out-N``: every level outputs N channels (identity shortcuts below level 1); ``pool``:
    level 1 pools the trunk output by 2 (``pool-all``: every level); ``gN``: 3x3 convolutions
    in groups of N channels.
    """
    paper = variant_branches("nhl", levels)
    lean = variant_branches("nhl-lean", levels)
    pool = lean.entry_strides

    def same_out(out: int) -> tuple[int, ...]:
        return tuple(out // w for w in paper.widths)

    return {
        "paper": paper,
        "paper+pool": replace(paper, entry_strides=pool),
        "out-128": replace(paper, expansions=same_out(128)),
        "out-128+pool": replace(paper, expansions=same_out(128), entry_strides=pool),
        "out-256": replace(paper, expansions=same_out(256)),
        "out-256+pool-all": replace(lean, entry_strides=(2,) * levels, pool_min_side=0),
        "out-256+pool+g8": replace(lean, group_size=8),
        "out-256+pool+g16": replace(lean, group_size=16),
        "lean (out-256+pool)": lean,
    }


def activation_bytes_per_image(model: torch.nn.Module, batch: int = 2) -> float:
    """Bytes autograd keeps for backward per image in one training forward (unique storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu" and t.untyped_storage().data_ptr():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    model.train()
    x = torch.randn(batch, *model.input_config.size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(n for ptr, n in seen.items() if ptr not in params) / batch


def median_seconds(step, repeats: int) -> float:
    """Median wall time of ``step()`` after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def latency_ms(model: torch.nn.Module) -> float:
    """The full model's CPU latency for one image, in milliseconds."""
    model.eval()
    x = torch.randn(1, *model.input_config.size)
    with torch.inference_mode():
        return 1000 * median_seconds(lambda: model(x), 5)


def train_images_per_s(model: torch.nn.Module, batch: int = 4) -> float:
    """Training images/s of full steps (forward, cross-entropy, backward, AdamW) on random data."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, *model.input_config.size)
    y = torch.randint(0, len(model.tree.classes), (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return batch / median_seconds(step, 3)


def timing(model: torch.nn.Module) -> dict:
    """Latency and training speed, rounded for the table."""
    return {
        "latency_ms": round(latency_ms(model), 1),
        "train_images_per_s": round(train_images_per_s(model), 2),
    }


def measure(name: str, model: torch.nn.Module, base_gmacs: float, tree, rng: random.Random) -> dict:
    leaves = tree.level(tree.levels)
    entries = load_class_list("imagenet-1k")
    cats = [entries[i].id for i in CAT_IDS]
    experts = {"cat-5": cats, "related-20": leaves[:20], "random-20": rng.sample(leaves, 20)}
    model.eval()
    gmacs = count_macs(model) / 1e9
    row = {
        "candidate": name,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "gmacs": round(gmacs, 3),
        "x_base": round(gmacs / base_gmacs, 2),
    }
    for label, classes in experts.items():
        g = count_macs(cut_model(model, classes)) / 1e9
        row[f"{label}_gmacs"] = round(g, 3)
        row[f"{label}_x_base"] = round(g / base_gmacs, 2)
    row["train_mb_per_image"] = round(activation_bytes_per_image(model) / 2**20, 1)
    return {**row, **timing(model)}


def cost(backbones: list[str], names: list[str] | None) -> list[dict]:
    tree = shipped_tree(TREE)
    rows = []
    for backbone in backbones:
        base = create_model(tree, "flat", TrunkConfig(backbone)).eval()
        base_gmacs = count_macs(base) / 1e9
        base_row = {
            "backbone": backbone,
            "candidate": "base (timm)",
            "params_m": round(sum(p.numel() for p in base.parameters()) / 1e6, 2),
            "gmacs": round(base_gmacs, 3),
            "x_base": 1.0,
            "train_mb_per_image": round(activation_bytes_per_image(base) / 2**20, 1),
            **timing(base),
        }
        rows.append(base_row)
        del base
        for name, branches in candidates(tree.levels).items():
            if names and name not in names:
                continue
            model = create_model(tree, "nhl", TrunkConfig(backbone), branches)
            rows.append({"backbone": backbone, **measure(name, model, base_gmacs, tree, random.Random(0))})
            print(json.dumps(rows[-1]), flush=True)
            del model
            gc.collect()  # one process measures every candidate: give each one's memory back
    return rows


def train_run(
    data: str, variant: str, seed: int, epochs: int, classes: str | None, workers: int, holdout: float
) -> dict:
    """One ``nhl train`` run; its final top-1 (on the hold-out when given, else the test split),
    median training images/s and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "nhlcli", "train", "--data", data, *recipe_args(epochs),
               "--variant", variant, "--seed", str(seed), "--workers", str(workers),
               "-o", str(Path(tmp) / "m.safetensors"), "--json"]  # fmt: skip
        if data == "emoji":  # drawn at its own 32 px default; its images come augmented
            cmd[cmd.index("--crop-scale") : cmd.index("--crop-scale") + 2] = []
        if classes:
            cmd += ["--classes", classes]
        if holdout:
            cmd += ["--holdout", str(holdout)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\n{proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    return {
        "model": variant,
        "seed": seed,
        "split": "holdout" if holdout else "test",
        "top1": round(100 * summary["val_top1"], 2),  # percent, as every results file
        "images_per_s": statistics.median(h["images_per_s"] for h in summary["history"]),
        "wall_s": round(wall, 1),
    }


def accuracy(data: str, variants: list[str], seeds: list[int], epochs: int, classes: str | None,
             workers: int, holdout: float = 0.0) -> dict:  # fmt: skip
    runs = []
    for seed in seeds:
        for variant in variants:
            runs.append(train_run(data, variant, seed, epochs, classes, workers, holdout))
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for variant in variants:
        top1 = [r["top1"] for r in runs if r["model"] == variant]
        row = {
            "top1_mean": round(statistics.mean(top1), 4),
            "top1_sd": round(statistics.stdev(top1), 4) if len(top1) > 1 else None,
            "top1_per_seed": [round(t, 4) for t in top1],
            "images_per_s": round(
                statistics.median(r["images_per_s"] for r in runs if r["model"] == variant), 1
            ),
        }
        if variant != variants[0]:
            first = [r["top1"] for r in runs if r["model"] == variants[0]]
            paired = difference(first, top1, paired=True)
            row["paired_diff_mean"] = round(paired["diff"], 4)
            row["paired_diff_sd"] = round(paired["sd"], 4) if paired["sd"] is not None else None
        summary[variant] = row
    command = f"nhl train --data {data} {' '.join(recipe_args(epochs))}" + (
        f" --classes {classes!r}" if classes else ""
    )
    return {"data": data, "classes": classes, "epochs": epochs, "seeds": seeds, "command": command,
            "holdout": holdout, "runs": runs, "summary": summary}  # fmt: skip


def store(name: str, result: dict) -> Path:
    """The runs as ``benchmarks/results/<name>.json``, for report.py."""
    arms = {
        variant: {"label": f"`{variant}`", "train_images_per_s_median": row["images_per_s"]}
        for variant, row in result["summary"].items()
    }
    setup = {
        "data": result["data"],
        "classes": result["classes"],
        "epochs": result["epochs"],
        "evaluated_on": "holdout" if result["holdout"] else "test",
        "holdout": result["holdout"],
        "recipe": result["command"],
        "arms": arms,
    }
    return write_results(
        name,
        title=f"{result['data']}, {result['epochs']} epochs: " + " against ".join(result["summary"]),
        command=invoked_command(),
        setup=setup,
        runs=result["runs"],
    )


# the cost table's columns as report.py renders them (header, record key, format), and its labels
COST_COLUMNS = [
    ["backbone", "backbone", "{}"], ["candidate", "model", "{}"], ["params", "params_m", "{:.2f}M"],
    ["GMACs", "gmacs", "{:.3f}"], ["x base", "x_base", "{:.2f}x"],
    ["cat-5 expert", "cat-5_x_base", "{:.2f}x"], ["related-20", "related-20_x_base", "{:.2f}x"],
    ["random-20", "random-20_x_base", "{:.2f}x"],
    ["train MB/image", "train_mb_per_image", "{:.1f}"], ["latency ms", "latency_ms", "{:.0f}"],
    ["train images/s", "train_images_per_s", "{:.2f}"],
]  # fmt: skip
COST_LABELS = {"paper": "paper (`nhl`)", "lean (out-256+pool)": "**lean (`nhl-lean`, out-256+pool)**"}


def store_cost(name: str, rows: list[dict]) -> Path:
    """The cost rows into ``benchmarks/results/<name>.json`` for report.py, replacing the stored
    rows of the same backbone and candidate, so a run of some candidates (after another process
    ran out of memory) completes the table instead of replacing it."""
    runs = [{"model": r["candidate"], **r} for r in rows]
    return add_runs(
        name,
        runs,
        key=("backbone", "model"),
        title="Lean NHL candidates at 1,000 classes: cost of the full model and its experts",
        command=f"python benchmarks/bench_lean.py cost --results {name}",
        setup={"tree": TREE, "input_px": 224, "weights": "untrained (cost does not depend on them)",
               "experts": "cat-5: ImageNet 281-285; related-20: the first 20 leaves in tree order; "
                          "random-20: 20 leaves drawn with seed 0; each as a multiple of the base's GMACs",
               "train_mb_per_image": "activations autograd keeps for backward, batch 2, float32",
               "latency": "one image, inference mode, median of 5",
               "train_images_per_s": "full steps on batches of 4, median of 3",
               "arms": {r["model"]: {"label": COST_LABELS.get(r["model"], r["model"])} for r in runs},
               "table": {"columns": COST_COLUMNS}},
    )  # fmt: skip


def print_table(rows: list[dict]) -> None:
    cols = ["backbone", "candidate", "params_m", "gmacs", "x_base", "cat-5_x_base", "related-20_x_base",
            "random-20_x_base", "train_mb_per_image", "latency_ms", "train_images_per_s"]  # fmt: skip
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["cost", "accuracy"])
    parser.add_argument("--backbone", default="convnextv2_tiny,resnet50")
    parser.add_argument("--candidates", default=None, help="comma list of candidate names (default: all)")
    parser.add_argument("--data", default="fashion-mnist", help="accuracy: fashion-mnist or emoji")
    parser.add_argument("--classes", default=None, help="accuracy: train on these classes only")
    parser.add_argument("--variants", default="nhl,nhl-lean", help="accuracy: the first is the reference")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--holdout", type=float, default=0.0, help="accuracy: score this fraction of train")
    parser.add_argument("--results", help="store the runs (cost: the rows) as benchmarks/results/NAME.json")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    facts = machine()
    print(f"# {facts['cpu']}, {facts['threads']} threads, torch {facts['torch']}")
    print(f"# variants: {', '.join(VARIANTS)}")
    if args.what == "accuracy":
        if not 0 <= args.holdout < 1:
            parser.error("--holdout is a fraction in [0, 1)")
        result = accuracy(args.data, args.variants.split(","), [int(s) for s in args.seeds.split(",")],
                          args.epochs, args.classes, args.workers, args.holdout)  # fmt: skip
        if args.results:
            print(f"# stored {store(args.results, result)}")
        print(
            json.dumps(result if args.json else {"command": result["command"], **result["summary"]}, indent=1)
        )
        return
    rows = cost(args.backbone.split(","), args.candidates.split(",") if args.candidates else None)
    if args.results:
        print(f"# stored {store_cost(args.results, rows)}")
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
