"""Evaluation: metrics over a loader (top-1, top-5, loss, per class; gated inference), and a
model file evaluated on a dataset, optionally on a subset of its classes (paper 003, eq. 3).

Training calls :func:`evaluate` for its held-out split, so this module sits below ``training/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nhlcli.data.bad import split_bad
from nhlcli.data.datasets import resolve_holdout, split_name
from nhlcli.data.loaders import model_holdout, model_loader
from nhlcli.devices import autocast_for, resolve_device
from nhlcli.distributed import DistInfo, all_sum
from nhlcli.errors import NhlError
from nhlcli.metrics import HierarchyTally, paired_differences
from nhlcli.model.attention import TruthAttention, attention_levels, check_attend, class_attention
from nhlcli.model.contract import NhlModel
from nhlcli.progress import ImageProgress
from nhlcli.taxonomy.tree import Tree

AttendSpec = Mapping[str, float] | Sequence[tuple[str, float]]
Scales = Mapping[int, torch.Tensor]  # top-down attention: level -> per-node (or per-sample) scales


class Tally:
    """Running counts of one evaluation: per-class hits, top-5 hits and summed loss, so that
    several evaluations can share one pass over the data (and DDP ranks sum them at the end)."""

    def __init__(self, num_classes: int, hierarchy: HierarchyTally | None = None) -> None:
        self.correct = torch.zeros(num_classes, dtype=torch.float64)
        self.total = torch.zeros(num_classes, dtype=torch.float64)
        self.top5_hits = 0.0
        self.loss_sum = 0.0
        self.k = min(5, num_classes)
        self.hierarchy = hierarchy

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.float()
        self.loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(self.k, dim=1).indices
        hit1 = (top[:, 0] == targets).double().cpu()
        self.top5_hits += (top == targets[:, None]).any(dim=1).sum().item()
        t = targets.cpu()
        self.correct.index_add_(0, t, hit1)
        self.total.index_add_(0, t, torch.ones_like(hit1))
        if self.hierarchy is not None:
            self.hierarchy.add(logits, targets)

    def report(self, classes: list[str], info: DistInfo) -> dict[str, Any]:
        """Top-1, top-5, mean loss and per-class accuracy, summed over DDP ranks."""
        num_classes = len(classes)
        shared = self.hierarchy.counts() if self.hierarchy is not None else []
        counts = all_sum(
            info, self.top5_hits, self.loss_sum, *self.correct.tolist(), *self.total.tolist(), *shared
        )
        top5_hits, loss_sum = counts[0], counts[1]
        correct = torch.tensor(counts[2 : 2 + num_classes])
        total = torch.tensor(counts[2 + num_classes : 2 + 2 * num_classes])
        n = float(total.sum())
        if n == 0:
            raise NhlError("the evaluation data holds no images")
        per_class = {
            c: (float(correct[i] / total[i]) if total[i] > 0 else None) for i, c in enumerate(classes)
        }
        report = {
            "images": int(n),
            "top1": float(correct.sum() / n),
            "top5": top5_hits / n,
            "top5_k": self.k,
            "loss": loss_sum / n,
            "per_class": per_class,
        }
        if self.hierarchy is not None:
            report["hierarchy"] = self.hierarchy.report(counts[2 + 2 * num_classes :])
        return report


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    info: DistInfo | None = None,
    attention: Scales | Callable[[torch.Tensor], Scales] | None = None,
    amp: bool = True,
    bad_indices: set[int] | None = None,
    hierarchy: Tree | HierarchyTally | None = None,
) -> dict[str, Any]:
    """Top-1, top-5, mean loss and per-class accuracy over ``loader`` (summed over DDP ranks);
    with ``hierarchy``, also the hierarchical metrics and calibration of :mod:`nhlcli.metrics`
    measured on that tree (it must hold the model's classes), or into that tally.

    ``attention``: per-level node scales for every batch, or a callable giving them from each
    batch's targets (per-sample attention, e.g. :class:`~nhlcli.model.attention.TruthAttention`).
    Images a skip-bad-images loader could not decode are left out, their indices added to
    ``bad_indices`` when given.
    """
    info = info or DistInfo(device=device)
    model.eval()
    classes = list(model.classes)
    if isinstance(hierarchy, Tree):
        hierarchy = HierarchyTally(hierarchy, classes)
    tally = Tally(len(classes), hierarchy)
    for batch_images, batch_targets in loader:
        images, targets, bad = split_bad(batch_images, batch_targets)
        if bad_indices is not None:
            bad_indices.update(bad)
        if not targets.numel():
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        scales = attention(targets) if callable(attention) else attention
        with autocast_for(device, amp):
            logits = model(images, scales) if scales else model(images)
        tally.add(logits, targets)
    return tally.report(classes, info)


class ClassSubset(nn.Module):
    """A model's logits for some of its classes only: the softmax then runs over those (eq. 3)."""

    def __init__(self, model: nn.Module, tree: Tree) -> None:
        super().__init__()
        self.model = model
        self.tree = tree
        self.register_buffer(
            "index",
            torch.tensor([model.tree.class_index(c) for c in tree.classes], dtype=torch.long),
            persistent=False,
        )

    @property
    def classes(self) -> list[str]:
        return self.tree.classes

    def forward(self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        logits = self.model(x, attention) if attention else self.model(x)
        return logits.index_select(1, self.index)


class _SubsetTargets:
    """Per-sample attention for targets given as indices into a :class:`ClassSubset`'s classes."""

    def __init__(self, attention: Callable[[torch.Tensor], Mapping[int, torch.Tensor]], index: torch.Tensor):
        self.attention = attention
        self.index = index

    def __call__(self, targets: torch.Tensor) -> Mapping[int, torch.Tensor]:
        return self.attention(self.index.to(targets.device)[targets])


def attend_pairs(attend: AttendSpec | None) -> list[tuple[str, float]]:
    """``{"tabby": 2}`` or ``[("tabby", 2)]`` as checked pairs."""
    if not attend:
        return []
    return check_attend(list(attend.items() if isinstance(attend, Mapping) else attend))


def check_attention_options(
    attend: Sequence[tuple[str, float]], level: int | str | None, truth: float | None
) -> None:
    """Reject option combinations that mean nothing, before any model is loaded."""
    if attend and truth is not None:
        raise NhlError(
            "and `attend_truth` exclude each other: steer towards chosen classes (`attend`) "
            "or towards each image's own class (`attend_truth`), not both",
            "attend",
        )
    if level is not None and not attend and truth is None:
        raise NhlError("needs `attend` CLASS=SCALE or `attend_truth` SCALE", "attend_level")


def attention_summary(
    tree: Tree, attend: Sequence[tuple[str, float]], level: int | str | None, truth: float | None = None
) -> dict[str, Any] | None:
    """What attention a run used, for its report (``None``: none)."""
    if not attend and truth is None:
        return None
    levels = attention_levels(tree, level)
    if level is None:
        name: int | str = "last"
    elif str(level).strip().isdigit():
        name = levels[0]
    else:
        name = "path"
    summary: dict[str, Any] = {"mode": "truth" if truth is not None else "classes", "level": name}
    summary["levels"] = levels
    if truth is not None:
        summary["scale"] = float(truth)
    else:
        matches = tree.select([label for label, _ in attend], option="attend").matches
        summary["classes"] = [
            {
                "id": match.node or match.concept,
                "name": tree.node(match.node).name if match.node else match.name,
                "classes": len(match.classes),
                "scale": scale,
            }
            for match, (_, scale) in zip(matches, attend, strict=True)
        ]
    return summary


def describe_attention(summary: Mapping[str, Any] | None) -> str:
    """One line for people, e.g. ``tabby x2 at level 2`` or ``each image's own class x1.5 on every level
    of the path``."""
    if not summary:
        return "none"
    if summary["mode"] == "truth":
        what = f"each image's own class x{summary['scale']:g}"
    else:
        what = ", ".join(f"{c['name']} x{c['scale']:g}" for c in summary["classes"])
    where = "on every level of the path" if summary["level"] == "path" else f"at level {summary['levels'][0]}"
    return f"{what} {where}"


def evaluate_file(
    model_file: str | Path,
    data: str | Path,
    split: str = "val",
    classes: Sequence[str] | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    attend: AttendSpec | None = None,
    attend_level: int | str | None = None,
    attend_truth: float | None = None,
    route_top_k: int | None = None,
    part: str | None = None,
    progress: ImageProgress | None = None,
    holdout: float | None = None,
    hierarchy: str | Path | Tree | None = None,
) -> dict[str, Any]:
    """Load a model file and report top-1, top-5, loss, per-class accuracy, the hierarchical
    metrics and the calibration error (:mod:`nhlcli.metrics`) on ``data``.

    ``hierarchy``: the tree the hierarchical metrics are measured on (a tree file or a
    :class:`Tree` over the model's classes); default the tree recorded in the model file, so that
    two models, a flat one too, are measured on the same tree when given the same one.

    A gated file (``nhl gates fit``) reports gated inference instead: top-1, average GMACs, the
    fraction leaving at each exit and measured throughput; ``route_top_k`` routes through the
    tree. ``part="i/k"`` evaluates one fixed part of the split (see ``create_eval_loader``).

    ``attend`` scales chosen classes' branches, ``attend_truth`` each image's own class path
    (paper 003, 4.4); ``attend_level`` picks the level (default the last, an int, or "path").

    ``holdout``: ``val`` is that stratified hold-out of the training images and ``train`` the
    rest (as ``nhl train --holdout``); ``None`` takes the hold-out the model was trained without
    (none for a model trained on every training image), ``0`` none: the data's own splits.
    """
    resolve_holdout(holdout, split)  # a bad fraction or split: before the model is read
    dev = resolve_device(device)
    pairs = attend_pairs(attend)
    check_attention_options(pairs, attend_level, attend_truth)
    metric_tree = Tree.load(hierarchy) if isinstance(hierarchy, str | Path) else hierarchy
    model = _load_for_eval(model_file, dev, ungated_only=bool(pairs or attend_truth is not None or classes))
    held = model_holdout(model, split, holdout)
    if model.exit_names() or route_top_k is not None:
        if hierarchy is not None:
            raise NhlError(
                "measures the hierarchical metrics of an ungated model; evaluate the model the gates were "
                "fitted on", "hierarchy",
            )
        report = evaluate_gated_model(
            model, data, split, batch_size, workers, dev, route_top_k, part, progress, held
        )
        return {
            **report,
            "model": str(model_file),
            "data": str(data),
            "split": split_name(data, split, held),
            "holdout": held,
            "part": part,
        }
    net, labels = _restrict(model, classes, dev)
    # attention acts on the full model's branches: build it from ``model``, never from ``net``
    attention: Mapping[int, torch.Tensor] | Callable[[torch.Tensor], Mapping[int, torch.Tensor]] | None = None
    if pairs:
        attention = class_attention(model, pairs, attend_level)
    elif attend_truth is not None:
        attention = TruthAttention(model, attend_truth, attend_level)
        if labels:  # targets index the subset's classes; the oracle needs the full model's
            attention = _SubsetTargets(attention, net.index)
    loader = model_loader(
        model, data, split, batch_size, workers, tree=net.tree, subset=bool(labels), part=part, holdout=held
    )
    tree = net.tree  # the model's tree, or the subtree of the requested classes
    metric_tree = metric_tree if metric_tree is not None else tree
    report = evaluate(net, loader, dev, attention=attention, hierarchy=metric_tree)
    report["per_class"] = {tree.node(c).name: acc for c, acc in report["per_class"].items()}
    report["num_classes"] = len(tree.classes)
    report["model"] = str(model_file)
    report["data"] = str(data)
    report["split"] = split_name(data, split, held)
    report["holdout"] = held
    report["attention"] = attention_summary(model.tree, pairs, attend_level, attend_truth)
    if model.has_other and not labels:  # the expert's own classes above; every image here
        try:
            report["other"] = other_report(model, data, split, batch_size, workers, dev, part, held)
        except NhlError:  # data without the parent's other classes: the rest still stands
            report["other"] = {
                "skipped": "this data does not hold the parent's other classes; give the data the parent was "
                "trained on to measure what goes to other"
            }
    return report


def compare_files(
    model_a: str | Path,
    model_b: str | Path,
    data: str | Path,
    split: str = "val",
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    hierarchy: str | Path | Tree | None = None,
    holdout: float | None = None,
) -> dict[str, Any]:
    """``nhl eval A --compare B``: two models over the same classes on the same images, both
    measured on one tree (``hierarchy``, default A's), with B minus A and its 95% paired-bootstrap
    interval for top-1, hierarchical distance @1 and mistake severity.

    The question it answers first: when a nested model is wrong, is it less wrong than a flat one?
    """
    resolve_holdout(holdout, split)
    dev = resolve_device(device)
    files = (model_a, model_b)
    models = [_load_for_eval(path, dev, ungated_only=True) for path in files]
    if set(models[0].classes) != set(models[1].classes):
        raise NhlError(
            f"{model_a} and {model_b} know different classes; compare models trained on the same classes"
        )
    held = {model_holdout(model, split, holdout) for model in models}
    if len(held) > 1:
        fractions = " and ".join(map(str, sorted(held)))
        raise NhlError(
            f"the two models were trained without different hold-outs ({fractions}), so their "
            f"{split!r} images differ; pick one for both with `holdout`"
        )
    tree = Tree.load(hierarchy) if isinstance(hierarchy, str | Path) else hierarchy
    tree = tree if tree is not None else models[0].tree
    reports, depths = [], []
    for path, model in zip(files, models, strict=True):
        tally = HierarchyTally(tree, list(model.classes), per_image=True)
        loader = model_loader(model, data, split, batch_size, workers, holdout=min(held))
        report = evaluate(model, loader, dev, hierarchy=tally)
        report["per_class"] = {model.tree.node(c).name: acc for c, acc in report["per_class"].items()}
        reports.append({"model": str(path), **report})
        depths.append(torch.cat(tally.per_image))
    return {
        "a": reports[0],
        "b": reports[1],
        "data": str(data),
        "split": split_name(data, split, min(held)),
        "holdout": min(held),
        "images": reports[0]["images"],
        "tree": {"name": tree.name, "levels": tree.levels, "from": "hierarchy" if hierarchy else "a"},
        "differences": paired_differences(depths[0], depths[1], tree.levels),
    }


def _load_for_eval(model_file: str | Path, device: torch.device, ungated_only: bool) -> NhlModel:
    """The model file, refused when it is gated and the evaluation needs the ungated network."""
    from nhlcli.model.loading import open_model

    model = open_model(model_file, device)
    if ungated_only and model.whole_only_problem:
        raise NhlError(model.whole_only_problem)
    return model


def _restrict(
    model: nn.Module, classes: Sequence[str] | None, device: torch.device
) -> tuple[nn.Module, list[str]]:
    """The model limited to ``classes`` (softmax over them), or the model itself."""
    labels = list(classes or [])
    if not labels:
        return model, labels
    return ClassSubset(model, model.tree.select(labels).subtree(model.tree)).to(device), labels


@torch.no_grad()
def attention_curve(
    model: nn.Module,
    loader: Any,
    scales: Sequence[float],
    level: int | str | None = None,
    device: torch.device | None = None,
    subset: ClassSubset | None = None,
    progress: ImageProgress | None = None,
) -> list[dict[str, Any]]:
    """Top-1, top-5 and loss with each image's own class path scaled by every one of ``scales``.

    Attention acts on the branches only, so each batch goes through the trunk once and through
    the branches once per scale: the whole curve costs little more than one evaluation. Each
    point equals ``evaluate_file(..., attend_truth=scale)``. ``subset``: the model restricted to
    some classes (targets then index the subset's classes).
    """
    device = device or torch.device("cpu")
    oracles: list[Callable[[torch.Tensor], Mapping[int, torch.Tensor]]] = [
        TruthAttention(model, scale, level) for scale in scales
    ]
    if subset is not None:  # targets index the subset's classes; the oracle needs the full model's
        oracles = [_SubsetTargets(oracle, subset.index) for oracle in oracles]
    classes = list(subset.classes if subset is not None else model.classes)
    tallies = [Tally(len(classes)) for _ in scales]
    model.eval()
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        features = model.trunk(images)
        for oracle, tally in zip(oracles, tallies, strict=True):
            logits = model.forward_branches(features, oracle(targets))
            tally.add(logits if subset is None else logits.index_select(1, subset.index), targets)
        if progress is not None:
            progress.advance(len(targets))
    info = DistInfo(device=device)
    points = []
    for scale, tally in zip(scales, tallies, strict=True):
        report = tally.report(classes, info)
        points.append({"scale": scale, **{k: report[k] for k in ("images", "top1", "top5", "loss")}})
    return points


def attention_curve_file(
    model_file: str | Path,
    data: str | Path,
    scales: Sequence[float],
    split: str = "val",
    classes: Sequence[str] | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    attend_level: int | str | None = None,
    part: str | None = None,
    progress: ImageProgress | None = None,
    holdout: float | None = None,
) -> dict[str, Any]:
    """``nhl eval --attend-truth 0.5,1,2,...``: paper 003's oracle curve (4.4) in one pass over
    the data, with the scale of largest top-1 (choose that scale on a ``holdout`` of the training
    images, see :func:`evaluate_file`, and report it on the test split)."""
    if not scales:
        raise NhlError("give at least one scale, e.g. 0.5,1,2", "attend_truth")
    resolve_holdout(holdout, split)
    dev = resolve_device(device)
    model = _load_for_eval(model_file, dev, ungated_only=True)
    held = model_holdout(model, split, holdout)
    net, labels = _restrict(model, classes, dev)
    loader = model_loader(
        model, data, split, batch_size, workers, tree=net.tree, subset=bool(labels), part=part, holdout=held
    )
    if progress is not None:
        progress.start(len(loader.dataset), f"{len(scales)} attention scales")
    subset = net if isinstance(net, ClassSubset) else None
    curve = attention_curve(model, loader, scales, attend_level, dev, subset, progress)
    best = max(curve, key=lambda p: p["top1"])
    summary = attention_summary(model.tree, [], attend_level, 1.0)
    summary.pop("scale")
    return {
        "model": str(model_file),
        "data": str(data),
        "split": split_name(data, split, held),
        "holdout": held,
        "images": curve[0]["images"],
        "num_classes": len(net.tree.classes),
        "attention": {**summary, "scales": list(scales)},
        "curve": curve,
        "best_scale": best["scale"],
        "best_top1": best["top1"],
    }


def check_gated_options(model: NhlModel, route_top_k: int | None, attend: Sequence[Any]) -> None:
    """Options a gated file takes (routing) and refuses (attention); sets the routing (``None``:
    the routing width tuned into the file, if any)."""
    if route_top_k is not None:
        model.set_route_top_k(route_top_k)  # refused, in one line, by a model without a routing gate
    if attend and model.attention_problem:
        raise NhlError(model.attention_problem)


def evaluate_gated_model(
    model: nn.Module,
    data: str | Path,
    split: str,
    batch_size: int,
    workers: int,
    device: torch.device,
    route_top_k: int | None = None,
    part: str | None = None,
    progress: ImageProgress | None = None,
    holdout: float = 0.0,
) -> dict[str, Any]:
    """Gated inference over a data split (what ``nhl eval`` reports for a gated file)."""
    check_gated_options(model, route_top_k, ())
    loader = model_loader(model, data, split, batch_size, workers, part=part, holdout=holdout)
    if progress is not None:
        progress.start(len(loader.dataset), "gated inference")
    return evaluate_gated(model, loader, device, progress=progress.advance if progress else None)


@torch.no_grad()
def evaluate_gated(
    gated: NhlModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    baseline: bool = True,
    progress: Any = None,
) -> dict[str, Any]:
    """Real gated inference: top-1, average GMACs, exit fractions (and accuracy at each exit), and
    top-1 and throughput of the ungated model on the same batches beside them (one-time
    construction of routed branch sets is left out of the timing)."""
    gated.eval()
    gates = len(gated.exits)
    hits = torch.zeros(gates + 1, dtype=torch.float64)
    counts = torch.zeros(gates + 1, dtype=torch.float64)
    macs_sum, gated_s, base_s, n, base_hits = 0.0, 0.0, 0.0, 0, 0

    def timed(run: Any, images: torch.Tensor) -> tuple[Any, float]:
        start = time.perf_counter()
        out = run(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out, time.perf_counter() - start

    for step, (images, targets) in enumerate(batches):
        images = images.to(device)
        # alternate which model runs first: the first run after a batch arrives competes with
        # the loader preparing the next one
        order = ("gated", "base") if step % 2 == 0 or not baseline else ("base", "gated")
        for which in order:
            if which == "gated":
                setup = gated.setup_seconds
                out, seconds = timed(gated.run, images)
                gated_s += seconds - (gated.setup_seconds - setup)
            elif baseline:
                base_logits, seconds = timed(gated.model, images)
                base_s += seconds
                base_hits += int((base_logits.argmax(1).cpu() == targets.cpu()).sum())
        correct = (out.logits.argmax(1).cpu() == targets.cpu()).double()
        hits.index_add_(0, out.exits, correct)
        counts.index_add_(0, out.exits, torch.ones_like(correct))
        macs_sum += float(out.macs.sum())
        n += len(targets)
        if progress is not None:
            progress(len(targets))
    if n == 0:
        raise NhlError("the evaluation data holds no images")
    report: dict[str, Any] = {
        "images": n,
        "top1": float(hits.sum() / n),
        "gmacs": macs_sum / n / 1e9,
        "full_gmacs": gated.base_macs() / 1e9,
        "thresholds": gated.thresholds,
        "route_top_k": gated.route_top_k,
        "exits": [
            {
                "name": name,
                "fraction": float(counts[i] / n),
                "top1": float(hits[i] / counts[i]) if counts[i] else None,
            }
            for i, name in enumerate(gated.exit_names())
        ],
        "images_per_s": n / gated_s if gated_s else None,
        "threads": torch.get_num_threads(),
    }
    report["gmacs_reduction_percent"] = round(100 * (1 - report["gmacs"] / report["full_gmacs"]), 2)
    if baseline:
        report["ungated_top1"] = base_hits / n  # the same images through the whole model
        report["ungated_images_per_s"] = n / base_s if base_s else None
        report["speedup"] = base_s / gated_s if gated_s else None
    return report


def own_classes(expert: Tree, parent: Tree) -> torch.Tensor:
    """Per class of the parent's tree, whether the expert keeps it (labels by the parent's tree)."""
    kept = set(expert.classes)
    return torch.tensor([c in kept for c in parent.classes])


@torch.no_grad()
def collect_other(
    model: NhlModel, loader: Any, mine: torch.Tensor, device: torch.device, limit: int | None = None
) -> dict[str, torch.Tensor]:
    """Per image of ``loader`` (labelled by the parent's tree): the other head's input features,
    whether the image is one of the expert's classes
    (``mine[label]``), the expert's answer and the baselines' scores: the largest softmax
    probability, the largest logit and the energy (log-sum-exp) of the expert's logits.

    ``limit``: stop after that many images."""
    model.eval()
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("features", "mine", "label", "answer", "msp",
                                                               "max_logit", "energy")}  # fmt: skip
    seen = 0
    for batch_images, batch_targets in loader:
        images, targets, _ = split_bad(batch_images, batch_targets)
        if not targets.numel():
            continue
        logits, features = model.other_features(images.to(device))
        logits = logits.float().cpu()
        columns["features"].append(features.cpu())
        columns["mine"].append(mine[targets])
        columns["label"].append(targets)
        columns["answer"].append(logits.argmax(1))
        columns["msp"].append(logits.softmax(1).amax(1))
        columns["max_logit"].append(logits.amax(1))
        columns["energy"].append(logits.logsumexp(1))
        seen += len(targets)
        if limit is not None and seen >= limit:
            break
    if not seen:
        raise NhlError("the data holds no images for the other head; give the data the parent was trained on")
    return {k: torch.cat(v) for k, v in columns.items()}


@torch.no_grad()
def other_report(
    model: NhlModel, data: str | Path, split: str, batch_size: int, workers: int, device: torch.device,
    part: str | None = None, holdout: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """What an expert with an other head does on every image of ``data``: on its own classes, the
    top-1 with "other" counted wrong and the share sent to "other"; on the rest, the share sent to
    "other"; and how well its score and the baselines' separate the two (AUROC)."""
    from nhlcli.metrics import separation

    parent = Tree.from_dict(model.metadata["expert"]["parent_tree"])
    mine = own_classes(model.tree, parent)
    loader = model_loader(model, data, split, batch_size, workers, tree=parent, subset=True, part=part,
                          holdout=holdout)  # fmt: skip
    seen = collect_other(model, loader, mine, device)
    scores, own = model.other(seen["features"].to(device)).cpu(), seen["mine"]
    if not own.any() or own.all():
        raise NhlError(
            f"the {split} split needs images of the expert's classes and of others to measure the other "
            "head; give the data the parent was trained on"
        )
    threshold = model.other.spec.threshold
    rejected = scores < threshold if threshold is not None else torch.zeros_like(own)
    expert_index = torch.tensor([model.tree.class_index(c) if own else -1
                                 for c, own in zip(parent.classes, mine.tolist(), strict=True)])  # fmt: skip
    right = (expert_index[seen["label"]] == seen["answer"]) & ~rejected
    return {
        "threshold": threshold,
        "images_mine": int(own.sum()),
        "images_other": int((~own).sum()),
        "top1_mine_with_other": float(right[own].double().mean()),
        "rejected_mine": float(rejected[own].double().mean()),
        "rejected_other": float(rejected[~own].double().mean()),
        "auroc": separation(own, {"other head": scores, "max softmax": seen["msp"],
                                  "max logit": seen["max_logit"], "energy": seen["energy"]}),  # fmt: skip
    }
