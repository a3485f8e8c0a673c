"""When it is wrong, is a nested network less wrong than a flat one? (issue 38)

For each seed, trains flat ResNet18 and the paper's NHL shape on the data's shipped tree (N2HL on
Fashion-MNIST's 2-level WordNet tree, N3HL on Unicode's 3-level emoji tree) with the demo's recipe
(``nhl train``), then measures both on the test split and on one tree, the NHL's (``nhl eval NHL
--compare FLAT``): top-1, per-level top-1, mistake severity, hierarchical distance @1 and @5,
hierarchical F1 and calibration error. Per seed it keeps the paired-bootstrap interval over
images; across seeds, a paired t interval of NHL minus flat.

Severity is worth comparing at equal top-1: a weaker model's mistakes are not the same mistakes.
Where the NHL is far ahead at one budget, ``--choose-flat-epochs 10,12,14`` trains flat longer:
it trains the NHL at ``--epochs`` and flat at each candidate budget on the training images less
a 20% hold-out, and takes the budget whose mean hold-out top-1 is nearest the NHL's, so the
choice never sees the test split the comparison is reported on. Emoji images are drawn, so
``--test-per-class 40`` scores on a test split ten times the shipped one (4 a class), where that
one is too small to tell.

    python benchmarks/bench_hierarchy_metrics.py --epochs 10 --seeds 0,1,2 --results
    python benchmarks/bench_hierarchy_metrics.py --data emoji --classes "Animals & Nature" --epochs 8 \
        --name emoji-animals-hierarchy-metrics-e8 --results
    python benchmarks/bench_hierarchy_metrics.py --data emoji --classes "Animals & Nature" --epochs 8 \
        --choose-flat-epochs 10,12,14,16,18 --test-per-class 40 \
        --name emoji-animals-hierarchy-metrics-matched-test40 --results

Models go to ``--workdir`` and are not retrained when there already.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from evidence import difference
from results_store import invoked_command, write_results

from nhlcli.data.emoji import DEFAULT_SIZE, EmojiDataset
from nhlcli.data.registry import dataset_spec, register_dataset
from nhlcli.demo import recipe_args
from nhlcli.evaluation import compare_files
from nhlcli.model.files import read_metadata
from nhlcli.taxonomy.tree import Tree

TREES = {"fashion-mnist": "fashion-mnist-wordnet-l2", "emoji": "emoji-unicode-l3"}
FLAT, NESTED = "flat ResNet18", "NHL (paper shape)"
METRICS = ("top1", "hdist_at_1", "hdist_at_k", "mistake_severity", "hf1", "ece")
HOLDOUT = 0.2  # of the training images, for --choose-flat-epochs


def arms(tree: str) -> dict[str, list[str]]:
    """Flat ResNet18 and the paper's NHL shape on the shipped tree (N2HL on Fashion-MNIST's
    2-level WordNet tree, N3HL on Unicode's 3-level emoji tree)."""
    return {FLAT: ["--flat", "--hierarchy", tree], NESTED: ["--variant", "nhl", "--hierarchy", tree]}


