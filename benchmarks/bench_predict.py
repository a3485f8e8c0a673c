"""``nhl predict FOLDER -o preds.csv`` against ``nhl eval`` on the same images and model.

The goal (issue 37): a 10,000-image folder through ``nhl predict -o preds.csv`` at the same
images/s as ``nhl eval``. Both read the same PNG files with the same reader, model and batch
size; the difference left is what each does per image besides the forward pass (predict: top-k
rows and a CSV; eval: the metrics). Each command runs whole, as a user runs it (start-up and
model load included), alternating, ``--repeats`` times; the figures are images / wall seconds,
and the ratio is taken within each pair of runs.

    python benchmarks/bench_predict.py --images 10000 --repeats 3 --results bench_predict

The folder is the Fashion-MNIST test set written as PNGs (``DIR/val/<class>/<i>.png``, one
image per class under ``train/``); the model is the default variant on resnet18 over the
shipped WordNet tree at 28 px with random weights (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from results_store import invoked_command, machine, write_results  # noqa: E402

from nhlcli.data.fashion_mnist import FASHION_MNIST, load_split  # noqa: E402
from nhlcli.model import DEFAULT_VARIANT  # noqa: E402
from nhlcli.model.files import save_model  # noqa: E402
from nhlcli.model.nhl import with_input_size  # noqa: E402
from nhlcli.model.registry import create_model  # noqa: E402
from nhlcli.model.trunk import TrunkConfig  # noqa: E402
from nhlcli.taxonomy.tree import Tree  # noqa: E402

TREE = REPO / "taxonomies" / "fashion-mnist-wordnet-l2.json"


def write_folder(root: Path, count: int) -> Path:
    """``count`` test images as PNGs under ``root/val/<class id>/``; one per class in ``train/``."""
    images, labels, _ = load_split("val")
    for split, n in (("val", count), ("train", 0)):
        for entry in FASHION_MNIST:
            (root / split / entry.id).mkdir(parents=True, exist_ok=True)
        if split == "train":
            for c, entry in enumerate(FASHION_MNIST):
                first = int((labels == c).nonzero()[0][0])
                Image.fromarray(images[first]).save(root / "train" / entry.id / "0.png")
            continue
        for i in range(n):
            Image.fromarray(images[i]).save(root / "val" / FASHION_MNIST[int(labels[i])].id / f"{i}.png")
    return root


def write_model(path: Path) -> Path:
    torch.manual_seed(0)
    tree = Tree.from_dict(json.loads(TREE.read_text(encoding="utf-8")))
    model = create_model(tree, DEFAULT_VARIANT, TrunkConfig("resnet18", None, 1))
    model.input_config = with_input_size(model.input_config, 28)
    return save_model(model.eval(), path)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", help="store the figures as benchmarks/results/NAME.json")
    args = parser.parse_args()
    env_threads = {"OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp) / "fmnist", args.images)
        model = write_model(Path(tmp) / "model.safetensors")
        batch = ["--batch-size", str(args.batch_size), "--device", "cpu"]
        nhl = [sys.executable, "-m", "nhlcli"]
        commands = {
            "eval": [*nhl, "eval", str(model), "--data", str(root), "--split", "val", "--json", *batch],
            "predict": [*nhl, "predict", str(model), str(root / "val"), "-o", f"{tmp}/preds.csv", *batch],
        }
        os.environ.update(env_threads)
        runs = []
        for repeat in range(args.repeats):
            order = list(commands) if repeat % 2 == 0 else list(reversed(commands))
            seconds = {name: timed(commands[name]) for name in order}
            rows = len(Path(f"{tmp}/preds.csv").read_text(encoding="utf-8").splitlines()) - 1
            assert rows == args.images, f"preds.csv has {rows} rows for {args.images} images"
            rate = {name: args.images / s for name, s in seconds.items()}
            runs.append(
                {
                    "model": "predict-vs-eval",
                    "seed": repeat,
                    "first": order[0],
                    "eval_s": seconds["eval"],
                    "predict_s": seconds["predict"],
                    "eval_images_per_s": rate["eval"],
                    "predict_images_per_s": rate["predict"],
                    "ratio": rate["predict"] / rate["eval"],
                }
            )
            print(
                f"repeat {repeat}: eval {rate['eval']:.1f} img/s, predict -o csv "
                f"{rate['predict']:.1f} img/s, predict/eval {runs[-1]['ratio']:.3f}"
            )
    ratios = [r["ratio"] for r in runs]
    print(
        f"predict/eval images/s: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {args.repeats} pairs; "
        f"{args.images} images, batch {args.batch_size}, {args.threads} threads"
    )
    if args.results:
        write_results(
            args.results,
            title="nhl predict -o preds.csv against nhl eval on one image folder",
            command=invoked_command(),
            setup={
                "images": args.images,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "model": f"{DEFAULT_VARIANT}, resnet18, 28 px, 1 channel, fashion-mnist-wordnet-l2 tree",
                "data": "Fashion-MNIST test images as PNG files in class folders",
                "table": {
                    "columns": [
                        ["pair", "seed", "{}"],
                        ["ran first", "first", "{}"],
                        ["nhl eval images/s", "eval_images_per_s", "{:.1f}"],
                        ["nhl predict -o preds.csv images/s", "predict_images_per_s", "{:.1f}"],
                        ["predict / eval", "ratio", "**{:.3f}**"],
                    ]
                },
            },
            runs=runs,
            machine_facts=machine(),
            notes="whole commands timed (start-up and model load included); eval and predict alternate",
        )


if __name__ == "__main__":
    main()
