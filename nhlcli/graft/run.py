"""``nhl graft``: grow a trained NHL by new classes, training only their branches.

1. Place the new classes in the model's tree (:mod:`nhlcli.graft.tree`).
2. Train the new branches (:class:`~nhlcli.graft.branches.GraftBranches`) on the new classes'
   images plus, each epoch, a fresh random sample of the old classes' images as negatives. The
   loss is the softmax over all classes, old logits included: they come from the frozen model and
   cannot move, so only the new logits learn where they must stay below the old ones. Since the
   old images are a sample, the old logits enter the loss shifted by the log of the sampled share
   (logit adjustment, Menon et al. 2021, "Long-tail learning via logit adjustment"), so the new
   classes are not over-predicted for having been over-represented. New classes start neutral
   (zero weights, the old leaves' mean bias). The recipe (weight decay, batch size, augmentation,
   label smoothing) is the one the model file records it was trained with, unless given; the
   learning rate and epochs are the graft's own (:data:`GRAFT_LR`, :data:`GRAFT_EPOCHS`).
3. Merge the new rows into the grown model (:func:`~nhlcli.graft.branches.merge`) and measure, on
   the hold-out the model was trained without (or the val split), the new classes' top-1 and how
   the old classes' answers moved: only towards new classes, since their logits are unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from nhlcli.data.datasets import TreeDataset, dataset_for_tree, trained_holdout
from nhlcli.data.loaders import build_transform, model_loader
from nhlcli.data.registry import dataset_spec
from nhlcli.devices import autocast_for, cpu_has_fast_bf16
from nhlcli.errors import NhlError
from nhlcli.graft.branches import GraftBranches, frozen_forward, merge
from nhlcli.graft.tree import GrownTree, Placement, grow_tree, place_by_reference, place_under
from nhlcli.model.contract import NhlModel
from nhlcli.model.files import read_model_file, save_model
from nhlcli.model.loading import model_from_contents
from nhlcli.model.nhl import NHLModel
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.labels import normalize_label
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted

__all__ = ["GraftRequest", "GraftResult", "graft_file", "graft_model", "grow_placements"]

# Recipe fields taken from the model file's ``training`` section when not given.
RECIPE_KEYS = ("weight_decay", "batch_size", "augment", "crop_scale", "label_smoothing")
# New branches on frozen features learn at a higher rate than a whole network does. Chosen on a
# hold-out of the emoji training images (62 classes grafted onto 1,799; docs/benchmarks.md): new-class
# top-1 4% at the training recipe's 3e-3, 26% at 1e-2, 43% at 3e-2 after 10 epochs, 47% after 15.
GRAFT_LR = 3e-2
GRAFT_EPOCHS = 15


@dataclass
class GraftRequest:
    """What to graft and how (``nhl graft`` options); ``None`` recipe fields: the model's own
    (``lr``: :data:`GRAFT_LR`)."""

    data: str | Path
    classes: Sequence[str]
    under: str | None = None  # a node of the model's tree
    group: str | None = None  # the new group's name, where ``under`` is above the leaf parents
    reference: Tree | str | Path | None = None  # a tree holding the new classes, or its file or name
    epochs: int = GRAFT_EPOCHS
    negatives: float = 1.0  # old-class images per epoch, as a multiple of the new classes' images
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    augment: str | None = None
    crop_scale: tuple[float, float] | None = None
    label_smoothing: float | None = None
    warmup_epochs: float = 1.0
    seed: int = 0
    workers: int = 2
    amp: bool = True
    holdout: float | None = None  # default: the one the model was trained with

    def check(self) -> None:
        """Refuse what makes no sense before anything is read."""
        if self.under is not None and self.reference is not None:
            raise NhlError("give `under` NODE or `tree` REFERENCE, not both: each places the classes")
        if self.group is not None and self.under is None:
            raise NhlError("names the new group made below `under`; give `under` too, or drop it", "group")
        if self.epochs < 1:
            raise NhlError(f"must be at least 1, got {self.epochs}", "epochs")
        if not (math.isfinite(self.negatives) and self.negatives > 0):
            raise NhlError(
                f"must be a positive multiple of the new classes' images, got {self.negatives}", "negatives"
            )
        for name in ("lr", "weight_decay", "label_smoothing"):
            value = getattr(self, name)
            if value is not None and not (
                math.isfinite(value) and value >= 0 and (name != "lr" or value > 0)
            ):
                raise NhlError(
                    f"must be a {'positive' if name == 'lr' else 'non-negative'} number, got {value}", name
                )
        if self.batch_size is not None and self.batch_size < 2:
            raise NhlError(
                f"must be at least 2 (the new branches' BatchNorm), got {self.batch_size}", "batch_size"
            )
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise NhlError(
                f"must lie between 0 and the epochs ({self.epochs}), got {self.warmup_epochs}",
                "warmup_epochs",
            )


@dataclass
class GraftResult:
    """The grown model and what the graft did and measured."""

    model: NHLModel
    grown: GrownTree
    record: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {**self.record, "history": self.history}


def graftable(model: NhlModel, source: str) -> NHLModel:
    """``model`` if new classes can be grafted onto it, else a one-line error saying why."""
    if model.graft_problem:
        raise NhlError(f"{source} {model.graft_problem}")
    return model  # type: ignore[return-value]


def _data_entries(data: str | Path) -> list[ClassEntry]:
    from nhlcli.data import open_dataset

    return list(open_dataset(data, "train").classes)


def _entries_named(entries: Sequence[ClassEntry], names: Sequence[str], data: str | Path) -> list[ClassEntry]:
    """The data classes ``names`` mean (by id, name or alias)."""
    lookup: dict[str, ClassEntry] = {}
    for entry in entries:
        for label in (entry.id, entry.name, *entry.aliases):
            lookup.setdefault(normalize_label(label), entry)
    chosen, unknown = [], []
    for name in names:
        entry = lookup.get(normalize_label(name))
        (unknown.append(name) if entry is None else chosen.append(entry))
    if unknown:
        sample = ", ".join(e.id for e in entries[:6])
        raise NhlError(
            f"{', '.join(map(repr, unknown[:5]))} not among the classes of {data} "
            f"({sample}, ...); name classes the data holds",
            "classes",
        )
    if len({e.id for e in chosen}) != len(chosen):
        raise NhlError("names a class twice; name each new class once", "classes")
    return chosen


def _already_in(tree: Tree, entries: Sequence[ClassEntry]) -> None:
    """Refuse data classes the model's tree already has (by id, WordNet id, name or alias)."""
    from nhlcli.taxonomy.match import match_classes

    for entry in entries:
        try:
            leaf = match_classes(tree, [entry], exact=False)[0]
        except NhlError:
            continue
        raise NhlError(
            f"{entry.id!r} is already a class of the model (as {leaf!r}); graft only classes "
            "the model does not have",
            "classes",
        )


