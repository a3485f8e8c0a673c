"""Decision gates on Fashion-MNIST (issue 5): hinge against cross-entropy gates, and routing.

For each model (the flat default and the NHL default, trained by ``nhl train`` with the demo's
recipe) and each gate loss: fit the gates on the 60k training images, tune the thresholds on
half of the test set for at most ``--max-drop`` points of top-1 lost, then run real gated
inference on the other half: top-1 against the full network on the same images, average GMACs,
exit fractions, and throughput gated against ungated on the same batches in one run. The sweep
(accuracy against GMACs, tuned on the first half) is drawn as a PNG. Routing: the NHL model with
closed exits, running only the branches of each image's top-K super-categories.

    python benchmarks/bench_gates.py --nhl nhl.safetensors --flat flat.safetensors --plot docs/gates.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nhlcli.data.loaders import model_loader
from nhlcli.evaluation import evaluate_gated
from nhlcli.gates import (
    GateTraining,
    collect_exits,
    plot_sweeps,
    simulate,
    sweep,
    tune_thresholds,
)
from nhlcli.gates.workflow import fit_file, load_gated
from nhlcli.memory import keep_freed_cpu_memory

TUNE, TEST = "1/2", "2/2"


def run_model(name: str, path: Path, losses: list[str], max_drop: float, workers: int, out: Path) -> dict:
    device = torch.device("cpu")
    rows, curves, heldout = [], {}, {}
    for loss in losses:
        gated_file = out / f"{path.stem}-{loss}.safetensors"
        started = time.perf_counter()
        fit_file(path, gated_file, "fashion-mnist", "train", config=GateTraining(loss=loss), workers=workers)
        fit_s = time.perf_counter() - started
        gated = load_gated(gated_file, device)
        tune_loader = model_loader(gated, "fashion-mnist", "val", 256, workers, part=TUNE)
        test_loader = model_loader(gated, "fashion-mnist", "val", 256, workers, part=TEST)
        record = collect_exits(gated, tune_loader, device)
        held_out = collect_exits(gated, test_loader, device)
        points = sweep(gated, record)
        curves[f"{name}, {loss} gates"] = points
        # every point of the curve, tuned on the first half, measured on the second
        heldout[f"{name}, {loss} gates"] = [
            {"max_drop": p["max_drop"], **simulate(gated, held_out, p["thresholds"])} for p in points
        ]
        tuned = tune_thresholds(gated, record, record.full_accuracy - max_drop / 100)
        gated.set_thresholds(tuned["thresholds"])
        report = evaluate_gated(gated, test_loader, device)
        full = held_out.full_accuracy
        rows.append(
            {
                "model": name,
                "loss": loss,
                "fit_s": round(fit_s, 1),
                "tuned_for_drop": max_drop,
                "thresholds": tuned["thresholds"],
                "tune_top1": tuned["top1"],
                "tune_full_top1": record.full_accuracy,
                "full_top1": full,
                "top1": report["top1"],
                "drop_points": round(100 * (full - report["top1"]), 2),
                "gmacs": report["gmacs"],
                "full_gmacs": report["full_gmacs"],
                "gmacs_reduction_percent": report["gmacs_reduction_percent"],
                "exit_fractions": [e["fraction"] for e in report["exits"]],
                "images_per_s": round(report["images_per_s"], 1),
                "ungated_images_per_s": round(report["ungated_images_per_s"], 1),
                "speedup": round(report["speedup"], 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "curves": curves, "heldout": heldout}


def run_routing(path: Path, workers: int, out: Path) -> list[dict]:
    device = torch.device("cpu")
    gated_file = out / f"{path.stem}-hinge.safetensors"  # fitted above; exits still closed
    gated = load_gated(gated_file, device)
    gated.set_thresholds([None] * len(gated.exits))
    loader = model_loader(gated, "fashion-mnist", "val", 256, workers, part=TEST)
    rows = []
    for k in range(1, len(gated.tree.level(1)) + 1):
        gated.set_route_top_k(k)
        report = evaluate_gated(gated, loader, device)
        rows.append(
            {
                "route_top_k": k,
                "top1": report["top1"],
                "gmacs": report["gmacs"],
                "full_gmacs": report["full_gmacs"],
                "gmacs_reduction_percent": report["gmacs_reduction_percent"],
                "images_per_s": round(report["images_per_s"], 1),
                "ungated_images_per_s": round(report["ungated_images_per_s"], 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nhl", type=Path, required=True, help="the NHL default model file")
    parser.add_argument("--flat", type=Path, required=True, help="the flat default model file")
    parser.add_argument("--max-drop", type=float, default=0.25, help="top-1 loss allowed when tuning, points")
    parser.add_argument("--losses", default="hinge,ce")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--plot", type=Path, help="PNG of the accuracy-GMACs curves")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    keep_freed_cpu_memory()
    losses = args.losses.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        results = {
            name: run_model(name, path, losses, args.max_drop, args.workers, out)
            for name, path in (("flat", args.flat), ("nhl", args.nhl))
        }
        routing = run_routing(args.nhl, args.workers, out) if "hinge" in losses else []
    curves = {k: v for r in results.values() for k, v in r["curves"].items()}
    heldout = {k: v for r in results.values() for k, v in r["heldout"].items()}
    if args.plot:
        title = "Fashion-MNIST decision gates: thresholds tuned on test half 1, measured on half 2"
        plot_sweeps(heldout, args.plot, title=title)
    summary = {
        "threads": torch.get_num_threads(),
        "rows": [row for r in results.values() for row in r["rows"]],
        "routing": routing,
        "curves": {
            k: [{"max_drop": p["max_drop"], "top1": p["top1"], "gmacs": p["gmacs"]} for p in v]
            for k, v in curves.items()
        },
        "heldout": {
            k: [{key: p[key] for key in ("max_drop", "top1", "full_top1", "gmacs", "full_gmacs")} for p in v]
            for k, v in heldout.items()
        },
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["heldout"], indent=1))


if __name__ == "__main__":
    main()
