"""Gates on files: what ``nhl gates fit|tune|sweep`` and ``nhl eval`` on a gated file call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nhlcli.data.datasets import resolve_holdout, split_name
from nhlcli.devices import resolve_device
from nhlcli.errors import NhlError
from nhlcli.gates.fit import GateTraining, fit_gates
from nhlcli.gates.tune import (
    ExitRecord,
    check_target,
    collect_exits,
    joint_path,
    simulate,
    sweep,
    target_from,
    tune_thresholds,
)
from nhlcli.model.gated import GatedModel, check_thresholds
from nhlcli.progress import ImageProgress


def data_input(data: str | Path) -> Path | None:
    """``--data`` as an input path for the output checks (``None`` for a named data set)."""
    path = Path(data)
    return path if str(data).strip() and path.exists() else None


def check_tune_output(gated_file: str | Path, output: str | Path | None, data: str | Path) -> Path | None:
    """Where ``tune_file`` writes, checked before any work: ``output``, or the gated file itself
    (tuning updates it in place by design, so ``-o`` naming the gated file means the same).
    Returns the output to write, ``None`` for the gated file."""
    from nhlcli.paths import check_output_file, same_file

    inputs = [data_input(data)]
    if output is not None and not same_file(output, gated_file):
        return check_output_file(output, inputs, label="`output`")
    check_output_file(gated_file, inputs, label="the gated file")
    return None


def carried_sections(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The file sections a gated file keeps from the model it was made from."""
    return {k: meta[k] for k in ("expert", "training", "cost") if k in meta}


def file_holdout(path: str | Path, split: str, holdout: float | None = None) -> float:
    """The hold-out a model or gated file's ``split`` is taken with (what the reports name)."""
    from nhlcli.data.datasets import trained_holdout
    from nhlcli.model.files import read_metadata

    resolve_holdout(holdout, split)
    return resolve_holdout(holdout, split, trained_holdout(read_metadata(path)))


def load_gated(path: str | Path, device: torch.device) -> GatedModel:
    from nhlcli.model.loading import open_model

    model = open_model(path, device)
    if not model.exit_names():
        raise NhlError(
            f"{path} has no gates; fit them first with 'nhl gates fit {path}' and `output` gated.safetensors"
        )
    return model


def fit_file(
    model_file: str | Path,
    output: str | Path,
    data: str | Path = "fashion-mnist",
    split: str = "train",
    stages: Sequence[int] | None = None,
    route: bool | None = None,
    config: GateTraining | None = None,
    batch_size: int = 128,
    workers: int = 2,
    device: str | torch.device | None = None,
    progress: ImageProgress | None = None,
    holdout: float | None = None,
) -> GatedModel:
    """Fit gates on a model file (NHL, expert or flat) and save the gated file (thresholds closed
    until ``tune_file`` sets them).

    ``holdout``: learn from the training images less that stratified hold-out (``split="train"``),
    so that thresholds tuned on the hold-out (``tune_file(..., split="val", holdout=...)``) are
    chosen on images the gates never saw; ``None`` takes the hold-out the model was trained
    without (none for a model trained on every training image), ``0`` none."""
    from nhlcli.data.loaders import model_holdout, model_loader
    from nhlcli.model.files import save_model
    from nhlcli.model.loading import open_model
    from nhlcli.paths import check_output_file

    resolve_holdout(holdout, split)  # a bad fraction or split: before the model is read
    check_output_file(output, [model_file, data_input(data)], label="`output`")
    dev = resolve_device(device)
    model = open_model(model_file, dev)
    if model.gating_problem:
        raise NhlError(f"{model_file} {model.gating_problem}")
    held = model_holdout(model, split, holdout)
    loader = model_loader(model, data, split, batch_size, workers, holdout=held)
    if progress is not None:
        progress.start(len(loader.dataset), "fitting gates")
    gated = fit_gates(model, loader, stages, route, config, dev, progress.advance if progress else None)
    gated.spec.fit.update({"data": str(data), "split": split_name(data, split, held), "holdout": held})
    save_model(gated, output, **carried_sections(getattr(model, "metadata", {})))
    return gated


def record_file(
    gated: GatedModel,
    data: str | Path,
    split: str,
    part: str | None,
    batch_size: int,
    workers: int,
    device: torch.device,
    progress: ImageProgress | None = None,
    holdout: float = 0.0,
) -> ExitRecord:
    from nhlcli.data.loaders import model_loader

    loader = model_loader(gated, data, split, batch_size, workers, part=part, holdout=holdout)
    if progress is not None:
        progress.start(len(loader.dataset), "scoring every gate")
    return collect_exits(gated, loader, device, progress.advance if progress else None)