def grow_placements(tree: Tree, request: GraftRequest) -> list[Placement]:
    """Where each new class goes: under a node, or by a reference tree (given, or the data set's
    shipped tree)."""
    if request.under is not None:
        entries = _entries_named(_data_entries(request.data), request.classes, request.data)
        _already_in(tree, entries)
        return place_under(tree, entries, request.under, request.group)
    from nhlcli.taxonomy import resolve_tree

    reference = request.reference
    if reference is None:
        reference = dataset_spec(request.data).default_tree
        if reference is None:
            raise NhlError(
                "say where the new classes go: `under` NODE (a node of the model's tree), or `tree` "
                "REFERENCE (a tree over all the classes, e.g. from 'nhl hierarchy build')"
            )
    if not isinstance(reference, Tree):
        reference = resolve_tree(reference)
    classes = reference.select(list(request.classes)).classes
    have = set(tree.graph.nodes)
    taken = [c for c in classes if c in have]
    if taken:
        raise NhlError(
            f"{', '.join(map(repr, taken[:5]))} already in the model; graft only classes the "
            "model does not have",
            "classes",
        )
    return place_by_reference(tree, reference, classes)


class NewAndOldSampler(Sampler[int]):
    """Each epoch: every new-class image and a fresh random sample of old-class images, shuffled."""

    def __init__(self, new: np.ndarray, old: np.ndarray, negatives: int, seed: int) -> None:
        self.new, self.old, self.negatives, self.seed, self.epoch = new, old, negatives, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # noqa: ANN204
        rng = np.random.default_rng([self.seed, self.epoch])
        old = rng.choice(self.old, size=min(self.negatives, len(self.old)), replace=False)
        return iter(rng.permutation(np.concatenate([self.new, old])).tolist())

    def __len__(self) -> int:
        return len(self.new) + min(self.negatives, len(self.old))


def _recipe(model: NhlModel, request: GraftRequest) -> dict[str, Any]:
    trained = (getattr(model, "metadata", {}) or {}).get("training") or {}
    defaults = {"weight_decay": 0.05, "batch_size": 64, "augment": None, "crop_scale": None,
                "label_smoothing": 0.0}  # fmt: skip
    recipe = {key: trained.get(key, defaults[key]) if getattr(request, key) is None else getattr(request, key)
              for key in RECIPE_KEYS}  # fmt: skip
    recipe["lr"] = GRAFT_LR if request.lr is None else request.lr
    if recipe["crop_scale"] is not None:
        recipe["crop_scale"] = tuple(recipe["crop_scale"])
    return recipe


