"""Fashion-MNIST end to end: the default NHL configuration's test accuracy and wall time.

Runs ``nhl train`` on the 60k training images (Debian's dataset-fashion-mnist, or NHL_DATA) and
evaluates on the 10k test images every epoch, as a user would, and prints top-1, wall time and
throughput. ``--flat`` runs the plain timm model with the same trunk and settings.

    python benchmarks/bench_fashion_mnist.py [--epochs 10] [--flat] [--json] [--results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nhlcli.demo import DEFAULT_EPOCHS, recipe_args
from nhlcli.model import DEFAULT_VARIANT

GOAL_TOP1, GOAL_SECONDS = 0.92, 600


def store(result: dict, epochs: int) -> None:
    """The run as one row of ``benchmarks/results/fm-real-data.json`` (a rerun of the same model
    and epochs replaces its row, the others stay), the table report.py puts in the docs."""
    from results_store import add_runs, invoked_command

    name = f"{result['model']}-e{epochs}"
    columns = [["run", "model", "{}"]] + [[str(e), f"e{e}", "{:.2f}%"] for e in range(1, 11)]
    add_runs(
        "fm-real-data",
        [{"model": name, "variant": result["model"], "wall_s": result["wall_s"],
          **{f"e{row['epoch']}": 100 * row["test_top1"] for row in result["per_epoch"]}}],
        key=("model",),
        title="Fashion-MNIST with the default recipe: test top-1 after every epoch, wall time",
        command=invoked_command(),
        setup={"data": "fashion-mnist", "tree": "fashion-mnist-wordnet-l2", "evaluated_on": "test",
               "arms": {name: {"label": f"`{result['model']}`, {epochs} epochs, default recipe"}},
               "table": {"columns": columns + [["wall time", "wall_s", "{:.0f} s"]]}},
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--flat", action="store_true", help="train the flat baseline instead")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", action="store_true", help="store the run in fm-real-data.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fm.safetensors"
        cmd = [sys.executable, "-m", "nhlcli", "train", "--data", "fashion-mnist",
               *recipe_args(args.epochs), "-o", str(out), "--json"]  # fmt: skip
        if args.flat:
            cmd.append("--flat")
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    summary = json.loads(proc.stdout)
    result = {
        "model": "flat" if args.flat else DEFAULT_VARIANT,
        "command": "nhl train --data fashion-mnist " + " ".join(recipe_args(args.epochs)),
        "test_top1": round(summary["val_top1"], 4),
        "wall_s": round(wall, 1),
        "per_epoch": [
            {
                "epoch": h["epoch"],
                "test_top1": round(h["val_top1"], 4),
                "train_img_per_s": round(h["images_per_s"]),
            }
            for h in summary["history"]
        ],
        "goal": f"top-1 >= {GOAL_TOP1:.0%} within {GOAL_SECONDS} s",
    }
    if args.results:
        store(result, args.epochs)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(result["command"])
    for row in result["per_epoch"]:
        print(
            f"  epoch {row['epoch']}: test top-1 {row['test_top1']:.2%}, {row['train_img_per_s']} train img/s"
        )
    met = result["test_top1"] >= GOAL_TOP1 and wall <= GOAL_SECONDS
    print(f"{result['model']}: test top-1 {result['test_top1']:.2%} in {wall:.0f} s "
          f"(goal {result['goal']}: {'met' if met else 'not met'})")  # fmt: skip


if __name__ == "__main__":
    main()