def tune_file(
    gated_file: str | Path,
    data: str | Path = "fashion-mnist",
    split: str = "val",
    part: str | None = None,
    target_accuracy: float | None = None,
    max_drop: float | None = None,
    thresholds: Sequence[float | None] | None = None,
    route_top_k: int | None = None,
    output: str | Path | None = None,
    batch_size: int = 128,
    workers: int = 2,
    device: str | torch.device | None = None,
    progress: ImageProgress | None = None,
    holdout: float | None = None,
    delta: float | None = None,
    seed: int = 0,
    test_images: int | None = None,
) -> dict[str, Any]:
    """Set a gated file's thresholds (tuned for a target, or given) and write them into the file
    (or into ``output``).

    ``delta``: choose thresholds whose budget (``max_drop`` points lost, or ``target_accuracy``)
    holds on new images from the same data with probability at least ``1 - delta``
    (:mod:`nhlcli.gates.guarantee`; ``seed`` splits the tuning images); without it, thresholds
    only meet the budget on the tuning images themselves. ``test_images``: the budget holds on a
    test set of that many new images, not only as a rate.

    ``holdout``: tune on that stratified hold-out of the training images (``split="val"``)
    instead of the data's own val split (Fashion-MNIST's test set); ``None`` takes the hold-out
    the model was trained without (none for a model trained on every training image), ``0``
    none."""
    from nhlcli.data.loaders import model_holdout
    from nhlcli.gates.guarantee import guaranteed_thresholds
    from nhlcli.risk import budget_of, check_delta, check_test_images

    resolve_holdout(holdout, split)  # a bad fraction or split: before the file is read
    output = check_tune_output(gated_file, output, data)
    if thresholds is None:
        check_target(target_accuracy, max_drop)  # before the file is read or an image scored
    elif target_accuracy is not None or max_drop is not None:
        raise NhlError("give exactly one of `target_accuracy`, `max_drop` or `thresholds`")
    if delta is not None:
        if thresholds is not None:
            raise NhlError(
                "guarantees the budget that thresholds are tuned for; thresholds given by hand have none",
                "delta",
            )
        check_delta(delta)
    check_test_images(test_images, delta)
    dev = resolve_device(device)
    gated = load_gated(gated_file, dev)
    if thresholds is not None:
        check_thresholds(thresholds, len(gated.exits))
    if route_top_k is not None:  # else the width tuned into the file, if any
        gated.set_route_top_k(route_top_k)
    held = model_holdout(gated, split, holdout)
    record = record_file(gated, data, split, part, batch_size, workers, dev, progress, held)
    guarantee = None
    if thresholds is not None:
        result = simulate(gated, record, thresholds)
    elif delta is not None:
        risk, budget = budget_of(target_accuracy, max_drop)
        chosen = guaranteed_thresholds(gated, record, budget, delta, risk, seed, test_images=test_images)
        result, guarantee = simulate(gated, record, chosen["thresholds"]), chosen["guarantee"]
    else:
        result = tune_thresholds(gated, record, target_from(record, target_accuracy, max_drop))
    result["guarantee"] = guarantee
    gated.set_thresholds(result["thresholds"])
    return _keep_tuning(gated, result, output or gated_file, data, split, held, part, len(record.labels))


def _keep_tuning(
    gated: GatedModel, result: dict[str, Any], output: str | Path, data: str | Path, split: str,
    held: float, part: str | None, images: int,
) -> dict[str, Any]:  # fmt: skip
    """Record what a tuning chose and on which images, with the routing width it was tuned at (eval
    and predict route with it), in the gated file written to ``output``."""
    from nhlcli.model.files import save_model

    result.update({"data": str(data), "split": split_name(data, split, held), "holdout": held, "part": part,
                   "images": images, "route_top_k": gated.route_top_k})  # fmt: skip
    gated.spec.route_top_k = gated.route_top_k
    gated.spec.tune = result
    save_model(gated, output, **carried_sections(gated.metadata))
    return result