def _check_classes_in_data(grown: Tree, old_count: int, data: str | Path) -> None:
    """Refuse data that lacks a new class (nothing to learn it from) or every old one (nothing to
    learn to stay below)."""
    from nhlcli.taxonomy.match import match_classes

    found = set()
    for entry in _data_entries(data):
        try:
            found.add(match_classes(grown, [entry], exact=False)[0])
        except NhlError:
            continue
    missing = [c for c in grown.classes[old_count:] if c not in found]
    if missing:
        what = "the new class" if len(missing) == 1 else f"{len(missing)} new classes"
        raise NhlError(f"{data} has no images of {what} "
                       f"{', '.join(map(repr, missing[:5]))}; give data that holds them")
    if not found & set(grown.classes[:old_count]):
        raise NhlError(f"{data} has none of the model's own classes, which the new ones must learn to stay "
                       "below; give the data the model was trained on with the new classes added")


def _training_data(
    model: NHLModel, grown: Tree, request: GraftRequest, recipe: dict[str, Any], holdout: float
) -> tuple[TreeDataset, np.ndarray, np.ndarray]:
    """The training split labelled by the grown tree, and which of its images are new and old."""
    inp = model.input_config
    transform = build_transform(
        inp.size[1],
        is_training=True,
        augment=recipe["augment"],
        scale=recipe["crop_scale"],
        mean=inp.mean,
        std=inp.std,
        in_chans=inp.size[0],
        interpolation=inp.interpolation,
        crop_pct=inp.crop_pct,
    )
    mode = "L" if inp.size[0] == 1 else "RGB"
    _check_classes_in_data(grown, model.tree.num_classes, request.data)
    dataset = dataset_for_tree(request.data, "train", grown, transform, subset=True, mode=mode,
                               image_size=inp.size[1], holdout=holdout)  # fmt: skip
    targets = np.asarray(dataset.targets)
    old_count = model.tree.num_classes
    counts = np.bincount(targets, minlength=grown.num_classes)
    empty = [grown.classes[c] for c in range(old_count, grown.num_classes) if counts[c] == 0]
    if empty:
        raise NhlError(
            f"the training split of {request.data} has no images of {', '.join(map(repr, empty[:5]))}; "
            "give data with images of every new class"
        )
    if not (targets < old_count).any():
        raise NhlError(
            f"the training split of {request.data} has no images of the model's own classes, which "
            "the new classes must learn to stay below; give the data the model was trained on "
            "with the new classes added"
        )
    return dataset, np.flatnonzero(targets >= old_count), np.flatnonzero(targets < old_count)


def _measure(model: NHLModel, grown: NHLModel, loader: DataLoader, old_count: int) -> dict[str, Any]:
    """Top-1 of the new and old classes, and how many old images changed answer."""
    tally = np.zeros(6, dtype=np.int64)  # new seen, new right, old seen, old right before, after, changed
    with torch.no_grad():
        for images, targets in loader:
            logits = grown(images)
            after = logits.argmax(1)
            before = logits[:, :old_count].argmax(1)
            new = targets >= old_count
            tally += np.array(
                [
                    int(new.sum()),
                    int((after[new] == targets[new]).sum()),
                    int((~new).sum()),
                    int((before[~new] == targets[~new]).sum()),
                    int((after[~new] == targets[~new]).sum()),
                    int((after[~new] != before[~new]).sum()),
                ]
            )
    seen_new, right_new, seen_old, before, after, changed = (int(v) for v in tally)
    return {
        "images_new": seen_new,
        "top1_new": right_new / seen_new if seen_new else None,
        "images_old": seen_old,
        "top1_old_before": before / seen_old if seen_old else None,
        "top1_old_after": after / seen_old if seen_old else None,
        "old_changed": changed / seen_old if seen_old else None,
    }


