"""The dataset interface shared by every data source: images, integer labels and class entries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from nhlcli.data.errors import DataError
from nhlcli.taxonomy.classes import ClassEntry

SPLITS = ("train", "val")


class LabeledDataset(Dataset):
    """Images with integer labels in the data's own class order.

    Subclasses set ``classes`` (label order), ``targets`` (one label per sample), ``mode`` (the
    PIL mode handed to the transform: ``"L"`` or ``"RGB"``), ``name`` and ``split``, and
    implement :meth:`load_image` and :meth:`sample_name`. Labels are known without decoding any
    image, so remapping and splitting stay cheap.
    """

    name: str = ""
    split: str = "train"
    mode: str = "RGB"
    classes: list[ClassEntry]
    targets: list[int]
    transform: Callable[[Image.Image], Any] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def load_image(self, index: int) -> Image.Image:
        """The decoded image of sample ``index`` in :attr:`mode`; bad files raise ``DataError``."""
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        """Where sample ``index`` comes from (a file path, or file and position), for messages."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, split={self.split!r}, samples={len(self)})"


def check_split(split: str) -> str:
    """``"train"`` or ``"val"`` (``"validation"`` accepted); anything else is a user error."""
    if split == "validation":
        return "val"
    if split not in SPLITS:
        raise DataError(f"unknown data split {split!r}; use 'train' or 'val'")
    return split
