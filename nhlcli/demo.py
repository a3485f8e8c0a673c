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

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nhlcli.data.registry import DATASETS, DEFAULT_DATASET, FASHION_MNIST_DEMO, DemoTask, dataset_spec
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
DEFAULT_DEMO = DEFAULT_DATASET
TREE_FILE = "tree.json"
REPORT_FILE = "report.json"


def demos() -> dict[str, DemoTask]:
    """The demo of every registered data set that has one (its spec's ``demo``), by data set."""
    return {name: spec.demo for name, spec in DATASETS.items() if spec.demo is not None}


DEMOS: dict[str, DemoTask] = demos()  # the built-in data sets' (a data set registered later is found too)
DEMO_DATA = tuple(DEMOS)
FOOTWEAR = FASHION_MNIST_DEMO.expert_classes
DEFAULT_WORKDIR = DEMOS[DEFAULT_DEMO].workdir


def demo_files(task: DemoTask) -> tuple[str, ...]:
    """Every file the demo writes into its work directory (an earlier run's are refused)."""
    return (TREE_FILE, task.model_file, f"{task.model_file}.ckpt", task.expert_file, REPORT_FILE,
            *task.sample_images)  # fmt: skip


def demo_task(data: str) -> DemoTask:
    """The demo for ``data`` (its data-set spec's), or a one-line error naming the data sets it knows."""
    task = demos().get(data)
    if task is None:
        raise NhlError(f"has no demo for {data!r}; choose one of {', '.join(demos())}", "data")
    return task


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
    data: str = DEFAULT_DATASET
    threads: dict[str, int] = field(default_factory=dict)  # torch threads per stage, fitted to the load

    @property
    def task(self) -> DemoTask:
        return demo_task(self.data)

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


def demo_tree(data: str = DEFAULT_DATASET) -> tuple[Any, str]:
    """The demo's tree and where it came from: what the data set's demo builds (Fashion-MNIST's
    from WordNet, the shipped one when WordNet is missing), else the data set's default tree cut to
    the demo's training classes (emoji: Unicode's group -> subgroup -> emoji tree, one group)."""
    from nhlcli.taxonomy import resolve_tree

    task = demo_task(data)
    if task.tree is not None:
        return task.tree()
    default = dataset_spec(data).default_tree
    if default is None:
        raise NhlError(f"{data!r} has no default tree for its demo to train on", "data")
    tree = resolve_tree(default)
    if task.train_classes:
        tree = tree.select(task.train_classes).subtree(tree)
    about = ", ".join(part for part in (task.tree_about, *(task.train_classes or ())) if part)
    return tree, f"{about} ({default})" if about else default


def write_sample_images(workdir: Path, data: str = DEFAULT_DATASET) -> list[dict[str, Any]]:
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


def check_workdir(workdir: str | Path | None, overwrite: bool = False, data: str = DEFAULT_DATASET) -> Path:
    """Refuse a work directory that holds an earlier demo's files, unless ``overwrite``.

    ``None`` is the task's default, in the current directory."""
    from nhlcli.paths import check_output_dir

    task = demo_task(data)
    workdir = check_output_dir(task.workdir if workdir is None else workdir, label="`workdir`")
    found = [name for name in demo_files(task) if (workdir / name).exists()]
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
    data: str = DEFAULT_DATASET,
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
    import torch

    from nhlcli.atomic import atomic_write_json
    from nhlcli.text import counted

    task = demo_task(data)
    _check_demo_options(epochs, seed, train_budget_s)
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
    budget = None if epochs else train_budget_s
    full_file = _train_demo_model(result, tree, epochs, seed, budget, max_steps_per_epoch, progress, say)
    say("3/5 evaluating on the test split")
    result.threads["evaluation"] = fit_threads_to_load(threads, say)
    _evaluate_and_cut(result, full_file, batch_size, say)
    result.seconds = time.perf_counter() - started
    atomic_write_json(workdir / REPORT_FILE, result.summary())
    return result


