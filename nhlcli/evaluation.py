"""Evaluate a model file on a dataset, optionally on a subset of its classes (paper 003, eq. 3)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nhlcli.data.datasets import split_name
from nhlcli.data.loaders import model_loader
from nhlcli.errors import NhlError
from nhlcli.model.attention import TruthAttention, attention_levels, class_attention, parse_attend
from nhlcli.taxonomy.tree import Tree
from nhlcli.training.distributed import DistInfo, resolve_device

AttendSpec = Mapping[str, float] | Sequence[str] | Sequence[tuple[str, float]]


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


def split_labels(text: str | None) -> list[str]:
    """``"a,b"`` or ``@file`` (one label a line) into labels."""
    if not text:
        return []
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise NhlError(f"--classes {text}: file {path} does not exist")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def attend_pairs(attend: AttendSpec | None) -> list[tuple[str, float]]:
    """``{"tabby": 2}``, ``["tabby=2"]`` (the CLI's form) or ``[("tabby", 2)]`` as checked pairs."""
    if not attend:
        return []
    items = attend.items() if isinstance(attend, Mapping) else attend
    return parse_attend([item if isinstance(item, str) else f"{item[0]}={item[1]}" for item in items])


def check_attention_options(
    attend: Sequence[tuple[str, float]], level: int | str | None, truth: float | None
) -> None:
    """Reject option combinations that mean nothing, before any model is loaded."""
    if attend and truth is not None:
        raise NhlError(
            "--attend and --attend-truth exclude each other: steer towards chosen classes (--attend) "
            "or towards each image's own class (--attend-truth), not both"
        )
    if level is not None and not attend and truth is None:
        raise NhlError("--attend-level needs --attend CLASS=SCALE or --attend-truth SCALE")


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
        matches = tree.select([label for label, _ in attend], what="--attend").matches
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
    classes: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    attend: AttendSpec | None = None,
    attend_level: int | str | None = None,
    attend_truth: float | None = None,
    route_top_k: int | None = None,
    part: str | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Load a model file and report top-1, top-5, loss and per-class accuracy on ``data``.

    A gated file (``nhl gates fit``) reports gated inference instead: top-1, average GMACs, the
    fraction leaving at each exit and measured throughput; ``route_top_k`` routes through the
    tree. ``part="i/k"`` evaluates one fixed part of the split (see ``create_eval_loader``).

    ``attend`` scales chosen classes' branches, ``attend_truth`` each image's own class path
    (paper 003, 4.4); ``attend_level`` picks the level (default the last, an int, or "path").
    """
    from nhlcli.training.loop import evaluate

    dev = resolve_device(device)
    pairs = attend_pairs(attend)
    check_attention_options(pairs, attend_level, attend_truth)
    model = _load_for_eval(model_file, dev, ungated_only=bool(pairs or attend_truth is not None or classes))
    if "gates" in model.metadata or route_top_k is not None:
        from nhlcli.gates.workflow import evaluate_gated_model

        report = evaluate_gated_model(
            model, data, split, batch_size, workers, dev, route_top_k, part, progress
        )
        return {
            **report,
            "model": str(model_file),
            "data": str(data),
            "split": split_name(data, split),
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
        model, data, split, batch_size, workers, tree=net.tree, subset=bool(labels), part=part
    )
    tree = net.tree  # the model's tree, or the subtree of the requested classes
    report = evaluate(net, loader, dev, attention=attention)
    report["per_class"] = {tree.node(c).name: acc for c, acc in report["per_class"].items()}
    report["num_classes"] = len(tree.classes)
    report["model"] = str(model_file)
    report["data"] = str(data)
    report["split"] = split_name(data, split)
    report["attention"] = attention_summary(model.tree, pairs, attend_level, attend_truth)
    return report


def _load_for_eval(model_file: str | Path, device: torch.device, ungated_only: bool) -> nn.Module:
    """The model file, refused when it is gated and the evaluation needs the ungated network."""
    from nhlcli.model.files import load_model

    model = load_model(model_file, device)
    if ungated_only and "gates" in model.metadata:
        raise NhlError(
            "a gated file is evaluated whole: --attend, --attend-truth and --classes need the ungated "
            "model (or cut an expert first and fit gates on it)"
        )
    return model


def _restrict(model: nn.Module, classes: str | None, device: torch.device) -> tuple[nn.Module, list[str]]:
    """The model limited to ``--classes`` (softmax over them), or the model itself."""
    labels = split_labels(classes)
    if not labels:
        return model, labels
    return ClassSubset(model, model.tree.select(labels).subtree(model.tree)).to(device), labels


def parse_scales(text: str) -> list[float]:
    """``--attend-truth 0.5,1,2`` into scales, each once, in the order given (checked later by
    :class:`~nhlcli.model.attention.TruthAttention`)."""
    scales: list[float] = []
    for item in (part.strip() for part in text.split(",")):
        try:
            scale = float(item)
        except ValueError:
            raise NhlError(
                f"--attend-truth {text!r}: {item!r} is not a number; write e.g. 2 or 0.5,1,2"
            ) from None
        if scale not in scales:
            scales.append(scale)
    return scales


@torch.no_grad()
def attention_curve(
    model: nn.Module,
    loader: Any,
    scales: Sequence[float],
    level: int | str | None = None,
    device: torch.device | None = None,
    subset: ClassSubset | None = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Top-1, top-5 and loss with each image's own class path scaled by every one of ``scales``.

    Attention acts on the branches only, so each batch goes through the trunk once and through
    the branches once per scale: the whole curve costs little more than one evaluation. Each
    point equals ``evaluate_file(..., attend_truth=scale)``. ``subset``: the model restricted to
    some classes (targets then index the subset's classes).
    """
    from nhlcli.training.loop import Tally

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
    classes: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    attend_level: int | str | None = None,
    part: str | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """``nhl eval --attend-truth 0.5,1,2,...``: paper 003's oracle curve (4.4) in one pass over
    the data, with the scale of largest top-1."""
    if not scales:
        raise NhlError("--attend-truth: give at least one scale, e.g. 0.5,1,2")
    dev = resolve_device(device)
    model = _load_for_eval(model_file, dev, ungated_only=True)
    net, labels = _restrict(model, classes, dev)
    loader = model_loader(
        model, data, split, batch_size, workers, tree=net.tree, subset=bool(labels), part=part
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
        "split": split_name(data, split),
        "images": curve[0]["images"],
        "num_classes": len(net.tree.classes),
        "attention": {**summary, "scales": list(scales)},
        "curve": curve,
        "best_scale": best["scale"],
        "best_top1": best["top1"],
    }
