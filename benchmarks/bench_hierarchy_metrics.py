"""When it is wrong, is a nested network less wrong than a flat one? (issue 38)

For each seed, trains flat ResNet18 and N2HL (the paper's NHL shape on the shipped WordNet tree)
with the demo's recipe (``nhl train``), then measures both on Fashion-MNIST's test set and on one
tree, the N2HL's (``nhl eval N2HL --compare FLAT``): top-1, per-level top-1, mistake severity,
hierarchical distance @1 and @5, hierarchical F1 and calibration error. Per seed it keeps the
paired-bootstrap interval over images; across seeds, a paired t interval of N2HL minus flat.

    python benchmarks/bench_hierarchy_metrics.py --epochs 10 --seeds 0,1,2 --results

Models go to ``--workdir`` and are not retrained when there already.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from evidence import difference
from results_store import invoked_command, write_results

from nhlcli.demo import recipe_args
from nhlcli.evaluation import compare_files
from nhlcli.taxonomy.sources import shipped_tree

TREE = "fashion-mnist-wordnet-l2"
ARMS = {
    "flat ResNet18": ["--flat"],
    "N2HL (WordNet)": ["--variant", "nhl", "--hierarchy", TREE],
}
METRICS = ("top1", "hdist_at_1", "hdist_at_k", "mistake_severity", "hf1", "ece")


def train(arm: str, seed: int, epochs: int, workdir: Path, workers: int) -> Path:
    out = workdir / f"{arm.split()[0].lower()}-e{epochs}-s{seed}.safetensors"
    if not out.exists():
        command = [sys.executable, "-m", "nhlcli", "train", "--data", "fashion-mnist", *recipe_args(epochs),
                   *ARMS[arm], "--seed", str(seed), "--workers", str(workers), "-o", str(out)]  # fmt: skip
        print("+", " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def figures(report: dict) -> dict:
    metrics = report["hierarchy"]
    row = {key: report[key] if key in report else metrics[key] for key in METRICS}
    row["level1_top1"] = metrics["levels"][0]["top1"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", type=Path, default=Path("bench-hierarchy-metrics"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--results", action="store_true", help="store benchmarks/results/NAME.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, bootstrap = [], []
    for seed in seeds:
        flat = train("flat ResNet18", seed, args.epochs, args.workdir, args.workers)
        nested = train("N2HL (WordNet)", seed, args.epochs, args.workdir, args.workers)
        tree = shipped_tree(TREE)
        report = compare_files(flat, nested, "fashion-mnist", workers=args.workers, hierarchy=tree)
        for arm, side in (("flat ResNet18", "a"), ("N2HL (WordNet)", "b")):
            runs.append({"model": arm, "seed": seed, **figures(report[side])})
        bootstrap.append({"seed": seed, "images": report["images"], **report["differences"]})
        d = report["differences"]
        severity = d["mistake_severity"]
        print(f"seed {seed}: N2HL - flat top-1 {d['top1']['b_minus_a']:+.2%}, mistake severity "
              f"{severity['b_minus_a']:+.3f} {severity['ci95']}", flush=True)  # fmt: skip
    verdicts = {}
    for key in (*METRICS, "level1_top1"):
        a = [r[key] for r in runs if r["model"] == "flat ResNet18"]
        b = [r[key] for r in runs if r["model"] == "N2HL (WordNet)"]
        verdicts[key] = difference(a, b, paired=True)
        interval = verdicts[key]["interval"]
        shown = "" if interval is None else f" [{interval[0]:+.4f}, {interval[1]:+.4f}]"
        print(f"N2HL - flat, {key}: {verdicts[key]['diff']:+.4f}{shown} (paired t over {len(seeds)} seeds)")
    if args.results:
        write_results(
            f"fm-hierarchy-metrics-e{args.epochs}",
            title=f"Fashion-MNIST, {args.epochs} epochs: how wrong the mistakes are, flat against N2HL",
            command=invoked_command(),
            setup={
                "data": "fashion-mnist",
                "evaluated_on": "test",
                "tree": TREE,
                "epochs": args.epochs,
                "recipe": " ".join(recipe_args(args.epochs)),
                "arms": {arm: {"label": arm, "options": " ".join(opts)} for arm, opts in ARMS.items()},
                "per_seed_bootstrap": bootstrap,
                "table": {"columns": [
                    ["model", "model", "{}"], ["seed", "seed", "{}"], ["top-1", "top1", "{:.2%}"],
                    ["level-1 top-1", "level1_top1", "{:.2%}"],
                    ["mistake severity", "mistake_severity", "{:.3f}"],
                    ["hdist@1", "hdist_at_1", "{:.4f}"], ["hdist@5", "hdist_at_k", "{:.3f}"],
                    ["hF1", "hf1", "{:.2%}"], ["ECE", "ece", "{:.2%}"],
                ]},  # fmt: skip
                "paired_t_n2hl_minus_flat": verdicts,
            },
            runs=runs,
        )


if __name__ == "__main__":
    main()