def train(
    arm: str, options: list[str], seed: int, epochs: int, args: argparse.Namespace, holdout: float = 0.0
) -> Path:
    kept = f"-holdout{holdout:g}" if holdout else ""
    out = args.workdir / f"{arm.split()[0].lower()}-e{epochs}-s{seed}{kept}.safetensors"
    if not out.exists():
        subset = ["--classes", args.classes] if args.classes else []
        held = ["--holdout", str(holdout)] if holdout else []
        command = [sys.executable, "-m", "nhlcli", "train", "--data", args.data, *subset,
                   *recipe_args(epochs), *options, *held, "--seed", str(seed), "--workers", str(args.workers),
                   "-o", str(out)]  # fmt: skip
        print("+", " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def larger_emoji_test_split(per_class: int) -> str:
    """The emoji data with a test split of ``per_class`` images a class instead of 4 (its images
    are drawn, so more of them are new images from the same distribution), registered under a
    name of its own; the training split is unchanged."""

    def open_split(split: str, transform: Any = None, mode: str = "RGB", size: int | None = None) -> Any:
        count = None if split == "train" else per_class
        return EmojiDataset(split, transform, mode, size or DEFAULT_SIZE, per_class=count)

    name = f"emoji-test{per_class}"
    register_dataset(dataclasses.replace(dataset_spec("emoji"), name=name, open=open_split, demo=None))
    return name


def holdout_top1(model: Path) -> float:
    return read_metadata(model)["training"]["history"][-1]["val_top1"]


def choose_flat_epochs(candidates: list[int], seeds: list[int], tree: str, args: argparse.Namespace) -> dict:
    """The flat budget whose mean hold-out top-1 is nearest the NHL's at ``--epochs``, with the
    figures it was chosen on."""
    options = arms(tree)
    nested = [holdout_top1(train(NESTED, options[NESTED], s, args.epochs, args, HOLDOUT)) for s in seeds]
    flat = {
        n: [holdout_top1(train(FLAT, options[FLAT], s, n, args, HOLDOUT)) for s in seeds] for n in candidates
    }
    target = statistics.mean(nested)
    chosen = min(candidates, key=lambda n: abs(statistics.mean(flat[n]) - target))
    for n in candidates:
        print(f"flat at {n} epochs: hold-out top-1 {statistics.mean(flat[n]):.2%} (NHL at {args.epochs}: "
              f"{target:.2%}){'  <- chosen' if n == chosen else ''}", flush=True)  # fmt: skip
    return {"holdout": HOLDOUT, "seeds": seeds, "nhl_epochs": args.epochs, "nhl_holdout_top1": nested,
            "flat_holdout_top1": {str(n): flat[n] for n in candidates}, "chosen": chosen}  # fmt: skip


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
    parser.add_argument("--flat-epochs", type=int, default=None, help="flat's budget [default: --epochs]")
    parser.add_argument(
        "--choose-flat-epochs",
        default=None,
        metavar="N,N,...",
        help="choose flat's budget among these on a hold-out, to match the NHL's top-1",
    )
    parser.add_argument("--holdout-seeds", default="0,1", help="seeds of the --choose-flat-epochs runs")
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        help="emoji: score on a test split of this many drawn images a class (the shipped one has 4)",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", type=Path, default=Path("bench-hierarchy-metrics"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--name", default=None, help="results name [default: fm-hierarchy-metrics-eEPOCHS]")
    parser.add_argument("--results", action="store_true", help="store benchmarks/results/NAME.json")
    args = parser.parse_args()
    if args.flat_epochs is not None and args.choose_flat_epochs:
        parser.error("give --flat-epochs or --choose-flat-epochs, not both")
    if args.test_per_class is not None and (args.data != "emoji" or args.test_per_class < 1):
        parser.error("--test-per-class takes a positive count, and only with --data emoji (drawn images)")
    scored_on = larger_emoji_test_split(args.test_per_class) if args.test_per_class else args.data
    args.workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    tree_name = TREES[args.data]
    choice = None
    if args.choose_flat_epochs:
        candidates = [int(n) for n in args.choose_flat_epochs.split(",")]
        holdout_seeds = [int(s) for s in args.holdout_seeds.split(",")]
        choice = choose_flat_epochs(candidates, holdout_seeds, tree_name, args)
        args.flat_epochs = choice["chosen"]
    flat_epochs = args.flat_epochs or args.epochs
    epochs = {FLAT: flat_epochs, NESTED: args.epochs}
    runs, bootstrap = [], []
    for seed in seeds:
        flat, nested = (train(arm, o, seed, epochs[arm], args) for arm, o in arms(tree_name).items())
        tree = Tree.from_dict(read_metadata(nested)["tree"])  # the NHL's own (for --classes, its subtree)
        report = compare_files(flat, nested, scored_on, workers=args.workers, hierarchy=tree)
        for arm, side in ((FLAT, "a"), (NESTED, "b")):
            runs.append({"model": arm, "seed": seed, "epochs": epochs[arm], **figures(report[side])})
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
        budget = f"{args.epochs} epochs"
        if flat_epochs != args.epochs:
            budget = f"NHL {args.epochs} epochs, flat {flat_epochs}"
        if args.test_per_class:
            budget += f", {args.test_per_class} test images a class"
        write_results(
            args.name or f"fm-hierarchy-metrics-e{args.epochs}",
            title=f"{args.data}{' ' + args.classes if args.classes else ''}, {budget}: how wrong the "
            "mistakes are, flat against the NHL",
            command=invoked_command(),
            setup={
                "data": args.data,
                "classes": args.classes,
                "evaluated_on": "test",
                "test_images_per_class": args.test_per_class,
                "tree": tree_name,
                "epochs": args.epochs,
                "flat_epochs": flat_epochs,
                "flat_epochs_choice": choice,
                "recipe": " ".join(recipe_args(args.epochs)),
                "arms": {arm: {"label": arm, "options": " ".join(o)} for arm, o in arms(tree_name).items()},
                "per_seed_bootstrap": bootstrap,
                "table": {"columns": [
                    ["model", "model", "{}"], ["seed", "seed", "{}"], ["epochs", "epochs", "{}"],
                    ["top-1", "top1", "{:.2%}"],
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
