"""The main job end to end on the built-in default, Fashion-MNIST (``nhl demo``).

Tree from WordNet (the shipped tree when WordNet is not installed), a short training of the
default configuration, evaluation, a footwear expert (sandal, sneaker, ankle boot) cut out of
the trained model, its cost report, and a closing comparison of full model against expert.
Every step is the library call the matching ``nhl`` command makes, so the demo doubles as a
script to copy from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhlcli.errors import NhlError
from nhlcli.progress import TrainingProgress

# The default Fashion-MNIST configuration (the README's and the benchmark's: 10 epochs). The
# demo trains as many epochs as fit its training budget on the machine it runs on, at most
# DEMO_EPOCHS: the training loop times its own first steps (data loading and validation included)
# and fixes the epoch count during warmup, so that the whole demo stays within 10 minutes.
DEFAULT_EPOCHS = 10
DEMO_EPOCHS = 8
DEMO_LIMIT_S = 600.0
TRAIN_BUDGET_S = 420.0  # the rest (tree, evaluation, cutout, cost with latency) takes about a minute
RECIPE: dict[str, Any] = {
    "backbone": "resnet18",
    "input_size": 32,
    "batch_size": 128,
    "lr": 3e-3,
    "warmup_epochs": 0.3,
    "augment": "none",
    "crop_scale": "0.8,1",
    "label_smoothing": 0.1,
}
FOOTWEAR = ("sandal", "sneaker", "ankle boot")
SHIPPED_TREE = "fashion-mnist-wordnet-l2"
DEFAULT_WORKDIR = "nhl-demo"  # in the current directory, so that the docs' next commands find the files
TREE_FILE = "tree.json"
MODEL_FILE = "fashion-nhl.safetensors"
EXPERT_FILE = "footwear-expert.safetensors"
REPORT_FILE = "report.json"
# Test-set images to try ``nhl predict`` on (the first test image of each class), by file name.
SAMPLE_IMAGES = {
    "sandal.png": "sandal",
    "sneaker.png": "sneaker",
    "ankle-boot.png": "ankle-boot",
    "shirt.png": "shirt",
}
DEMO_FILES = (TREE_FILE, MODEL_FILE, f"{MODEL_FILE}.ckpt", EXPERT_FILE, REPORT_FILE, *SAMPLE_IMAGES)


def recipe_args(epochs: int = DEFAULT_EPOCHS) -> list[str]:
    """The recipe as ``nhl train`` options."""
    args = []
    for key, value in {**RECIPE, "epochs": epochs}.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


@dataclass
class DemoResult:
    """What the demo made and measured (``summary()`` is its ``--json`` output)."""

    workdir: Path
    tree_source: str
    epochs: int
    epochs_how: str = "given"
    train_seconds: float = 0.0
    full: dict[str, Any] = field(default_factory=dict)
    expert: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    images: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What ``report.json`` holds and ``nhl demo --json`` prints."""
        return {
            "workdir": str(self.workdir),
            "report": str(self.workdir / REPORT_FILE),
            "tree": str(self.workdir / TREE_FILE),
            "images": self.images,
            "tree_source": self.tree_source,
            "epochs": self.epochs,
            "epochs_how": self.epochs_how,
            "train_seconds": round(self.train_seconds, 1),
            "full": self.full,
            "expert": self.expert,
            "seconds": round(self.seconds, 1),
        }


def demo_tree() -> tuple[Any, str]:
    """Fashion-MNIST's tree built from WordNet, or the shipped one when WordNet is missing."""
    from nhlcli.taxonomy import build_tree, shipped_tree
    from nhlcli.taxonomy.classes import FASHION_MNIST

    try:
        return build_tree("wordnet", FASHION_MNIST, levels=2, name="fashion-mnist-wordnet-l2"), "wordnet"
    except NhlError:
        return shipped_tree(SHIPPED_TREE), f"shipped ({SHIPPED_TREE}; WordNet is not installed)"


