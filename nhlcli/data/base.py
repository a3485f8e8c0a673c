"""The dataset interface shared by every data source: images, integer labels and class entries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from nhlcli.data.errors import DataError, UnreadableImageError
from nhlcli.taxonomy.classes import ClassEntry

SPLITS = ("train", "val")
PLACEHOLDER_SIDE = 32  # size of the blank image whose transformed shape a placeholder copies


def bad_target(index: int) -> int:
    """The target marking sample ``index`` as unreadable: ``-(index + 1)``, negative so it can
    never be a class, and carrying the index so the file can be named later."""
    return -(int(index) + 1)


class LabeledDataset(Dataset):
    """Images with integer labels in the data's own class order.

    Subclasses set ``classes`` (label order), ``targets`` (one label per sample), ``mode`` (the
    PIL mode handed to the transform: ``"L"`` or ``"RGB"``), ``name`` and ``split``, and
    implement :meth:`load_image` and :meth:`sample_name`. Labels are known without decoding any
    image, so remapping and splitting stay cheap.

    ``skip_bad_images``: a sample whose file cannot be decoded comes back as a zero image of the
    transformed shape with the negative target :func:`bad_target` ``(index)`` instead of raising,
    so one broken file among thousands does not stop training. The decision is made per sample
    inside ``__getitem__``, so it works the same in DataLoader workers and on every DDP rank;
    the training loop drops those rows with :func:`nhlcli.data.bad.split_bad`.
    """

    name: str = ""
    split: str = "train"
    mode: str = "RGB"
    classes: list[ClassEntry]
    targets: list[int]
    transform: Callable[[Image.Image], Any] | None = None
    skip_bad_images: bool = False
    _placeholder: tuple[Any, Any] | None = None  # (transform, its zero output), per process

    def __len__(self) -> int:
        return len(self.targets)

    def load_image(self, index: int) -> Image.Image:
        """The decoded image of sample ``index`` in :attr:`mode`; bad files raise ``DataError``."""
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        """Where sample ``index`` comes from (a file path, or file and position), for messages."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        try:
            img = self.load_image(index)
        except UnreadableImageError:
            if not self.skip_bad_images:
                raise
            return self.placeholder(), bad_target(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def placeholder(self) -> Any:
        """A stand-in for an unreadable sample: zeros shaped like a transformed image.

        The shape comes from running the transform on a blank image once (cached), so it matches
        whatever size, channels and dtype the real samples collate to.
        """
        if self._placeholder is not None and self._placeholder[0] is self.transform:
            return self._placeholder[1].clone()
        blank = Image.new(self.mode, (PLACEHOLDER_SIDE, PLACEHOLDER_SIDE))
        if self.transform is None:
            return blank
        out = self.transform(blank)
        if not isinstance(out, torch.Tensor):
            return out
        self._placeholder = (self.transform, torch.zeros_like(out))
        return self._placeholder[1].clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, split={self.split!r}, samples={len(self)})"


def check_split(split: str) -> str:
    """``"train"`` or ``"val"`` (``"validation"`` accepted); anything else is a user error."""
    if split == "validation":
        return "val"
    if split not in SPLITS:
        raise DataError(f"unknown data split {split!r}; use 'train' or 'val'")
    return split
