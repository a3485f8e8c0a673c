"""Unreadable images left out of training (``skip_bad_images``): find them in batches, name them.

With ``skip_bad_images`` a data set returns, for a file that cannot be decoded, a zero image and
the target ``-(index + 1)`` (:func:`~nhlcli.data.base.bad_target`). That decision happens inside
``__getitem__``, in whichever process loads the sample, so it needs no shared state between
DataLoader workers or DDP ranks: the training loop drops the marked rows from each batch with
:func:`split_bad`, collects the indices, and names the files with :func:`bad_image_names`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from nhlcli.data.errors import DataError

SHOWN_NAMES = 3  # files named in the "nothing could be read" message


def split_bad(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A batch without its placeholder rows, and the sample indices those rows stood for.

    Cheap and a no-op on batches without negative targets, so it may run on every batch. The
    indices are in the index space of the loader's data set (see :func:`bad_image_names`).
    """
    bad = targets < 0
    if not bool(bad.any()):
        return images, targets, []
    keep = ~bad
    return images[keep], targets[keep], (-targets[bad] - 1).tolist()


def _named_dataset(dataset: Any) -> Any:
    """The data set that knows file names: ``Subset`` wrappers pass indices through unchanged."""
    while not hasattr(dataset, "sample_name") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def bad_image_names(dataset: Any, indices: Iterable[int]) -> list[str]:
    """The files behind the sample ``indices`` that :func:`split_bad` returned, once each, in order.

    ``dataset`` is the loader's data set (``loader.dataset``); a :class:`torch.utils.data.Subset`
    around it is looked through, since the sentinel carries the inner data set's index.
    """
    named = _named_dataset(dataset)
    names = [
        named.sample_name(int(i)) if hasattr(named, "sample_name") else f"sample {int(i)}" for i in indices
    ]
    return list(dict.fromkeys(names))


def unreadable_split_error(dataset: Any, indices: Iterable[int]) -> DataError:
    """The error for a split of which no image could be read, naming a few of the files.

    For the training loop to raise when an epoch ends without a single usable image: training
    on nothing but placeholders would only pretend to work.
    """
    names = bad_image_names(dataset, indices)
    split = getattr(dataset, "split", "train")
    shown = ", ".join(names[:SHOWN_NAMES]) + (", ..." if len(names) > SHOWN_NAMES else "")
    where = f" ({len(names)} unreadable: {shown})" if names else ""
    return DataError(
        f"no image of the {split} split could be read{where}; "
        "check that the files are intact images (JPEG, PNG, ...) and replace the broken ones"
    )
