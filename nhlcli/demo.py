"""The main job end to end on a built-in data set (``nhl demo``): Fashion-MNIST by default, or emoji.

A tree (Fashion-MNIST's from WordNet, the shipped tree when WordNet is not installed; for emoji
Unicode's own tree over its "Animals & Nature" group), a short training of the default
configuration, evaluation, an expert (footwear: sandal, sneaker, ankle boot; or the sea
animals subgroup) cut out of the trained model, its cost report, and a closing comparison of
full model against expert.
Every step is the library call the matching ``nhl`` command makes, so the demo doubles as a
script to copy from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nhlcli.errors import NhlError
from nhlcli.model import DEFAULT_VARIANT
from nhlcli.progress import TrainingProgress

# The default Fashion-MNIST configuration (the README's and the benchmark's: 10 epochs). The
# demo trains until its training budget is spent, at most the task's ``max_epochs``: the
# training loop's learning-rate schedule follows the fraction of the budget spent (or of the
# steps, whichever is further along), so a machine that slows down midway, under another
# process's load, still stops at the budget with the schedule annealed, and the whole demo stays
# within 10 minutes.
DEFAULT_EPOCHS = 10
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
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class DemoTask:
    """One data set's demo: what it trains on, which expert it cuts, which test images it keeps.

    ``train_classes`` cuts the data's tree to a part that trains well within the budget (the
    emoji demo trains on one Unicode group); ``sample_images`` maps a PNG file name to the class
    whose first test image it holds.
    """

    data: str
    title: str
    train_classes: tuple[str, ...] | None
    expert_name: str
    expert_classes: tuple[str, ...]
    model_file: str
    expert_file: str
    in_chans: int
    max_epochs: int
    workdir: str
    sample_images: dict[str, str]

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the demo writes into its work directory (an earlier run's are refused)."""
        return (TREE_FILE, self.model_file, f"{self.model_file}.ckpt", self.expert_file, REPORT_FILE,
                *self.sample_images)  # fmt: skip


DEMOS: dict[str, DemoTask] = {
    "fashion-mnist": DemoTask(
        data="fashion-mnist",
        title="Fashion-MNIST",
        train_classes=None,
        expert_name="footwear",
        expert_classes=FOOTWEAR,
        model_file="fashion-nhl.safetensors",
        expert_file="footwear-expert.safetensors",
        in_chans=1,
        max_epochs=8,
        workdir=DEFAULT_WORKDIR,
        # the first test image of each class, by file name
        sample_images={
            "sandal.png": "sandal",
            "sneaker.png": "sneaker",
            "ankle-boot.png": "ankle-boot",
            "shirt.png": "shirt",
        },
    ),
    # Unicode's "Animals & Nature" group (152 emoji, 3 levels): its 2,432 training images an epoch
    # train at about 270 images/s here, so the budget holds tens of epochs; all 1,861 classes
    # train with ``nhl train --data emoji`` (a full NHL trains at about 5 images/s there).
    "emoji": DemoTask(
        data="emoji",
        title="Emoji, Animals & Nature",
        train_classes=("Animals & Nature",),
        expert_name="sea animals",
        expert_classes=("animal-marine",),
        model_file="emoji-nhl.safetensors",
        expert_file="sea-animals-expert.safetensors",
        in_chans=3,
        max_epochs=30,
        workdir="nhl-demo-emoji",
        sample_images={
            "shark.png": "shark",
            "octopus.png": "octopus",
            "dolphin.png": "dolphin",
            "cat-face.png": "cat face",
        },
    ),
}
DEMO_DATA = tuple(DEMOS)


def demo_task(data: str) -> DemoTask:
    """The demo for ``data``, or a one-line error naming the data sets it knows."""
    if data not in DEMOS:
        raise NhlError(f"has no demo for {data!r}; choose one of {', '.join(DEMO_DATA)}", "data")
    return DEMOS[data]


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
    time_budget: dict[str, Any] | None = None  # the training loop's record of a budgeted run
    train_seconds: float = 0.0
    full: dict[str, Any] = field(default_factory=dict)
    expert: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    images: list[dict[str, Any]] = field(default_factory=list)
    data: str = "fashion-mnist"
    threads: dict[str, int] = field(default_factory=dict)  # torch threads per stage, fitted to the load

    @property
    def task(self) -> DemoTask:
        return DEMOS[self.data]

    def summary(self) -> dict[str, Any]:
        """What ``report.json`` holds and ``nhl demo --json`` prints."""
        return {
            "data": self.data,
            "workdir": str(self.workdir),
            "report": str(self.workdir / REPORT_FILE),
            "tree": str(self.workdir / TREE_FILE),
            "images": self.images,
            "tree_source": self.tree_source,
            "epochs": self.epochs,
            "epochs_how": self.epochs_how,
            "train_seconds": round(self.train_seconds, 1),
            "time_budget": self.time_budget,
            "full": self.full,
            "expert": self.expert,
            "seconds": round(self.seconds, 1),
            "threads": self.threads,
        }


