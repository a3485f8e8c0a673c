"""Transforms and DataLoaders for training and evaluation, built with timm's transform factory.

Channels: the transform decides. :func:`build_transform` first converts each PIL image to
``"L"`` (``in_chans=1``) or ``"RGB"`` (``in_chans=3``, grey images replicated), then applies
timm's pipeline, whose ``Normalize`` gets mean/std of the same length (:func:`channel_stats`:
one value is repeated for 3 channels, three values are averaged for 1 channel, as the model's
``input_from_timm`` does). So a grey data set feeds either an ``in_chans=1`` model or a normal
RGB backbone, and RGB folders can feed a grey model.

Reproducibility: the train loader shuffles with a ``torch.Generator`` seeded by ``seed``;
torch derives every worker's python/numpy/torch seeds from it, so a fixed seed gives the same
batches (and the same augmentations) with ``workers >= 1``. With ``workers=0`` augmentation
draws from the process's global RNGs, which the caller seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data import create_transform
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms

from nhlcli.data.datasets import TreeDataset, dataset_for_tree, resolve_holdout, trained_holdout
from nhlcli.data.errors import DataError
from nhlcli.data.folder import VAL_FRACTION
from nhlcli.data.images import to_mode
from nhlcli.taxonomy.tree import Tree

DEFAULT_AUGMENT = "rand-m9-mstd0.5"


def channel_stats(
    mean: Sequence[float], std: Sequence[float], in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std with one value per input channel (repeat one value; average three for grey)."""
    if in_chans not in (1, 3):
        raise DataError(f"images have 1 (grey) or 3 (RGB) channels; in_chans={in_chans} is not supported")

    def fit(values: Sequence[float], what: str) -> tuple[float, ...]:
        values = tuple(float(v) for v in values)
        if len(values) == in_chans:
            return values
        if len(values) == 1:
            return values * in_chans
        if in_chans == 1:
            return (sum(values) / len(values),)
        raise DataError(f"normalisation {what} has {len(values)} values; give 1 or {in_chans}")

    return fit(mean, "mean"), fit(std, "std")


class ConvertMode:
    """Convert a PIL image to ``mode`` ("L" or "RGB"); a no-op when it already is. Other modes go
    through :func:`nhlcli.data.images.to_mode`, as image files do (16-bit scaled, alpha on white)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else to_mode(img, self.mode)

    def __repr__(self) -> str:
        return f"ConvertMode({self.mode!r})"


def build_transform(
    input_size: int,
    *,
    is_training: bool,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int | None = None,
    interpolation: str = "bilinear",
    augment: str | None = DEFAULT_AUGMENT,
    crop_pct: float | None = None,
    scale: tuple[float, float] | None = None,
    hflip: float = 0.5,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised ``(in_chans, input_size, input_size)`` tensor, via timm.

    ``in_chans`` defaults to ``len(mean)``. Training applies timm's random-resized crop, flip and
    the RandAugment config ``augment`` (``None``/``"none"`` for none); evaluation resizes and
    centre-crops by ``crop_pct`` (timm's default 0.875; 1.0 keeps small images whole).
    """
    in_chans = in_chans or len(mean)
    mean_c, std_c = channel_stats(mean, std, in_chans)
    augment = None if augment in (None, "", "none") else augment
    try:
        timm_tf = create_transform(
            input_size,
            is_training=is_training,
            auto_augment=augment if is_training else None,
            interpolation=interpolation,
            mean=mean_c,
            std=std_c,
            crop_pct=crop_pct,
            scale=scale,
            hflip=hflip,
        )
    except (AssertionError, ValueError, KeyError, IndexError) as exc:
        raise DataError(
            f"invalid augmentation or interpolation ({augment!r}, {interpolation!r}): {exc}; "
            f"use a timm RandAugment string such as {DEFAULT_AUGMENT!r} or 'none'"
        ) from exc
    return transforms.Compose([ConvertMode("L" if in_chans == 1 else "RGB"), *timm_tf.transforms])


