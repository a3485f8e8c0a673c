"""Experts: the paper's Table 1 side by side with ours, latency against GMACs, and cutout cost.

    python benchmarks/bench_experts.py table1      # ResNet50-NHL (100 classes) and ConvNeXtV2-NHL (1000)
    python benchmarks/bench_experts.py latency     # experts of 1/10/100/500 classes, batch 1 and 32
    python benchmarks/bench_experts.py latency --backbone resnet50
    python benchmarks/bench_experts.py cutout      # time and peak memory of nhl cutout on a 1000-class file
    python benchmarks/bench_experts.py latency --results   # also store benchmarks/results/expert-latency.json

Untrained weights: cost does not depend on them. GMACs come from FlopCounterMode, latency is the
median of timed runs in this one process (parent and experts measured side by side), cutout
runs in fresh processes so their peak memory is theirs alone. ``--json`` prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_store import add_runs, write_results

from nhlcli.experts import count_macs, cut_model, measure_latency
from nhlcli.memory import keep_freed_cpu_memory
from nhlcli.model.files import save_model
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.taxonomy import build_tree, shipped_tree
from nhlcli.taxonomy.classes import load_class_list

# Paper 000, Table 1 (ImageNet100 ResNet50-NHL with a 20-class expert; ImageNet1k ConvNeXtV2-NHL
# with a 5-class expert). Params in millions.
PAPER = {
    "resnet50-nhl-100": {
        "params": 25.0, "gmacs": 5.86, "expert": 20, "expert_params": 13.8, "expert_gmacs": 4.22,
    },
    "convnextv2-nhl-1000": {
        "params": 119.9, "gmacs": 14.55, "expert": 5, "expert_params": 13.5, "expert_gmacs": 3.87,
    },
}  # fmt: skip


def imagenet100_tree():
    """Every 10th ImageNet-1k class, WordNet, 3 levels (the measured tree of issue 3)."""
    entries = load_class_list("imagenet-1k")[::10]
    return build_tree("wordnet", entries, levels=3, name="imagenet-100-wordnet-l3")


def size(model) -> tuple[float, float]:
    return sum(p.numel() for p in model.parameters()) / 1e6, count_macs(model) / 1e9


def paper_experts() -> dict[str, tuple[str, list[str]]]:
    """Paper 003's named experts (Table 2): ImageNet100's "lower 20", its 20 lowest class ids
    (ours: the first 20 of every 10th ImageNet-1k class), and ImageNet-1k's "meow", the five
    domestic cats (classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat)."""
    entries = load_class_list("imagenet-1k")
    return {
        "resnet50-nhl-100": ("lower 20", [e.id for e in entries[::10][:20]]),
        "convnextv2-nhl-1000": ("meow", [entries[i].id for i in range(281, 286)]),
    }


def table1() -> list[dict]:
    """Each Table 1 model in the paper's shape (``nhl``), ``nhl-lean`` and the default
    ``nhl-scale``, its named expert, and the plain timm network over the same classes: an
    expert is only worth cutting if it costs less than that network."""
    rows = []
    named = paper_experts()
    for key, tree, backbone in (
        ("resnet50-nhl-100", imagenet100_tree(), "resnet50"),
        ("convnextv2-nhl-1000", shipped_tree("imagenet-1k-wordnet-l3"), "convnextv2_tiny"),
    ):
        base_params, base_gmacs = size(create_model(tree, "flat", TrunkConfig(backbone)).eval())
        expert_name, expert_classes = named[key]
        for variant in ("nhl", "nhl-lean", "nhl-scale"):
            model = create_model(tree, variant, TrunkConfig(backbone)).eval()
            params, gmacs = size(model)
            expert_params, expert_gmacs = size(cut_model(model, expert_classes))
            rows.append(
                {
                    "model": key,
                    "variant": variant,
                    "backbone": backbone,
                    "nodes_per_level": [len(tree.level(d)) for d in range(1, tree.levels + 1)],
                    "params_m": round(params, 2),
                    "gmacs": round(gmacs, 3),
                    "expert": expert_name,
                    "expert_classes": len(expert_classes),
                    "expert_params_m": round(expert_params, 2),
                    "expert_gmacs": round(expert_gmacs, 3),
                    "base_params_m": round(base_params, 2),
                    "base_gmacs": round(base_gmacs, 3),
                    "expert_gmacs_x_base": round(expert_gmacs / base_gmacs, 2),
                    "paper": PAPER[key],
                }
            )
            del model
    return rows


def latency(batches: tuple[int, ...], sizes: tuple[int, ...], repeats: int, backbone: str) -> dict:
    tree = shipped_tree("imagenet-1k-wordnet-l3")
    model = create_model(tree, "nhl", TrunkConfig(backbone)).eval()
    leaves = tree.level(tree.levels)
    rng = random.Random(0)
    rows = []
    full_macs = count_macs(model)
    full_runs = {b: measure_latency(model, b, repeats=repeats, budget_s=30) for b in batches}
    for k in sizes:
        expert = cut_model(model, rng.sample(leaves, k)).eval()
        macs = count_macs(expert)
        for b in batches:
            run = measure_latency(expert, b, repeats=repeats, budget_s=30)
            latency_ratio = run["median_ms"] / full_runs[b]["median_ms"]
            macs_ratio = macs / full_macs
            rows.append(
                {
                    "classes": k,
                    "batch": b,
                    "gmacs": round(macs / 1e9, 3),
                    "median_ms": run["median_ms"],
                    "runs": run["runs"],
                    "gmacs_ratio": round(macs_ratio, 3),
                    "latency_ratio": round(latency_ratio, 3),
                    "latency_over_gmacs": round(latency_ratio / macs_ratio, 3),
                }
            )
        del expert
    return {
        "model": f"{backbone} NHL, imagenet-1k-wordnet-l3, 224 px",
        "trunk_gmacs": round(count_macs(model.trunk.eval(), (3, 224, 224)) / 1e9, 3),
        "threads": torch.get_num_threads(),
        "full": {"gmacs": round(full_macs / 1e9, 3), "latency": list(full_runs.values())},
        "experts": rows,
        "goal": "latency ratio within 1.2x of the GMACs ratio",
    }


CUT_CHILD = r"""
import json, resource, sys, time
from nhlcli.experts import cutout_file, save_expert
import timm, torch  # noqa: F401, E401  (imported before the baseline: the cut, not the imports)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
cut = cutout_file(sys.argv[1], json.loads(sys.argv[2]))
save_expert(cut, sys.argv[3])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "extra_peak_kb": peak - base}))
"""


def cutout(sizes: tuple[int, ...]) -> dict:
    tree = shipped_tree("imagenet-1k-wordnet-l3")
    leaves = tree.level(tree.levels)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "parent.safetensors"
        model = create_model(tree, "nhl", TrunkConfig("convnextv2_tiny"))
        save_model(model, parent)
        del model
        file_mb = parent.stat().st_size / 2**20
        rows = []
        for k in sizes:
            labels = rng.sample(leaves, k)
            out = Path(tmp) / f"expert{k}.safetensors"
            cmd = [sys.executable, "-c", CUT_CHILD, str(parent), json.dumps(labels), str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            child = json.loads(proc.stdout)
            extra_mb = child["extra_peak_kb"] / 1024
            rows.append(
                {
                    "classes": k,
                    "seconds": round(child["seconds"], 3),
                    "extra_peak_mb": round(extra_mb, 1),
                    "memory_over_file": round(extra_mb / file_mb, 3),
                    "expert_mb": round(out.stat().st_size / 2**20, 1),
                }
            )
    return {"parent_file_mb": round(file_mb, 1), "cuts": rows, "goal": "under 2 s and under 1.5x the file"}


TRUNK_NAMES = {"convnextv2_tiny": "ConvNeXtV2-tiny", "resnet50": "ResNet50"}
LATENCY_RERUN = (
    "python benchmarks/bench_experts.py latency --results && "
    "python benchmarks/bench_experts.py latency --backbone resnet50 --results"
)


def store_latency(result: dict, backbone: str, batches: tuple[int, ...], repeats: int) -> None:
    """One row per model (the full one, then each expert) with its figures at every batch, into
    ``benchmarks/results/expert-latency.json`` beside the other trunk's rows: the table report.py
    puts in the docs."""
    trunk = TRUNK_NAMES.get(backbone, backbone)
    full = {"model": "full", "trunk": trunk, "classes": 1000, "gmacs": result["full"]["gmacs"]}
    full |= {f"b{b}_ms": run["median_ms"] for b, run in zip(batches, result["full"]["latency"], strict=True)}
    runs = [full]
    for row in result["experts"]:
        if row["batch"] == batches[0]:
            runs.append({"model": f"expert-{row['classes']}", "trunk": trunk, "classes": row["classes"],
                         "gmacs": row["gmacs"], "gmacs_ratio": row["gmacs_ratio"]})  # fmt: skip
        b = row["batch"]
        runs[-1] |= {f"b{b}_ms": row["median_ms"], f"b{b}_latency_ratio": row["latency_ratio"],
                     f"b{b}_latency_over_gmacs": row["latency_over_gmacs"]}  # fmt: skip
    columns = [["trunk", "trunk", "{}"], ["classes", "model", "{}"], ["GMACs", "gmacs", "{:.2f}"],
               ["GMACs ratio", "gmacs_ratio", "{:.3f}"]]  # fmt: skip
    for b in batches:  # the full model's latency in ms, each expert's as a ratio of it
        columns += [[f"batch {b} latency", f"b{b}_ms", "{:.1f} ms"],
                    [f"batch {b} latency ratio", f"b{b}_latency_ratio", "{:.3f}"],
                    ["lat/GMACs", f"b{b}_latency_over_gmacs", "{:.2f}"]]  # fmt: skip
    for run in runs[1:]:  # an expert's ms stay in the file; the table shows its ratios
        run["ms"] = {b: run.pop(f"b{b}_ms") for b in batches}
    add_runs(
        "expert-latency",
        runs,
        key=("trunk", "model"),
        title="Expert latency against GMACs: experts of random classes cut from a 1000-class NHL",
        command=LATENCY_RERUN,
        setup={"tree": "imagenet-1k-wordnet-l3", "variant": "nhl", "input_px": 224, "repeats": repeats,
               "weights": "untrained (cost does not depend on them)",
               "arms": {r["model"]: {"label": "1000 (full)" if r["model"] == "full" else str(r["classes"])}
                        for r in runs},
               "table": {"columns": columns}},
    )  # fmt: skip


def store_cutout(result: dict) -> None:
    """The cuts as ``benchmarks/results/cutout-cost.json``, the table report.py puts in the docs."""
    write_results(
        "cutout-cost",
        title="cutout_file + save_expert on a 1000-class ConvNeXtV2-tiny NHL file: time and memory",
        command="python benchmarks/bench_experts.py cutout --results",
        setup={"tree": "imagenet-1k-wordnet-l3", "variant": "nhl", "backbone": "convnextv2_tiny",
               "parent_file_mb": result["parent_file_mb"],
               "weights": "untrained (cost does not depend on them)",
               "arms": {f"expert-{r['classes']}": {"label": str(r["classes"])} for r in result["cuts"]},
               "table": {"columns": [
                   ["classes kept", "model", "{}"], ["time", "seconds", "{:.2f} s"],
                   ["extra peak memory", "extra_peak_mb", "{:.1f} MB"],
                   ["/ file size", "memory_over_file", "{:.2f}"], ["expert file", "expert_mb", "{:.1f} MB"],
               ]}},
        runs=[{"model": f"expert-{r['classes']}", **r} for r in result["cuts"]],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["table1", "latency", "cutout"])
    parser.add_argument("--sizes", default="1,10,100,500", help="expert class counts")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbone", default="convnextv2_tiny", help="trunk of the latency model")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", action="store_true", help="store the figures for report.py")
    args = parser.parse_args()
    keep_freed_cpu_memory()  # as the nhl command does
    sizes = tuple(int(s) for s in args.sizes.split(","))
    started = time.perf_counter()
    if args.part == "table1":
        result = {"table1": table1()}
        write_results(
            "imagenet-table1",
            title="Paper 000's Table 1 beside nhl's shapes: full models, named experts, the plain network",
            command="python benchmarks/bench_experts.py table1",
            setup={
                "input_px": 224,
                "weights": "untrained (cost does not depend on them)",
                "gmacs": "torch.utils.flop_counter.FlopCounterMode, one image",
            },
            runs=result["table1"],
        )
    elif args.part == "latency":
        batches = tuple(int(b) for b in args.batches.split(","))
        result = latency(batches, sizes, args.repeats, args.backbone)
        if args.results:
            store_latency(result, args.backbone, batches, args.repeats)
    else:
        result = cutout(sizes)
        if args.results:
            store_cutout(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["cpu_threads"] = torch.get_num_threads()
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
