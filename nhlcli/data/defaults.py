"""Defaults that depend on the machine and the data: loader workers and the augmentation recipe.

Both are starting points for ``nhl train`` when the user does not choose; the choice is
printed so it can be overridden (``--workers``, ``--augment``, ``--crop-scale``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nhlcli.data.datasets import open_dataset
from nhlcli.data.errors import DataError
from nhlcli.data.folder import VAL_FRACTION
from nhlcli.data.registry import dataset_spec

MAX_WORKERS = 8  # beyond this, JPEG decoding rarely limits a single GPU and memory grows per worker
IMAGENET_AUGMENT = "rand-m9-mstd0.5"
IMAGENET_CROP_SCALE = (0.08, 1.0)
SMALL_INPUT = 64  # at most this side: CIFAR/Fashion-MNIST-like images
LARGE_INPUT = 160  # at least this side: ImageNet-like images
MANY_IMAGES = 100_000  # ImageNet-scale training sets; fewer images get a milder recipe


def usable_cores() -> int:
    """CPU cores this process may use, shared among the DDP ranks torchrun started on this machine.

    ``os.sched_getaffinity`` respects ``taskset`` and container CPU sets, where ``os.cpu_count``
    reports the whole machine; ``LOCAL_WORLD_SIZE`` is how many ranks share those cores.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        ranks = 1
    return max(1, cores // ranks)


def default_workers(data: str | Path, cores: int | None = None) -> int:
    """DataLoader worker processes for ``data``, given ``cores`` (default :func:`usable_cores`).

    Why not a fixed 2: a worker only pays off when decoding runs beside the training step on
    cores of its own. Data held in memory (Fashion-MNIST; its spec says ``in_memory``) has
    nothing to decode, so 0. Image
    folders spend their time decoding JPEGs: one core stays with the main process and the rest,
    up to :data:`MAX_WORKERS`, decode. On 2 cores or fewer the worker would compete with the
    training step itself (measured on 2 cores: 659 img/s with 0 workers against 569 with 2), so 0.
    """
    if dataset_spec(data).in_memory:
        return 0
    cores = usable_cores() if cores is None else cores
    if cores <= 2:
        return 0
    return min(MAX_WORKERS, cores - 1)


@dataclass(frozen=True)
class AugmentChoice:
    """A training augmentation recipe and a sentence saying why it was picked.

    ``augment`` is a timm RandAugment string, or ``None`` for none; ``crop_scale`` the area range
    of the random-resized crop.
    """

    augment: str | None
    crop_scale: tuple[float, float]
    reason: str


def _scale(scale: tuple[float, float]) -> str:
    return f"{scale[0]:g}-{scale[1]:g}"


def default_augmentation(input_size: int, num_train_images: int) -> AugmentChoice:
    """The augmentation for ``input_size`` px inputs and ``num_train_images`` training images.

    ImageNet's recipe (RandAugment m9, crops of 8-100 % of the area) suits ImageNet: large
    images and over a hundred thousand of them. On small images a crop of 8 % is a few pixels
    and RandAugment's distortions erase what the class is: on a real 32 px data set 10 epochs
    reached 86 % (flat) and 90 % (NHL) with it, 98-99 % without. So small inputs get no
    RandAugment and a mild crop; mid-sized inputs, and large ones with fewer images (usually
    fine-tuning, which needs fewer epochs and less regularisation), get milder settings between.
    """
    if input_size < 1:
        raise DataError(f"the input size must be at least 1 pixel, got {input_size}")
    if num_train_images < 0:
        raise DataError(f"the number of training images cannot be negative, got {num_train_images}")
    if input_size <= SMALL_INPUT:
        scale = (0.8, 1.0)
        return AugmentChoice(
            None, scale, f"small images ({input_size} px): no RandAugment, crop scale {_scale(scale)}"
        )
    if input_size < LARGE_INPUT:
        augment, scale = "rand-m5-mstd0.5", (0.35, 1.0)
        why = f"mid-sized images ({input_size} px)"
        return AugmentChoice(
            augment, scale, f"{why}: milder RandAugment {augment}, crop scale {_scale(scale)}"
        )
    if num_train_images >= MANY_IMAGES:
        why = f"ImageNet-sized images ({input_size} px), {num_train_images} training images"
        return AugmentChoice(
            IMAGENET_AUGMENT,
            IMAGENET_CROP_SCALE,
            f"{why}: ImageNet's RandAugment {IMAGENET_AUGMENT}, crop scale {_scale(IMAGENET_CROP_SCALE)}",
        )
    augment, scale = "rand-m7-mstd0.5", (0.25, 1.0)
    why = f"large images ({input_size} px) but only {num_train_images} training images"
    return AugmentChoice(augment, scale, f"{why}: milder RandAugment {augment}, crop scale {_scale(scale)}")


def training_image_count(data: str | Path, *, val_fraction: float = VAL_FRACTION, split_seed: int = 0) -> int:
    """Images in ``data``'s train split (after any val hold-out), without decoding any image.

    Costs what the train loader's set-up costs anyway: one scan of an image folder's file
    names, or reading Fashion-MNIST's files (cached in the process, so the loaders reuse it).
    Bad data raises the same one-line errors as the loaders would.
    """
    return len(open_dataset(data, "train", val_fraction=val_fraction, split_seed=split_seed))
