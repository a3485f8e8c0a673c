"""Classify image files with a model (or an expert): the library behind ``nhl predict``.

Every image is read by :func:`nhlcli.data.images.read_image`, the reader of the training and
evaluation data, and goes through the model's own evaluation transform (size, crop and
normalisation recorded in its file), so a prediction here is what ``nhl eval`` would have
computed for the same file. Probabilities are the softmax over the model's classes; for an
expert that is its own classes (paper 003, eq. 3), for a
:class:`~nhlcli.evaluation.ClassSubset` the kept ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from nhlcli.data.images import image_file_problem, read_image
from nhlcli.errors import NhlError
from nhlcli.model.gated import GatedModel
from nhlcli.text import printable

PREDICT_HINT = "give image files Pillow can open (PNG, JPEG, ...)"


def check_image_path(path: Path) -> None:
    """Refuse a path that cannot be an image file (missing, a folder, a FIFO, a device) before any
    image is decoded; only ``stat`` is used, so a FIFO or device is never opened."""
    problem, shown = image_file_problem(path), printable(str(path))
    if problem == "does not exist":
        raise NhlError(f"image {shown} does not exist; check the path")
    if problem is not None and path.is_dir():
        raise NhlError(f"{shown} is a folder; give image files (e.g. {shown}/*.jpg)")
    if problem is not None:
        raise NhlError(f"image {shown} {problem}; {PREDICT_HINT}")


def load_image(path: str | Path, mode: str | None = None) -> Image.Image:
    """An image file as the models see it: :func:`nhlcli.data.images.read_image`, the reader of the
    training and evaluation data too (``mode`` ``"L"``/``"RGB"``; ``None``: grey files "L", the
    rest "RGB"). Any problem is a one-line :class:`NhlError` naming the file.
    """
    path = Path(path)
    check_image_path(path)
    return read_image(path, mode, hint=PREDICT_HINT)


def eval_transform(model: nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """The model's own evaluation transform (resize, centre crop, normalise) from its input config."""
    from nhlcli.data.loaders import build_transform

    inp = model.input_config
    return build_transform(
        inp.size[1],
        is_training=False,
        mean=inp.mean,
        std=inp.std,
        in_chans=inp.size[0],
        interpolation=inp.interpolation,
        crop_pct=inp.crop_pct,
    )


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def check_top_k(top_k: int, num_classes: int) -> int:
    """``top_k`` clipped to the number of classes; below 1 is an error."""
    if top_k < 1:
        raise NhlError(f"{top_k}: ask for at least 1 class", "top_k")
    return min(top_k, num_classes)


def predict_images(
    model: nn.Module,
    paths: Sequence[str | Path],
    top_k: int = 5,
    attention: Mapping[int, torch.Tensor] | None = None,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """The ``top_k`` most probable classes of each image, most probable first.

    ``model`` is anything with ``.tree``, ``.input_config`` and ``forward(x, attention)``: a
    loaded model, an expert, or a :class:`~nhlcli.evaluation.ClassSubset`. ``attention`` is the
    per-level mapping of :func:`nhlcli.model.attention.class_attention` (NHL models only).
    Returns one ``{"file", "top": [{"id", "name", "probability"}, ...]}`` per path, in order. A
    gated model (``nhl gates``) adds each image's ``exit`` and ``gmacs``; an image that left at a
    hinge gate gets the softmax of its margins, a ranking rather than a calibrated probability.
    """
    if batch_size < 1:
        raise NhlError(f"must be at least 1, got {batch_size}", "batch_size")
    tree = model.tree
    k = check_top_k(top_k, len(tree.classes))
    paths = [Path(p) for p in paths]
    for path in paths:  # fail on a typo, a folder or a FIFO before any work is done
        check_image_path(path)
    transform = eval_transform(model)
    mode = "L" if model.input_config.size[0] == 1 else "RGB"
    device = _model_device(model)
    names = [tree.node(c).name for c in tree.classes]
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            batch = torch.stack([transform(load_image(p, mode)) for p in chunk]).to(device)
            gated = None
            with torch.no_grad():
                if isinstance(model, GatedModel):  # each image stops at its exit
                    gated = model.run(batch)
                    logits = gated.logits
                else:
                    logits = model(batch, attention) if attention else model(batch)
            probs = logits.float().softmax(dim=1).cpu()
            values, indices = probs.topk(k, dim=1)
            for j, (path, row_p, row_i) in enumerate(
                zip(chunk, values.tolist(), indices.tolist(), strict=True)
            ):
                top = [
                    {"id": tree.classes[i], "name": names[i], "probability": p}
                    for p, i in zip(row_p, row_i, strict=True)
                ]
                result: dict[str, Any] = {"file": str(path), "top": top}
                if gated is not None:
                    result["exit"] = model.exit_names()[int(gated.exits[j])]
                    result["gmacs"] = float(gated.macs[j]) / 1e9
                results.append(result)
    finally:
        model.train(was_training)
    return results