def _distributed_sampler(dataset: Dataset, shuffle: bool, seed: int) -> DistributedSampler:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise DataError("distributed data loading needs torch.distributed initialised; launch with torchrun")
    return DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int = 64,
    workers: int = 2,
    training: bool = False,
    seed: int = 0,
    distributed: bool = False,
) -> DataLoader:
    """A DataLoader: shuffled, seeded and dropping a ragged last batch when ``training``.

    With ``distributed`` a :class:`DistributedSampler` splits the data between ranks (the caller
    calls ``loader.sampler.set_epoch(epoch)``); for evaluation it pads ranks to equal length.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise DataError(f"the number of data workers must be 0 or more, got {workers}")
    sampler = _distributed_sampler(dataset, training, seed) if distributed else None
    per_rank = len(sampler) if sampler is not None else len(dataset)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=training and sampler is None,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        # a size-1 last batch breaks BatchNorm in training; keep it when it is the only batch
        drop_last=training and per_rank > batch_size,
        pin_memory=torch.cuda.is_available(),
        # training workers start afresh each epoch, seeded from the generator the training loop
        # reseeds per epoch, so that a resumed run augments an epoch as an uninterrupted one does
        persistent_workers=workers > 0 and not training,
    )


def create_loaders(
    spec: str | Path,
    tree: Tree,
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int | None = None,
    interpolation: str = "bilinear",
    crop_pct: float | None = None,
    scale: tuple[float, float] | None = None,
    batch_size: int = 64,
    workers: int = 2,
    augment: str | None = DEFAULT_AUGMENT,
    distributed: bool = False,
    seed: int = 0,
    val_fraction: float = VAL_FRACTION,
    split_seed: int = 0,
    subset: bool = False,
    skip_bad_images: bool = False,
    holdout: float = 0.0,
) -> tuple[DataLoader, DataLoader]:
    """Train and val loaders whose labels are ``tree``'s class indices.

    Images reach the transform in ``"L"`` for ``in_chans=1`` (default ``len(mean)``) and
    ``"RGB"`` otherwise; batches are ``(B, in_chans, input_size, input_size)``.

    ``skip_bad_images`` (both splits): an undecodable file gives a zero image with target
    ``-(index + 1)`` instead of an error; drop those rows with :func:`nhlcli.data.split_bad`
    in the training *and* validation loops. Without it the first such file stops the loop with
    an :class:`~nhlcli.data.errors.UnreadableImageError` naming it. ``holdout``: validate on that
    fraction of the training images instead of the val split (see ``open_dataset``).
    """
    in_chans = in_chans or len(mean)
    mode = "L" if in_chans == 1 else "RGB"
    common = dict(mean=mean, std=std, in_chans=in_chans, interpolation=interpolation, crop_pct=crop_pct)
    train_tf = build_transform(input_size, is_training=True, augment=augment, scale=scale, **common)
    val_tf = build_transform(input_size, is_training=False, **common)
    opts = dict(
        mode=mode,
        image_size=input_size,
        val_fraction=val_fraction,
        split_seed=split_seed,
        subset=subset,
        skip_bad_images=skip_bad_images,
        holdout=holdout,
    )
    train = dataset_for_tree(spec, "train", tree, train_tf, **opts)
    val = dataset_for_tree(spec, "val", tree, val_tf, **opts)
    loader_opts = dict(batch_size=batch_size, workers=workers, seed=seed, distributed=distributed)
    return make_loader(train, training=True, **loader_opts), make_loader(val, training=False, **loader_opts)


def create_eval_loader(
    spec: str | Path,
    tree: Tree,
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    split: str = "val",
    in_chans: int | None = None,
    interpolation: str = "bilinear",
    crop_pct: float | None = None,
    batch_size: int = 64,
    workers: int = 2,
    distributed: bool = False,
    val_fraction: float = VAL_FRACTION,
    split_seed: int = 0,
    subset: bool = False,
    part: str | None = None,
    skip_bad_images: bool = False,
    holdout: float = 0.0,
) -> DataLoader:
    """One split in a fixed order with the evaluation transform (``subset=True`` for experts).

    ``skip_bad_images`` as in :func:`create_loaders` (the sentinel indices then refer to the
    split before ``part``; :func:`nhlcli.data.bad_image_names` on ``loader.dataset`` handles that).

    ``part="i/k"`` keeps the i-th of k fixed, disjoint random parts of the split, so thresholds
    can be tuned on one half of a test set and reported on the other (``"1/2"``, ``"2/2"``).

    ``holdout``: ``val`` is that stratified fraction of the training images and ``train`` the
    rest, as in :func:`create_loaders` (``nhl train --holdout``), so choices made on the hold-out
    never look at the test set.
    """
    in_chans = in_chans or len(mean)
    tf = build_transform(
        input_size,
        is_training=False,
        mean=mean,
        std=std,
        in_chans=in_chans,
        interpolation=interpolation,
        crop_pct=crop_pct,
    )
    dataset: TreeDataset = dataset_for_tree(
        spec,
        split,
        tree,
        tf,
        subset=subset,
        mode="L" if in_chans == 1 else "RGB",
        image_size=input_size,
        val_fraction=val_fraction,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        holdout=holdout,
    )
    if part:
        dataset = take_part(dataset, part)  # type: ignore[assignment]
    return make_loader(dataset, batch_size=batch_size, workers=workers, distributed=distributed)


def take_part(dataset: Dataset, part: str) -> Subset:
    """The ``i``-th of ``k`` disjoint parts (``"i/k"``) of ``dataset``, drawn by a fixed shuffle."""
    try:
        i, k = (int(v) for v in part.split("/"))
    except ValueError:
        raise DataError(f"`part` {part!r}: write i/k, e.g. 1/2 for the first of two halves") from None
    if not 1 <= i <= k:
        raise DataError(f"`part` {part}: i must lie between 1 and k")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return Subset(dataset, sorted(order[i - 1 :: k].tolist()))


def model_loader(
    model: nn.Module,
    data: str | Path,
    split: str = "val",
    batch_size: int = 64,
    workers: int = 2,
    tree: Tree | None = None,
    subset: bool = False,
    part: str | None = None,
    holdout: float = 0.0,
) -> Any:
    """A loader over ``data`` through the model's own evaluation transform, labelled by ``tree``
    (default the model's); the data of an expert, of a grown model (``nhl graft``), or of a model
    trained on some of the data's classes (``nhl train --classes``), is restricted to the model's
    classes. ``holdout``: see
    :func:`create_eval_loader` (:func:`model_holdout` resolves a user's choice against the model)."""
    meta = getattr(model, "metadata", {})
    is_expert = bool(meta.get("expert") or meta.get("graft") or (meta.get("training") or {}).get("classes"))
    inp = model.input_config
    return create_eval_loader(
        data,
        tree or model.tree,
        input_size=inp.size[1],
        mean=inp.mean,
        std=inp.std,
        in_chans=inp.size[0],
        interpolation=inp.interpolation,
        crop_pct=inp.crop_pct,
        split=split,
        batch_size=batch_size,
        workers=workers,
        subset=subset or is_expert,
        part=part,
        holdout=holdout,
    )


def model_holdout(model: nn.Module, split: str, holdout: float | None = None) -> float:
    """The hold-out to take ``split`` of a model's data with: ``holdout`` checked against the one
    the model's file records it was trained without, or that one when ``holdout`` is ``None``
    (see :func:`nhlcli.data.datasets.resolve_holdout`)."""
    return resolve_holdout(holdout, split, trained_holdout(getattr(model, "metadata", None) or {}))