def demo_tree(data: str = "fashion-mnist") -> tuple[Any, str]:
    """The demo's tree and where it came from.

    Fashion-MNIST's is built from WordNet (the shipped one when WordNet is missing); the emoji
    demo's is Unicode's group -> subgroup -> emoji tree cut to the task's training classes.
    """
    from nhlcli.taxonomy import build_tree, resolve_tree, shipped_tree
    from nhlcli.taxonomy.classes import FASHION_MNIST

    task = demo_task(data)
    if data == "emoji":
        full = resolve_tree("emoji-unicode-l3")
        tree = full.select(task.train_classes or ()).subtree(full)
        return tree, f"Unicode's emoji groups, {', '.join(task.train_classes or ())} (emoji-unicode-l3)"
    try:
        return build_tree("wordnet", FASHION_MNIST, levels=2, name="fashion-mnist-wordnet-l2"), "wordnet"
    except NhlError:
        return shipped_tree(SHIPPED_TREE), f"shipped ({SHIPPED_TREE}; WordNet is not installed)"


def write_sample_images(workdir: Path, data: str = "fashion-mnist") -> list[dict[str, Any]]:
    """Save the first test image of a few classes as PNG files beside the model.

    A newcomer has no image file of the data to hand to ``nhl predict``; these are the exact test
    images (28x28 grey for Fashion-MNIST, 32x32 colour for emoji; the model's own transform
    resizes them).
    """

    from nhlcli.atomic import atomic_write
    from nhlcli.data import open_dataset

    task = demo_task(data)
    dataset = open_dataset(data, "val")
    labels = np.asarray(dataset.targets)
    written = []
    for file_name, class_name in task.sample_images.items():
        label = next(
            k for k, entry in enumerate(dataset.classes) if class_name in (entry.id, entry.name.lower())
        )
        found = (labels == label).nonzero()[0]
        if not len(found):
            continue  # a test set without this class (only small test data)
        index = int(found[0])
        picture = dataset.load_image(index)
        atomic_write(workdir / file_name, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        written.append({"file": str(workdir / file_name), "class": class_name, "test_index": index})
    return written


def fit_threads_to_load(threads: int, say: Callable[[str], None]) -> int:
    """Set torch's threads to ``threads``, or fewer while other processes keep cores busy, and
    say so: a demo sharing 2 cores with another 2-thread torch process ran its evaluation 18x
    slower than alone, where one thread would run it at about half speed."""
    import os

    import torch

    from nhlcli.devices import busy_cores_elsewhere, threads_beside_load

    busy = busy_cores_elsewhere()
    fitted = threads_beside_load(threads, busy)
    if fitted < threads:
        say(
            f"   other processes keep {busy:.1f} of {os.cpu_count()} CPU cores busy: running on "
            f"{fitted} of {threads} threads"
        )
    torch.set_num_threads(fitted)
    return fitted


def _duration(seconds: float) -> str:
    """``420`` -> "7 minutes", ``30`` -> "30 s": a budget as the demo's messages say it."""
    return f"{seconds / 60:g} minutes" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def check_workdir(workdir: str | Path | None, overwrite: bool = False, data: str = "fashion-mnist") -> Path:
    """Refuse a work directory that holds an earlier demo's files, unless ``overwrite``.

    ``None`` is the task's default, in the current directory."""
    from nhlcli.paths import check_output_dir

    task = demo_task(data)
    workdir = check_output_dir(task.workdir if workdir is None else workdir, label="`workdir`")
    found = [name for name in task.files if (workdir / name).exists()]
    if found and not overwrite:
        raise NhlError(
            f"{workdir} already holds an earlier demo's files ({', '.join(found)}); choose another `workdir` "
            "or pass `overwrite` to replace them"
        )
    return workdir


def run_demo(
    workdir: str | Path | None = None,
    epochs: int | None = None,
    progress: TrainingProgress | None = None,
    say: Callable[[str], None] = print,
    batch_size: int = 16,
    overwrite: bool = False,
    data: str = "fashion-mnist",
    max_steps_per_epoch: int | None = None,
    seed: int = 0,
    train_budget_s: float = TRAIN_BUDGET_S,
) -> DemoResult:
    """Run every step, writing tree, model, expert, test images and ``report.json`` into ``workdir``.

    ``data`` picks the demo (:data:`DEMOS`: ``fashion-mnist`` or ``emoji``). ``workdir``
    (default ``nhl-demo`` or ``nhl-demo-emoji`` in the current directory) is kept, so that the
    docs' next commands can use its files; earlier demo files there are refused unless
    ``overwrite``. ``epochs=None`` trains until ``train_budget_s`` seconds are spent (at most the
    task's ``max_epochs``), the learning rate annealed by the fraction of the budget spent, so the
    budget holds when the machine's load changes during the run; ``epochs`` trains exactly that
    many. ``seed`` seeds the initial weights, data order and augmentation (the same seed and
    threads give the same model on CPU). ``max_steps_per_epoch`` shortens epochs for quick checks.
    ``report.json`` holds :meth:`DemoResult.summary`.
    """
    import shutil

    import torch

    from nhlcli.atomic import atomic_write_json
    from nhlcli.data import default_workers
    from nhlcli.evaluation import evaluate_file
    from nhlcli.experts import compare, cutout_with_cost, save_expert
    from nhlcli.model.nhl import with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.text import counted
    from nhlcli.training.loop import TrainConfig, check_seed, seed_everything, train

    task = demo_task(data)
    if epochs is not None and epochs < 1:
        raise NhlError(f"must be at least 1, got {epochs}", "epochs")
    check_seed(seed)
    if not (isinstance(train_budget_s, (int, float)) and 0 < train_budget_s < float("inf")):
        raise NhlError(f"must be a positive number of seconds, got {train_budget_s}", "train_budget_s")
    started = time.perf_counter()
    workdir = check_workdir(workdir, overwrite, data)
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / f"{task.model_file}.ckpt", ignore_errors=True)  # refused above unless overwrite
    tree, source = demo_tree(data)
    tree_file = tree.save(workdir / TREE_FILE)
    result = DemoResult(workdir, source, epochs or 0, data=data)
    say(
        f"1/5 tree: {counted(len(tree.classes), 'class')}, {counted(tree.levels, 'level')}, "
        f"from {source} -> {tree_file}"
    )

    threads = torch.get_num_threads()
    result.threads["training"] = fit_threads_to_load(threads, say)
    seed_everything(seed)  # before the model is built: its initial weights are the first draw
    model = create_model(tree, DEFAULT_VARIANT, TrunkConfig(RECIPE["backbone"], None, task.in_chans))
    model.input_config = with_input_size(model.input_config, RECIPE["input_size"])
    config = TrainConfig(
        epochs=epochs or task.max_epochs,
        batch_size=RECIPE["batch_size"],
        lr=RECIPE["lr"],
        warmup_epochs=RECIPE["warmup_epochs"],
        augment=None,
        crop_scale=(0.8, 1.0),
        label_smoothing=RECIPE["label_smoothing"],
        workers=default_workers(data),
        seed=seed,
        time_budget_s=None if epochs else train_budget_s,
        classes=task.train_classes or (),
        max_steps_per_epoch=max_steps_per_epoch,
    )
    how = "" if epochs else (
        f" (until {_duration(train_budget_s)} are spent, at most {task.max_epochs} epochs, the learning rate "
        "annealed by the time spent; `epochs` to choose)"
    )  # fmt: skip
    say(f"2/5 training {RECIPE['backbone']} NHL on {task.title}{how}")
    full_file = workdir / task.model_file
    t0 = time.perf_counter()
    run = train(model, data, full_file, config, progress=progress, overwrite=True)
    if run.interrupted:
        raise KeyboardInterrupt
    result.train_seconds = time.perf_counter() - t0
    result.epochs = run.epochs_done
    result.time_budget = run.time_budget
    if run.time_budget:
        steps = counted(run.time_budget["steps"], "step")
        result.epochs_how = (
            f"the {_duration(train_budget_s)} training budget ran out in epoch {run.epochs_done} after "
            f"{steps}, the learning rate annealed to its minimum"
            if run.time_budget["ended_by_budget"]
            else f"the demo's cap of {task.max_epochs} ({steps}), within the {_duration(train_budget_s)} "
            "training budget"
        )
        say(f"   trained {counted(run.epochs_done, 'epoch')}: {result.epochs_how}")

    say("3/5 evaluating on the test split")
    result.threads["evaluation"] = fit_threads_to_load(threads, say)
    workers = config.workers
    full_eval = evaluate_file(full_file, data, workers=workers)
    expert_eval_full = evaluate_file(full_file, data, classes=task.expert_classes, workers=workers)

    say(f"4/5 cutting the {task.expert_name} expert ({', '.join(task.expert_classes)})")
    cut, full_cost, expert_cost = cutout_with_cost(full_file, list(task.expert_classes), (1, batch_size))
    expert_file = workdir / task.expert_file
    save_expert(cut, expert_file, cost=expert_cost)

    say(f"5/5 evaluating the expert on the {task.expert_name} test images")
    expert_eval = evaluate_file(expert_file, data, workers=workers)
    result.images = write_sample_images(workdir, data)
    shown = ", ".join(Path(image["file"]).name for image in result.images)
    say(f"   test images to try nhl predict on: {shown} (in {workdir})")
    result.full = {
        "file": str(full_file),
        "top1": full_eval["top1"],
        "images": full_eval["images"],
        "top1_on_expert_classes": expert_eval_full["top1"],
        "cost": full_cost,
    }
    result.expert = {
        "file": str(expert_file),
        "name": task.expert_name,
        "selection": list(task.expert_classes),
        "classes": [cut.model.tree.node(c).name for c in cut.model.tree.classes],
        "top1": expert_eval["top1"],
        "images": expert_eval["images"],
        "cut_seconds": round(cut.seconds, 3),
        "cost": expert_cost,
        "reduction_percent": compare(full_cost, expert_cost),
    }
    result.seconds = time.perf_counter() - started
    atomic_write_json(workdir / REPORT_FILE, result.summary())
    return result