def _check_demo_options(epochs: int | None, seed: int, train_budget_s: float) -> None:
    from nhlcli.training.loop import check_seed

    if epochs is not None and epochs < 1:
        raise NhlError(f"must be at least 1, got {epochs}", "epochs")
    check_seed(seed)
    if not (isinstance(train_budget_s, (int, float)) and 0 < train_budget_s < float("inf")):
        raise NhlError(f"must be a positive number of seconds, got {train_budget_s}", "train_budget_s")


def _train_demo_model(
    result: DemoResult,
    tree: Any,
    epochs: int | None,
    seed: int,
    budget_s: float | None,
    max_steps_per_epoch: int | None,
    progress: TrainingProgress | None,
    say: Callable[[str], None],
) -> Path:
    """Step 2: the default NHL on the demo's data, for ``epochs`` or until ``budget_s`` is spent
    (at most the task's ``max_epochs``); records how it ended in ``result``."""
    from nhlcli.data import default_workers
    from nhlcli.model.nhl import with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.text import counted
    from nhlcli.training.loop import TrainConfig, seed_everything, train

    data, task = result.data, result.task
    seed_everything(seed)  # before the model is built: its initial weights are the first draw
    trunk = TrunkConfig(RECIPE["backbone"], None, dataset_spec(data).in_chans)
    model = create_model(tree, DEFAULT_VARIANT, trunk)
    model.input_config = with_input_size(model.input_config, RECIPE["input_size"])
    config = TrainConfig(
        epochs=epochs or task.max_epochs, batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
        warmup_epochs=RECIPE["warmup_epochs"], augment=None, crop_scale=(0.8, 1.0),
        label_smoothing=RECIPE["label_smoothing"], workers=default_workers(data), seed=seed,
        time_budget_s=budget_s, classes=task.train_classes or (), max_steps_per_epoch=max_steps_per_epoch,
    )  # fmt: skip
    how = "" if budget_s is None else (
        f" (until {_duration(budget_s)} are spent, at most {task.max_epochs} epochs, the learning rate "
        "annealed by the time spent; `epochs` to choose)"
    )  # fmt: skip
    say(f"2/5 training {RECIPE['backbone']} NHL on {task.title}{how}")
    full_file = result.workdir / task.model_file
    t0 = time.perf_counter()
    run = train(model, data, full_file, config, progress=progress, overwrite=True)
    if run.interrupted:
        raise KeyboardInterrupt
    result.train_seconds = time.perf_counter() - t0
    result.epochs, result.time_budget = run.epochs_done, run.time_budget
    if run.time_budget and budget_s is not None:
        steps = counted(run.time_budget["steps"], "step")
        result.epochs_how = (
            f"the {_duration(budget_s)} training budget ran out in epoch {run.epochs_done} after "
            f"{steps}, the learning rate annealed to its minimum"
            if run.time_budget["ended_by_budget"]
            else f"the demo's cap of {task.max_epochs} ({steps}), within the {_duration(budget_s)} "
            "training budget"
        )
        say(f"   trained {counted(run.epochs_done, 'epoch')}: {result.epochs_how}")
    return full_file


def _evaluate_and_cut(
    result: DemoResult, full_file: Path, batch_size: int, say: Callable[[str], None]
) -> None:
    """Steps 3 to 5: the full model on the test split, the expert cut out of it, the expert on its
    classes' test images, and the sample images; what they measured goes into ``result``."""
    from nhlcli.data import default_workers
    from nhlcli.evaluation import evaluate_file
    from nhlcli.experts import compare, cutout_with_cost, save_expert

    data, task, workdir = result.data, result.task, result.workdir
    workers = default_workers(data)
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
        "file": str(full_file), "top1": full_eval["top1"], "images": full_eval["images"],
        "top1_on_expert_classes": expert_eval_full["top1"], "cost": full_cost,
    }  # fmt: skip
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
