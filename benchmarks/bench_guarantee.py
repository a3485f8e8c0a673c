"""Does a gate budget hold on new images? Tuned thresholds against Learn-then-Test (issue 38).

A gated model (fitted on the training images) scores every image of the test split once. Then,
for each of ``--splits`` random halvings of the test split, thresholds are chosen on one half
(the calibration half) and measured on the other (the evaluation half), two ways:

- ``tuned``: ``nhl gates tune --max-drop X``, the greedy search meeting the budget on the
  calibration half itself (what earlier rounds reported);
- ``guaranteed``: ``nhl gates tune --max-drop X --delta D``, Learn-then-Test on the calibration
  half (ordered on half of it, tested on the other half): the rate over new images;
- ``guaranteed, test set``: ``nhl gates tune --max-drop X --delta D --test-images M`` with ``M``
  the evaluation half's size: the drop measured on that many new images;
- with ``--with-route``, also ``guaranteed, width and thresholds``: ``nhl gates tune
  --tune-route-and-thresholds --max-drop X --delta D``, the routing width and the thresholds under
  one guarantee, the drop counted against the whole network.

For each budget it prints, per method, the share of splits whose accuracy lost on the evaluation
half exceeds the budget (the guarantee promises at most about ``D``), the mean loss, and the
GMACs saved on the evaluation half.

    python benchmarks/bench_guarantee.py --gated gated.safetensors --results

Without ``--gated`` it trains what it needs in ``--workdir`` first: the default NHL with the demo's recipe
for ``--epochs`` on Fashion-MNIST, then its hinge gates (``nhl train``, ``nhl gates fit``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from nhlcli.data.loaders import model_loader
from nhlcli.demo import recipe_args
from nhlcli.gates import collect_exits, simulate, tune_thresholds
from nhlcli.gates.guarantee import guaranteed_route_and_thresholds, guaranteed_thresholds, split_record
from nhlcli.gates.workflow import fit_file, load_gated
from nhlcli.memory import keep_freed_cpu_memory
from nhlcli.model.files import read_metadata

BUDGETS = (0.25, 0.5, 1.0)  # points of top-1
GUARANTEED, ON_TEST_SET, JOINT = "guaranteed", "guaranteed, test set", "guaranteed, width and thresholds"


def prepare(workdir: Path, data: str, epochs: int, workers: int) -> Path:
    """Train the default NHL with the demo's recipe and fit its gates (``nhl train``, ``nhl gates
    fit``; each skipped when its file is there already)."""
    model, gated = workdir / "nhl.safetensors", workdir / "gated.safetensors"
    workdir.mkdir(parents=True, exist_ok=True)
    nhl = [sys.executable, "-m", "nhlcli"]
    if not model.exists():
        subprocess.run([*nhl, "train", "--data", data, *recipe_args(epochs), "--seed", "0", "--workers",
                        str(workers), "-o", str(model)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    if not gated.exists():
        fit_file(model, gated, data, "train", workers=workers)
    return gated


def drop_points(result: dict) -> float:
    return 100 * (result["full_top1"] - result["top1"])


def one_split(gated, record, budget: float, delta: float, seed: int, widths: dict | None = None) -> dict:
    """Every method on one halving: chosen on the calibration half, measured on the other
    (``widths``: one record per routing width, for the joint method)."""
    calibration, evaluation = split_record(record, 0.5, 1000 + seed)
    tuned = tune_thresholds(gated, calibration, calibration.full_accuracy - budget / 100)["thresholds"]
    chosen = guaranteed_thresholds(gated, calibration, budget / 100, delta, "drop", seed)
    on_test_set = guaranteed_thresholds(gated, calibration, budget / 100, delta, "drop", seed,
                                        test_images=len(evaluation.labels))  # fmt: skip
    row = {"seed": seed, "budget_points": budget}
    choices = {"tuned": tuned, GUARANTEED: chosen["thresholds"], ON_TEST_SET: on_test_set["thresholds"]}
    for method, thresholds in choices.items():
        measured = simulate(gated, evaluation, thresholds)
        row[method] = {
            "drop_points": drop_points(measured),
            "fewer_gmacs_pct": 100 * (1 - measured["gmacs"] / measured["full_gmacs"]),
        }
    row[GUARANTEED]["any_saving"] = chosen["guarantee"]["guaranteed_saving"]
    row[ON_TEST_SET]["any_saving"] = on_test_set["guarantee"]["guaranteed_saving"]
    if widths:
        row[JOINT] = joint_split(gated, widths, budget, delta, seed)
    return row


def joint_split(gated, widths: dict, budget: float, delta: float, seed: int) -> dict:
    """The width and thresholds chosen together on the calibration half, measured on the other
    against the whole network (the widest width, every gate closed)."""
    halves = {width: split_record(record, 0.5, 1000 + seed) for width, record in widths.items()}
    calibration = {width: parts[0] for width, parts in halves.items()}
    chosen = guaranteed_route_and_thresholds(gated, calibration, budget / 100, delta, "drop", seed)
    evaluation = halves[chosen["route_top_k"]][1]
    measured = simulate(gated, evaluation, chosen["thresholds"])
    return {
        "drop_points": 100 * (halves[max(widths)][1].full_accuracy - measured["top1"]),
        "fewer_gmacs_pct": 100 * (1 - measured["gmacs"] / measured["full_gmacs"]),
        "any_saving": chosen["guarantee"]["guaranteed_saving"],
        "route_top_k": chosen["route_top_k"],
    }


def summarise(rows: list[dict], budget: float, delta: float) -> list[dict]:
    runs = []
    for method in [key for key in rows[0] if isinstance(rows[0][key], dict)]:
        drops = [r[method]["drop_points"] for r in rows]
        saved = [r[method]["fewer_gmacs_pct"] for r in rows]
        runs.append({
            "model": method,
            "budget_points": budget,
            "delta": None if method == "tuned" else delta,
            "saving_guaranteed_share": None if method == "tuned" else statistics.mean(
                r[method]["any_saving"] for r in rows),
            "splits": len(rows),
            "exceeded_share": sum(d > budget for d in drops) / len(rows),
            "drop_mean": statistics.mean(drops),
            "drop_max": max(drops),
            "fewer_gmacs_mean": statistics.mean(saved),
            "fewer_gmacs_sd": statistics.stdev(saved) if len(saved) > 1 else 0.0,
        })  # fmt: skip
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gated", type=Path, help="a gated file (default: train one in --workdir)")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--split", default="val", help="the split halved (Fashion-MNIST's val: its test set)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-guarantee"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--splits", type=int, default=40)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--with-route", action="store_true",
                        help="also choose the routing width and thresholds together (scores every width)")
    parser.add_argument("--name", default="gates-guarantee-fm", help="results file name")
    parser.add_argument("--results", action="store_true", help="store benchmarks/results/NAME.json")
    args = parser.parse_args()
    keep_freed_cpu_memory()
    torch.manual_seed(0)
    gated_file = args.gated or prepare(args.workdir, args.data, args.epochs, args.workers)
    gated = load_gated(gated_file, torch.device("cpu"))
    started = time.perf_counter()
    loader = model_loader(gated, args.data, args.split, 256, args.workers)
    record = collect_exits(gated, loader, torch.device("cpu"))
    print(f"scored {len(record.labels)} images through every gate in {time.perf_counter() - started:.0f} s; "
          f"full top-1 {record.full_accuracy:.2%}")  # fmt: skip
    widths = {}
    if args.with_route:
        for width in range(len(gated.tree.level(1)), 0, -1):
            gated.set_route_top_k(width)
            loader = model_loader(gated, args.data, args.split, 256, args.workers)
            widths[width] = collect_exits(gated, loader, torch.device("cpu"))
        gated.set_route_top_k(None)
    runs, per_split = [], []
    for budget in (float(b) for b in args.budgets.split(",")):
        rows = [one_split(gated, record, budget, args.delta, seed, widths) for seed in range(args.splits)]
        per_split += rows
        for run in summarise(rows, budget, args.delta):
            runs.append(run)
            print(f"budget {budget:g} pt  {run['model']:>10}: exceeded in {run['exceeded_share']:.0%} of "
                  f"{run['splits']} splits, drop mean {run['drop_mean']:.2f} pt (max {run['drop_max']:.2f}), "
                  f"{run['fewer_gmacs_mean']:.1f}% fewer GMACs (sd {run['fewer_gmacs_sd']:.1f})")  # fmt: skip
    if args.results:
        from results_store import invoked_command, write_results

        meta = read_metadata(gated_file)
        write_results(
            args.name,
            title=f"Gate budgets on new images: tuned against guaranteed (δ={args.delta}), "
            f"{args.splits} halvings",
            command=invoked_command(),
            setup={
                "data": args.data,
                "gated_file": gated_file.name,
                "model_training": {k: meta["training"].get(k) for k in ("epochs", "seed")},
                "gates": meta["gates"]["loss"] + " gates fitted on the training images",
                "images": len(record.labels),
                "full_top1": record.full_accuracy,
                "calibration": "a random half of the split; the other half measures (its size is the "
                "test-set guarantee's test_images)",
                "delta": args.delta,
                "per_split": per_split,
                "table": {
                    "columns": [
                        ["method", "model", "{}"],
                        ["budget", "budget_points", "{:g} pt"],
                        ["splits over budget", "exceeded_share", "**{:.0%}**"],
                        ["mean drop", "drop_mean", "{:.2f} pt"],
                        ["worst drop", "drop_max", "{:.2f} pt"],
                        ["fewer GMACs (mean)", "fewer_gmacs_mean", "{:.1f}%"],
                        ["sd", "fewer_gmacs_sd", "{:.1f}"],
                        ["splits with a saving", "saving_guaranteed_share", "{:.0%}"],
                    ]
                },
            },
            runs=runs,
            notes="setup.per_split holds every halving's figures; a run summarises one method and budget.",
        )


if __name__ == "__main__":
    main()
