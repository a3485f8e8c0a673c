"""The emoji data set's drawing speed: images/s made by one process, and through the real loader.

Training reads new images every epoch, drawn in the loader workers, so drawing must stay well
above what training consumes; ``benchmarks/bench_training.py --tree emoji-unicode-l3 --in-chans 3``
gives the training side at the same size. Prints the machine, threads and each figure.

    python benchmarks/bench_emoji.py [--size 32] [--images 3000] [--json] [--results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from nhlcli.data import create_loaders
from nhlcli.data.emoji import EmojiDataset, glyph_sprites
from nhlcli.taxonomy import shipped_tree


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown"


# each figure's row in docs/benchmarks.md: the result key, its label and its unit
ROWS = {
    "sprites": ("sprites_seconds", "rasterising every glyph once (per process)", "s"),
    "draw-train": ("draw_train_images_per_s", "drawing train images, one process", "images/s"),
    "draw-test": ("draw_val_images_per_s", "drawing test images, one process", "images/s"),
    "loader-0-workers": ("loader_0_workers_images_per_s", "train loader, 0 workers", "images/s"),
    "loader-2-workers": ("loader_2_workers_images_per_s", "train loader, 2 workers", "images/s"),
    "train-images": ("train_images_per_epoch", "images per training epoch", "images ({:,} a class)"),
    "test-images": ("test_images", "images in the test split", "images ({:,} a class)"),
}


def store(result: dict, size: int, images: int, classes: int) -> None:
    """The figures as ``benchmarks/results/emoji-data.json``, the table report.py puts in the docs."""
    from results_store import invoked_command, write_results

    write_results(
        "emoji-data",
        title=f"The emoji data set: drawing speed at {size} px, in one process and through the train loader",
        command=invoked_command(),
        setup={"size": size, "images": images, "batch": 64,
               "arms": {name: {"label": label} for name, (_, label, _) in ROWS.items()},
               "table": {"columns": [["what", "model", "{}"], ["figure", "figure", "{:,}"],
                                     ["unit", "unit", "{}"]]}},
        runs=[{"model": name, "figure": result[key], "unit": unit.format(result[key] // classes)}
              for name, (key, _, unit) in ROWS.items()],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", action="store_true", help="store the figures for report.py")
    args = parser.parse_args()
    torch.manual_seed(0)
    result: dict = {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}

    start = time.perf_counter()
    glyph_sprites(2 * args.size)
    result["sprites_seconds"] = round(time.perf_counter() - start, 2)  # once per process
    for split in ("train", "val"):
        dataset = EmojiDataset(split, size=args.size)
        start = time.perf_counter()
        for index in range(args.images):
            dataset.load_image(index * 7 % len(dataset))
        result[f"draw_{split}_images_per_s"] = round(args.images / (time.perf_counter() - start))
    result["train_images_per_epoch"], result["test_images"] = (
        len(EmojiDataset("train")),
        len(EmojiDataset("val")),
    )

    tree = shipped_tree("emoji-unicode-l3")
    for workers in (0, 2):
        train, _ = create_loaders(
            "emoji", tree, input_size=args.size, mean=(0.5,) * 3, std=(0.25,) * 3,
            batch_size=64, workers=workers, augment=None, scale=(0.8, 1.0),
        )  # fmt: skip
        batches = iter(train)
        next(batches)  # worker start-up and sprites left out
        start, seen = time.perf_counter(), 0
        while seen < args.images:
            seen += len(next(batches)[1])
        result[f"loader_{workers}_workers_images_per_s"] = round(seen / (time.perf_counter() - start))
        del batches, train
    if args.results:
        store(result, args.size, args.images, tree.num_classes)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