def write_sample_images(workdir: Path) -> list[dict[str, Any]]:
    """Save the first Fashion-MNIST test image of a few classes as PNG files beside the model.

    A newcomer has no Fashion-MNIST image file to hand to ``nhl predict``; these are the exact
    28x28 grey test images (the model's own transform resizes them).
    """
    from PIL import Image

    from nhlcli.atomic import atomic_write
    from nhlcli.data.fashion_mnist import load_split
    from nhlcli.taxonomy.classes import FASHION_MNIST

    images, labels, _ = load_split("val")
    index_of = {entry.id: i for i, entry in enumerate(FASHION_MNIST)}
    written = []
    for file_name, class_id in SAMPLE_IMAGES.items():
        found = (labels == index_of[class_id]).nonzero()[0]
        if not len(found):
            continue  # a test set without this class (only small test data)
        index = int(found[0])
        picture = Image.fromarray(images[index])  # uint8 28x28: a grey "L" image
        atomic_write(workdir / file_name, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        written.append({"file": str(workdir / file_name), "class": class_id, "test_index": index})
    return written


def check_workdir(workdir: str | Path, overwrite: bool = False) -> Path:
    """Refuse a work directory that holds an earlier demo's files, unless ``overwrite``."""
    from nhlcli.paths import check_output_dir

    workdir = check_output_dir(workdir, label="`workdir`")
    found = [name for name in DEMO_FILES if (workdir / name).exists()]
    if found and not overwrite:
        raise NhlError(
            f"{workdir} already holds an earlier demo's files ({', '.join(found)}); choose another `workdir` "
            "or pass `overwrite` to replace them"
        )
    return workdir


def run_demo(
    workdir: str | Path = DEFAULT_WORKDIR,
    epochs: int | None = None,
    progress: TrainingProgress | None = None,
    say: Callable[[str], None] = print,
    batch_size: int = 16,
    overwrite: bool = False,
) -> DemoResult:
    """Run every step, writing tree, model, expert, test images and ``report.json`` into ``workdir``.

    ``workdir`` (default ``nhl-demo`` in the current directory) is kept, so that the docs'
    next commands can use its files; earlier demo files there are refused unless ``overwrite``.
    ``epochs=None`` trains as many epochs as fit the training budget on this machine (at most
    ``DEMO_EPOCHS``), timed on the real training loop's first steps. ``report.json`` holds
    :meth:`DemoResult.summary`.
    """
    import shutil

    from nhlcli.atomic import atomic_write_json
    from nhlcli.data import default_workers
    from nhlcli.evaluation import evaluate_file
    from nhlcli.experts import compare, cutout_with_cost, save_expert
    from nhlcli.model.nhl import with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.text import counted
    from nhlcli.training.loop import TrainConfig, train

    if epochs is not None and epochs < 1:
        raise NhlError(f"must be at least 1, got {epochs}", "epochs")
    started = time.perf_counter()
    workdir = check_workdir(workdir, overwrite)
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / f"{MODEL_FILE}.ckpt", ignore_errors=True)  # refused above unless overwrite
    tree, source = demo_tree()
    tree_file = tree.save(workdir / TREE_FILE)
    result = DemoResult(workdir, source, epochs or 0)
    say(
        f"1/5 tree: {counted(len(tree.classes), 'class')}, {counted(tree.levels, 'level')}, "
        f"from {source} -> {tree_file}"
    )

    model = create_model(tree, "nhl", TrunkConfig(RECIPE["backbone"], None, 1))
    model.input_config = with_input_size(model.input_config, RECIPE["input_size"])
    config = TrainConfig(
        epochs=epochs or DEMO_EPOCHS,
        batch_size=RECIPE["batch_size"],
        lr=RECIPE["lr"],
        warmup_epochs=RECIPE["warmup_epochs"],
        augment=None,
        crop_scale=(0.8, 1.0),
        label_smoothing=RECIPE["label_smoothing"],
        workers=default_workers("fashion-mnist"),
        time_budget_s=None if epochs else TRAIN_BUDGET_S,
    )
    how = "" if epochs else (
        f" (as many as fit {TRAIN_BUDGET_S / 60:.0f} minutes here, at most {DEMO_EPOCHS}, timed on the first "
        "steps; `epochs` to choose)"
    )  # fmt: skip
    say(f"2/5 training {RECIPE['backbone']} NHL on Fashion-MNIST{how}")
    full_file = workdir / MODEL_FILE
    t0 = time.perf_counter()
    run = train(model, "fashion-mnist", full_file, config, progress=progress, overwrite=True)
    if run.interrupted:
        raise KeyboardInterrupt
    result.train_seconds = time.perf_counter() - t0
    result.epochs = run.epochs_done
    if run.time_budget:
        epoch_s = run.time_budget["epoch_seconds"]
        result.epochs_how = f"fit the {TRAIN_BUDGET_S:.0f} s training budget at {epoch_s:.0f} s an epoch"
        say(f"   trained {counted(run.epochs_done, 'epoch')}: {result.epochs_how}")

    say("3/5 evaluating on the 10,000 test images")
    workers = config.workers
    full_eval = evaluate_file(full_file, "fashion-mnist", workers=workers)
    footwear_eval = evaluate_file(full_file, "fashion-mnist", classes=FOOTWEAR, workers=workers)

    say(f"4/5 cutting the footwear expert ({', '.join(FOOTWEAR)})")
    cut, full_cost, expert_cost = cutout_with_cost(full_file, list(FOOTWEAR), (1, batch_size))
    expert_file = workdir / EXPERT_FILE
    save_expert(cut, expert_file, cost=expert_cost)

    say("5/5 evaluating the expert on the footwear test images")
    expert_eval = evaluate_file(expert_file, "fashion-mnist", workers=workers)
    result.images = write_sample_images(workdir)
    shown = ", ".join(Path(image["file"]).name for image in result.images)
    say(f"   test images to try nhl predict on: {shown} (in {workdir})")
    result.full = {
        "file": str(full_file),
        "top1": full_eval["top1"],
        "top1_on_footwear": footwear_eval["top1"],
        "cost": full_cost,
    }
    result.expert = {
        "file": str(expert_file),
        "classes": list(FOOTWEAR),
        "top1": expert_eval["top1"],
        "images": expert_eval["images"],
        "cut_seconds": round(cut.seconds, 3),
        "cost": expert_cost,
        "reduction_percent": compare(full_cost, expert_cost),
    }
    result.seconds = time.perf_counter() - started
    atomic_write_json(workdir / REPORT_FILE, result.summary())
    return result