def tune_route_file(
    gated_file: str | Path,
    data: str | Path = "fashion-mnist",
    split: str = "val",
    part: str | None = None,
    target_accuracy: float | None = None,
    max_drop: float | None = None,
    delta: float | None = None,
    output: str | Path | None = None,
    batch_size: int = 128,
    workers: int = 2,
    device: str | torch.device | None = None,
    progress: ImageProgress | None = None,
    holdout: float | None = None,
    test_images: int | None = None,
    with_thresholds: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Choose the routing width tuned into a gated file: the fewest super-categories each image's
    branches run under (``route_top_k``) within the budget, with the exit gates closed; with
    ``delta``, a width whose budget holds on new images with probability at least ``1 - delta``
    (:func:`nhlcli.gates.guarantee.route_width`; on a test set of ``test_images``, when given).
    ``eval``, ``predict`` and ``export`` then route with it unless told otherwise. ``holdout`` as
    in :func:`tune_file`.

    ``with_thresholds``: choose the width and the exit thresholds together, one budget for both
    against the whole network (:func:`nhlcli.gates.tune.joint_path`; with ``delta``,
    :func:`nhlcli.gates.guarantee.guaranteed_route_and_thresholds`, ``seed`` splitting the images)."""
    from nhlcli.data.loaders import model_holdout
    from nhlcli.gates.guarantee import route_width
    from nhlcli.risk import budget_of, check_delta, check_test_images

    resolve_holdout(holdout, split)
    output = check_tune_output(gated_file, output, data)
    check_target(target_accuracy, max_drop)
    if delta is not None:
        check_delta(delta)
    check_test_images(test_images, delta)
    dev = resolve_device(device)
    gated = load_gated(gated_file, dev)
    if gated.route_problem:
        raise NhlError(gated.route_problem)
    held = model_holdout(gated, split, holdout)
    closed: list[float | None] = [None] * len(gated.exits)
    gated.set_thresholds(closed)
    records = {}
    for width in range(len(gated.tree.level(1)), 0, -1):
        gated.set_route_top_k(width)
        records[width] = record_file(gated, data, split, part, batch_size, workers, dev, progress, held)
    if with_thresholds:
        width, thresholds, guarantee = _route_and_thresholds(
            gated, records, target_accuracy, max_drop, delta, test_images, seed
        )
    else:
        width, guarantee = route_width(records, *budget_of(target_accuracy, max_drop), delta, test_images)
        thresholds = closed
    gated.set_route_top_k(width)
    gated.set_thresholds(thresholds)
    result = {**simulate(gated, records[width], thresholds), "guarantee": guarantee}
    result["full_top1"] = records[max(records)].full_accuracy  # the whole network's, not the routed one's
    images = len(records[width].labels)
    return _keep_tuning(gated, result, output or gated_file, data, split, held, part, images)


def _route_and_thresholds(
    gated: GatedModel, records: dict[int, ExitRecord], target_accuracy: float | None, max_drop: float | None,
    delta: float | None, test_images: int | None, seed: int,
) -> tuple[int, list[float | None], dict[str, Any] | None]:  # fmt: skip
    """The width and thresholds chosen together (see :func:`tune_route_file`)."""
    from nhlcli.gates.guarantee import guaranteed_route_and_thresholds
    from nhlcli.risk import budget_of

    if delta is not None:
        risk, budget = budget_of(target_accuracy, max_drop)
        chosen = guaranteed_route_and_thresholds(gated, records, budget, delta, risk, seed,
                                                 test_images=test_images)  # fmt: skip
        return chosen["route_top_k"], chosen["thresholds"], chosen["guarantee"]
    whole = records[max(records)]
    target = target_from(whole, target_accuracy, max_drop)
    if target > whole.full_accuracy + 1e-12:
        raise NhlError(f"a top-1 of {target:.2%} cannot be reached on this data: the whole network reaches "
                       f"{whole.full_accuracy:.2%}; ask for at most that, or use `max_drop`")  # fmt: skip
    width, thresholds = joint_path(gated, records, target)[-1]
    return width, thresholds, None


def sweep_file(
    gated_file: str | Path,
    data: str | Path = "fashion-mnist",
    split: str = "val",
    part: str | None = None,
    drops: Sequence[float] | None = None,
    route_top_k: int | None = None,
    batch_size: int = 128,
    workers: int = 2,
    device: str | torch.device | None = None,
    progress: ImageProgress | None = None,
    holdout: float | None = None,
) -> list[dict[str, Any]]:
    """The accuracy-GMACs curve of a gated file: thresholds tuned for each allowed accuracy drop.

    ``holdout`` as in :func:`tune_file`: the curve an operating point is chosen from belongs on a
    hold-out of the training images, not on the split the point is then reported on."""
    from nhlcli.data.loaders import model_holdout

    resolve_holdout(holdout, split)
    dev = resolve_device(device)
    gated = load_gated(gated_file, dev)
    if route_top_k is not None:
        gated.set_route_top_k(route_top_k)
    held = model_holdout(gated, split, holdout)
    record = record_file(gated, data, split, part, batch_size, workers, dev, progress, held)
    return sweep(gated, record, *(() if drops is None else (drops,)))


def fit_report(gated: GatedModel, output: str | Path) -> dict[str, Any]:
    """What a gates fit reached (``gated.spec.fit``: loss, images, each gate's stage, features and
    train top-1, the routing gate's), with the gated file and the GMACs an image costs to leave
    at each exit."""
    return {
        **gated.spec.fit,
        "output": str(output),
        "exit_gmacs": [m / 1e9 for m in gated.exit_macs([0.0] * len(gated.exits))],
    }
