"""Classify image files with a model (or an expert): the library behind ``nhl predict``.

Every image goes through the model's own evaluation transform (size, crop and normalisation
recorded in its file), so a prediction here is what ``nhl eval`` would have computed for the
same file. Probabilities are the softmax over the model's classes; for an expert that is its own
classes (paper 003, eq. 3), for a :class:`~nhlcli.evaluation.ClassSubset` the kept ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from nhlcli.errors import NhlError
from nhlcli.model.gated import GatedModel

# Pillow modes of grey images; everything else is turned into RGB.
_GREY_MODES = {"1", "L", "LA", "La", "I", "F"}


def _is_16bit(mode: str) -> bool:
    return mode.startswith("I;16")


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """High bit-depth grey (16-bit, 32-bit integer or float) scaled into 0..255, not clipped.

    Pillow's own ``convert("L")`` clips such images, which turns most 16-bit pictures white.
    """
    values = np.asarray(img, dtype=np.float64)
    if _is_16bit(img.mode):
        values = values / 257.0
    elif img.mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
        values = values * 255.0  # float images in 0..1
    elif img.mode == "I" and values.size and values.max() > 255:
        values = values / (257.0 if values.max() <= 65535 else values.max() / 255.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def to_model_mode(img: Image.Image) -> Image.Image:
    """A decoded image of any Pillow mode as 8-bit ``"L"`` (grey modes) or ``"RGB"`` (the rest).

    Alpha is dropped as the training data loader drops it; palette images with transparency go
    through RGBA first so Pillow does not warn.
    """
    if _is_16bit(img.mode) or img.mode in ("I", "F"):
        return _to_8bit_grey(img)
    if img.mode in _GREY_MODES:
        return img if img.mode == "L" else img.convert("L")
    if img.mode in ("P", "PA") and (img.mode == "PA" or "transparency" in img.info):
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open any image file Pillow reads (any size or mode, EXIF rotation applied) as L or RGB.

    Missing, unreadable or undecodable files raise a one-line :class:`NhlError`.
    """
    path = Path(path)
    if not path.exists():
        raise NhlError(f"image {path} does not exist; check the path")
    if path.is_dir():
        raise NhlError(f"{path} is a folder; give image files (e.g. {path}/*.jpg)")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so broken pixel data fails here and not in the transform
            img = ImageOps.exif_transpose(img)  # a decoded copy, upright
            return to_model_mode(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise NhlError(
            f"cannot read {path} as an image ({reason}); give a file Pillow can open (PNG, JPEG, ...)"
        ) from exc


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
    for path in paths:  # fail on a typo before any work is done
        if not path.exists():
            raise NhlError(f"image {path} does not exist; check the path")
    transform = eval_transform(model)
    device = _model_device(model)
    names = [tree.node(c).name for c in tree.classes]
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            batch = torch.stack([transform(load_image(p)) for p in chunk]).to(device)
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
