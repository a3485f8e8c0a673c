"""CPU latency of ONNX experts (issue 6): torch eager against onnxruntime, side by side.

Experts of 1, 10 and 100 random classes are cut from an untrained 1000-class NHL (the shipped
``imagenet-1k-wordnet-l3`` tree, 224 px), saved, exported with ``nhl export``'s library call
(parity checked), and timed in this one process: the median of repeated runs at batch 1 and 32,
torch eager (``torch.inference_mode``) and onnxruntime's CPU provider, same thread count.

    python benchmarks/bench_export.py --backbone resnet50 [--results]   # --results: store onnx-experts.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

from nhlcli.experts import cut_model
from nhlcli.export import export_onnx
from nhlcli.export.onnx import onnx_latency
from nhlcli.memory import keep_freed_cpu_memory
from nhlcli.model.files import save_model
from nhlcli.model.loading import open_model
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.profiling import count_macs, measure_latency
from nhlcli.taxonomy import shipped_tree

COLUMNS = [
    ["expert classes", "classes", "{}"], ["GMACs", "gmacs", "{:.2f}"], ["batch", "batch", "{}"],
    ["torch eager", "torch_ms", "{:.1f} ms"], ["onnxruntime", "onnxruntime_ms", "{:.1f} ms"],
    ["onnxruntime speed-up", "ort_speedup", "x{:.2f}"],
    ["parity (max abs diff)", "parity_max_abs_diff", "{:.1e}"], ["export time", "export_s", "{:.1f} s"],
]  # fmt: skip


def store(rows: list[dict], backbone: str, repeats: int) -> None:
    """The rows as ``benchmarks/results/onnx-experts.json``, the table report.py puts in the docs."""
    from results_store import invoked_command, write_results

    write_results(
        "onnx-experts",
        title=f"ONNX experts: onnxruntime against torch eager, experts of a {backbone} NHL over ImageNet-1k",
        command=invoked_command(),
        setup={"tree": "imagenet-1k-wordnet-l3", "variant": "nhl", "backbone": backbone, "input_px": 224,
               "opset": 18, "repeats": repeats, "weights": "untrained (cost does not depend on them)",
               "table": {"columns": COLUMNS}},
        runs=[{"model": f"expert-{r['classes']}", **r} for r in rows],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--results", action="store_true", help="store the rows for report.py")
    args = parser.parse_args()
    keep_freed_cpu_memory()
    tree = shipped_tree("imagenet-1k-wordnet-l3")
    model = create_model(tree, "nhl", TrunkConfig(args.backbone)).eval()
    leaves = tree.level(tree.levels)
    rng = random.Random(0)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(s) for s in args.sizes.split(",")):
            expert_file = Path(tmp) / f"expert{k}.safetensors"
            save_model(cut_model(model, rng.sample(leaves, k)), expert_file)
            onnx_file = expert_file.with_suffix(".onnx")
            export = export_onnx(expert_file, onnx_file)
            expert = open_model(expert_file)
            size = expert.input_config.size
            for b in batches:
                eager = measure_latency(expert, b, repeats=args.repeats, budget_s=30)
                ort = onnx_latency(
                    onnx_file, b, size, repeats=args.repeats, threads=torch.get_num_threads(), budget_s=30
                )
                rows.append(
                    {
                        "classes": k,
                        "gmacs": round(count_macs(expert) / 1e9, 3),
                        "batch": b,
                        "torch_ms": eager["median_ms"],
                        "onnxruntime_ms": ort["median_ms"],
                        "ort_speedup": round(eager["median_ms"] / ort["median_ms"], 3),
                        "parity_max_abs_diff": export["parity"]["max_abs_diff"],
                        "export_s": export["seconds"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            del expert
    print(json.dumps({"backbone": args.backbone, "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    if args.results:
        store(rows, args.backbone, args.repeats)


if __name__ == "__main__":
    main()
