"""Decision gates on Fashion-MNIST (issue 5): hinge against cross-entropy gates, and routing.

For each model (the flat default and the NHL default, trained by ``nhl train`` with the demo's
recipe) and each gate loss: fit the gates on the 60k training images, tune the thresholds on
half of the test set for at most ``--max-drop`` points of top-1 lost, then run real gated
inference on the other half: top-1 against the full network on the same images, average GMACs,
exit fractions, and throughput gated against ungated on the same batches in one run. The sweep
(accuracy against GMACs, tuned on the first half) is drawn as a PNG. Routing: the NHL model with
closed exits, running only the branches of each image's top-K super-categories.

    python benchmarks/bench_gates.py --nhl nhl.safetensors --flat flat.safetensors --plot docs/gates.png

``--results`` stores the three tables docs/benchmarks.md shows as ``benchmarks/results/``
``gates-test-halves.json`` (each model and loss at ``--max-drop``), ``gates-test-halves-curve.json``
(every point of the sweep) and ``gates-routing-fm.json`` (route widths), which report.py renders.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def store(summary: dict, max_drop: float, workers: int) -> list[Path]:
    """The three tables as results files for report.py: percent for top-1, millions for MACs."""
    from results_store import invoked_command, machine, write_results

    common = {
        "command": invoked_command(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine_facts": machine(),
    }
    setup = {"data": "fashion-mnist", "fit_on": "train", "tuned_on": f"test part {TUNE}",
             "measured_on": f"test part {TEST}", "batch": 256, "workers": workers,
             "arms": {"flat": {"label": "flat"}, "nhl": {"label": "nhl"}}}  # fmt: skip
    rows = [
        {"model": r["model"], "loss": r["loss"], "tuned_for_drop": r["tuned_for_drop"],
         "top1_full": round(100 * r["full_top1"], 2), "top1_gated": round(100 * r["top1"], 2),
         "drop_points": r["drop_points"], "mmacs_full": round(1e3 * r["full_gmacs"], 2),
         "mmacs_gated": round(1e3 * r["gmacs"], 2), "fewer_gmacs_pct": r["gmacs_reduction_percent"],
         "exits": [round(f, 4) for f in r["exit_fractions"]],
         "images_per_s_ungated": r["ungated_images_per_s"], "images_per_s_gated": r["images_per_s"],
         "speedup": r["speedup"]}
        for r in summary["rows"]
    ]  # fmt: skip
    exits = {len(r["exits"]) for r in rows}  # one share per gate, then the full network's
    exits_shape = " / ".join(f"{{0[{i}]:.0%}}" for i in range(exits.pop())) if len(exits) == 1 else "{}"
    columns = [
        ["model", "model", "{}"], ["gates", "loss", "{}"], ["tuned for", "tuned_for_drop", "-{:g} pt"],
        ["top-1 full (held-out half)", "top1_full", "{:.2f}%"],
        ["top-1 gated (held-out half)", "top1_gated", "{:.2f}%"], ["drop", "drop_points", "{:.2f} pt"],
        ["avg MACs full", "mmacs_full", "{:.2f}M"], ["avg MACs gated", "mmacs_gated", "{:.2f}M"],
        ["fewer GMACs", "fewer_gmacs_pct", "**{:.1f}%**"],
        ["exits (per gate, then full)", "exits", exits_shape],
        ["img/s ungated", "images_per_s_ungated", "{:.0f}"], ["img/s gated", "images_per_s_gated", "{:.0f}"],
        ["speed-up", "speedup", "x{:.2f}"],
    ]  # fmt: skip
    title = f"Gates tuned on test half 1 for -{max_drop:g} pt, measured on half 2"
    table = {**setup, "max_drop_points": max_drop, "table": {"columns": columns}}
    paths = [write_results("gates-test-halves", title=title, setup=table, runs=rows, **common)]
    curve, drops = [], []
    for label, points in summary["heldout"].items():
        model, loss = label.removesuffix(" gates").split(", ")
        record: dict = {"model": model, "loss": loss}
        for p in points:  # the drop in points and the change in GMACs, both on half 2
            drops.append(p["max_drop"])
            record[f"at_{p['max_drop']:g}"] = {
                "drop_points": round(100 * (p["full_top1"] - p["top1"]), 2),
                "gmacs_change_pct": round(100 * (p["gmacs"] / p["full_gmacs"] - 1), 1),
            }
        curve.append(record)
    point_columns = [["model", "model", "{}"], ["gates", "loss", "{}"]] + [
        [f"{d:g} pt", f"at_{d:g}", "{0[drop_points]:.2f} pt, {0[gmacs_change_pct]:.0f}%"]
        for d in sorted(set(drops))
    ]
    title = "Every point of the gate sweep: tuned on test half 1, measured on half 2"
    table = {**setup, "table": {"columns": point_columns}}
    paths.append(write_results("gates-test-halves-curve", title=title, setup=table, runs=curve, **common))
    routes = [
        {"model": "nhl", "route_top_k": r["route_top_k"], "top1": round(100 * r["top1"], 2),
         "mmacs": round(1e3 * r["gmacs"], 2), "fewer_gmacs_pct": r["gmacs_reduction_percent"],
         "images_per_s_ungated": r["ungated_images_per_s"], "images_per_s_routed": r["images_per_s"]}
        for r in summary["routing"]
    ]  # fmt: skip
    route_columns = [
        ["route top-K", "route_top_k", "{}"], ["top-1 (held-out half)", "top1", "{:.2f}%"],
        ["avg MACs", "mmacs", "{:.2f}M"], ["fewer GMACs", "fewer_gmacs_pct", "{:.1f}%"],
        ["img/s ungated", "images_per_s_ungated", "{:.0f}"],
        ["img/s routed", "images_per_s_routed", "{:.0f}"],
    ]  # fmt: skip
    if routes:
        title = "Routing the NHL model to its top-K super-categories, exits closed"
        table = {**setup, "table": {"columns": route_columns}}
        paths.append(write_results("gates-routing-fm", title=title, setup=table, runs=routes, **common))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nhl", type=Path, required=True, help="the NHL default model file")
    parser.add_argument("--flat", type=Path, required=True, help="the flat default model file")
    parser.add_argument("--max-drop", type=float, default=0.25, help="top-1 loss allowed when tuning, points")
    parser.add_argument("--losses", default="hinge,ce")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--plot", type=Path, help="PNG of the accuracy-GMACs curves")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--results", action="store_true", help="store the three tables for report.py")
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
    if args.results:
        for path in store(summary, args.max_drop, args.workers):
            print(f"stored {path}", file=sys.stderr)
    print(json.dumps(summary["heldout"], indent=1))


if __name__ == "__main__":
    main()
