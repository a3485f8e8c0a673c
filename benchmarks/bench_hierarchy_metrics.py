"""When it is wrong, is a nested network less wrong than a flat one? (issue 38)

For each seed, trains flat ResNet18 and the paper's NHL shape on the data's shipped tree (N2HL on
Fashion-MNIST's 2-level WordNet tree, N3HL on Unicode's 3-level emoji tree) with the demo's recipe
(``nhl train``), then measures both on the test split and on one tree, the NHL's (``nhl eval NHL
--compare FLAT``): top-1, per-level top-1, mistake severity, hierarchical distance @1 and @5,
hierarchical F1 and calibration error. Per seed it keeps the paired-bootstrap interval over
images; across seeds, a paired t interval of NHL minus flat.

    python benchmarks/bench_hierarchy_metrics.py --epochs 10 --seeds 0,1,2 --results
    python benchmarks/bench_hierarchy_metrics.py --data emoji --classes "Animals & Nature" --epochs 8 \
        --name emoji-animals-hierarchy-metrics-e8 --results

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
from nhlcli.model.files import read_metadata
from nhlcli.taxonomy.tree import Tree

TREES = {"fashion-mnist": "fashion-mnist-wordnet-l2", "emoji": "emoji-unicode-l3"}
FLAT, NESTED = "flat ResNet18", "NHL (paper shape)"
METRICS = ("top1", "hdist_at_1", "hdist_at_k", "mistake_severity", "hf1", "ece")


def arms(tree: str) -> dict[str, list[str]]:
    """Flat ResNet18 and the paper's NHL shape on the shipped tree (N2HL on Fashion-MNIST's
    2-level WordNet tree, N3HL on Unicode's 3-level emoji tree)."""
    return {FLAT: ["--flat", "--hierarchy", tree], NESTED: ["--variant", "nhl", "--hierarchy", tree]}


def train(arm: str, options: list[str], seed: int, args: argparse.Namespace) -> Path:
    out = args.workdir / f"{arm.split()[0].lower()}-e{args.epochs}-s{seed}.safetensors"
    if not out.exists():
        subset = ["--classes", args.classes] if args.classes else []
        command = [sys.executable, "-m", "nhlcli", "train", "--data", args.data, *subset,
                   *recipe_args(args.epochs), *options, "--seed", str(seed), "--workers", str(args.workers),
                   "-o", str(out)]  # fmt: skip
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
    parser.add_argument("--data", default="fashion-mnist", choices=sorted(TREES))
    parser.add_argument("--classes", default=None, help="train and measure on these classes only")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", type=Path, default=Path("bench-hierarchy-metrics"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--name", default=None, help="results name [default: fm-hierarchy-metrics-eEPOCHS]")
    parser.add_argument("--results", action="store_true", help="store benchmarks/results/NAME.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    tree_name = TREES[args.data]
    runs, bootstrap = [], []
    for seed in seeds:
        flat, nested = (train(arm, options, seed, args) for arm, options in arms(tree_name).items())
        tree = Tree.from_dict(read_metadata(nested)["tree"])  # the NHL's own (for --classes, its subtree)
        report = compare_files(flat, nested, args.data, workers=args.workers, hierarchy=tree)
        for arm, side in ((FLAT, "a"), (NESTED, "b")):
            runs.append({"model": arm, "seed": seed, **figures(report[side])})
        bootstrap.append({"seed": seed, "images": report["images"], **report["differences"]})
        d = report["differences"]
        severity = d["mistake_severity"]
        print(f"seed {seed}: NHL - flat top-1 {d['top1']['b_minus_a']:+.2%}, mistake severity "
              f"{severity['b_minus_a']:+.3f} {severity['ci95']}", flush=True)  # fmt: skip
    verdicts = {}
    for key in (*METRICS, "level1_top1"):
        a = [r[key] for r in runs if r["model"] == FLAT]
        b = [r[key] for r in runs if r["model"] == NESTED]
        verdicts[key] = difference(a, b, paired=True)
        interval = verdicts[key]["interval"]
        shown = "" if interval is None else f" [{interval[0]:+.4f}, {interval[1]:+.4f}]"
        print(f"NHL - flat, {key}: {verdicts[key]['diff']:+.4f}{shown} (paired t over {len(seeds)} seeds)")
    if args.results:
        write_results(
            args.name or f"fm-hierarchy-metrics-e{args.epochs}",
            title=f"{args.data}{' ' + args.classes if args.classes else ''}, {args.epochs} epochs: how wrong "
            "the mistakes are, flat against the NHL",
            command=invoked_command(),
            setup={
                "data": args.data,
                "classes": args.classes,
                "evaluated_on": "test",
                "tree": tree_name,
                "epochs": args.epochs,
                "recipe": " ".join(recipe_args(args.epochs)),
                "arms": {arm: {"label": arm, "options": " ".join(o)} for arm, o in arms(tree_name).items()},
                "per_seed_bootstrap": bootstrap,
                "table": {"columns": [
                    ["model", "model", "{}"], ["seed", "seed", "{}"], ["top-1", "top1", "{:.2%}"],
                    ["level-1 top-1", "level1_top1", "{:.2%}"],
                    ["mistake severity", "mistake_severity", "{:.3f}"],
                    ["hdist@1", "hdist_at_1", "{:.4f}"], ["hdist@5", "hdist_at_k", "{:.3f}"],
                    ["hF1", "hf1", "{:.2%}"], ["ECE", "ece", "{:.2%}"],
                ]},  # fmt: skip
                "paired_t_nhl_minus_flat": verdicts,
            },
            runs=runs,
        )


if __name__ == "__main__":
    main()