def graft_model(
    model: NHLModel,
    request: GraftRequest,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    measure: bool = True,
) -> GraftResult:
    """Graft ``request.classes`` onto ``model`` (in memory); the model itself is not changed."""
    from nhlcli.training.loop import TrainConfig, optimizer_and_scheduler, seed_everything

    request.check()
    model = graftable(model, "this model")
    started = time.perf_counter()
    grown = grow_tree(model.tree, grow_placements(model.tree, request))
    recipe = _recipe(model, request)
    holdout = (
        trained_holdout(getattr(model, "metadata", {}) or {}) if request.holdout is None else request.holdout
    )
    dataset, new_rows, old_rows = _training_data(model, grown.tree, request, recipe, holdout)
    seed_everything(request.seed)
    model = model.eval()
    graft = GraftBranches(model, grown.tree).train()
    negatives = max(1, round(request.negatives * len(new_rows)))
    # The old classes' images are a sample, 1 in 1/share of them, so the training data holds the new
    # classes share^-1 times more often than the data does. Training the old logits shifted by
    # log(share) (the logit-adjusted loss, Menon et al. 2021) makes the new logits right for the
    # data's own class frequencies instead of the sample's; at inference the old logits are as they were.
    old_shift = math.log(min(negatives, len(old_rows)) / len(old_rows))
    sampler = NewAndOldSampler(new_rows, old_rows, negatives, request.seed)
    loader = DataLoader(
        dataset,
        batch_size=recipe["batch_size"],
        sampler=sampler,
        num_workers=request.workers,
        drop_last=len(sampler) > recipe["batch_size"],
    )
    steps = len(loader)
    config = TrainConfig(epochs=request.epochs, lr=recipe["lr"], weight_decay=recipe["weight_decay"],
                         warmup_epochs=request.warmup_epochs, optimizer="adamw")  # fmt: skip
    optimizer, scheduler = optimizer_and_scheduler(graft, config, steps)
    device = torch.device("cpu")
    amp = request.amp and cpu_has_fast_bf16()
    history, step = [], 0
    for epoch in range(request.epochs):
        sampler.set_epoch(epoch)
        seen, loss_sum, right = 0, 0.0, 0
        for images, targets in loader:
            images = images.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, amp, training=True):
                maps, old_logits = frozen_forward(model, images)
                logits = torch.cat([old_logits.float() + old_shift, graft(maps).float()], 1)
                loss = F.cross_entropy(logits, targets, label_smoothing=recipe["label_smoothing"])
            if not math.isfinite(loss.item()):
                raise NhlError(f"the loss became {loss.item()} at step {step}; lower `lr`")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            seen += len(targets)
            loss_sum += loss.item() * len(targets)
            right += int((logits.argmax(1) == targets).sum())
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": right / seen})
        if progress is not None:
            progress(epoch + 1, request.epochs, history[-1])
    train_seconds = time.perf_counter() - started
    result_model = merge(model, grown.tree, graft.eval())
    result_model.metadata = dict(getattr(model, "metadata", {}) or {})
    record = {
        **grown.record(),
        "when": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "old_classes": model.tree.num_classes,
        "placed": f"under {request.under}" if request.under is not None else "by a reference tree",
        "data": str(request.data),
        "holdout": holdout,
        "recipe": {
            **recipe,
            "crop_scale": list(recipe["crop_scale"]) if recipe["crop_scale"] else None,
            "epochs": request.epochs,
            "warmup_epochs": request.warmup_epochs,
            "seed": request.seed,
            "negatives": request.negatives,
            "amp": amp,
            "optimizer": "adamw",
        },
        "images": {
            "new": int(len(new_rows)),
            "old_per_epoch": int(min(negatives, len(old_rows))),
            "old_logit_shift": round(old_shift, 4),
            "old_available": int(len(old_rows)),
        },
        "steps": step,
        "train_seconds": round(train_seconds, 2),
    }
    if measure:
        loader = model_loader(result_model, request.data, "val", 128, request.workers, subset=True,
                              holdout=holdout)  # fmt: skip
        measured = _measure(model, result_model, loader, model.tree.num_classes)
        record["measured"] = {**measured, "split": "val", "holdout": holdout}
    return GraftResult(result_model, grown, record, history)


def graft_file(
    model_file: str | Path,
    request: GraftRequest,
    output: str | Path | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    measure: bool = True,
) -> GraftResult:
    """Graft onto the model in ``model_file``; write the grown model to ``output`` (atomically)."""
    request.check()
    contents = read_model_file(model_file, whole_digest=True)
    model = graftable(model_from_contents(contents), str(model_file))
    result = graft_model(model, request, progress, measure)
    result.record.update({"parent_file": Path(model_file).name, "parent_sha256": contents.file_sha256})
    if output is not None:
        save_graft(result, output)
    return result


def save_graft(result: GraftResult, output: str | Path) -> Path:
    """Write the grown model; its ``graft`` section lists every graft so far, oldest first."""
    meta = getattr(result.model, "metadata", {}) or {}
    grafts = [*meta.get("graft", []), result.record]
    return save_model(result.model, output, training=meta.get("training"), graft=grafts)


def describe(record: dict[str, Any]) -> str:
    """One line on what was grafted."""
    groups = record.get("new_groups") or []
    made = f", {counted(len(groups), 'new group')}" if groups else ""
    return (
        f"grafted {counted(len(record['classes']), 'class', 'classes')} onto "
        f"{counted(record['old_classes'], 'class', 'classes')}{made} in {record['train_seconds']:.1f} s"
    )
