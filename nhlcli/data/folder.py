"""ImageFolder data through timm's folder reader: class folders, optional train/val split folders.

Layouts:

* ``DIR/train/<class>/...`` and ``DIR/val/<class>/...`` (or ``validation/``): the folders are
  the splits.
* ``DIR/<class>/...`` (or ``DIR/train/<class>/...`` without a val folder): ``val`` is a
  deterministic stratified hold-out of :data:`VAL_FRACTION` of each class (at least one image
  of every class with two or more), and ``train`` is the rest, so training always has
  validation. The hold-out depends only on the file names and ``split_seed``, not on the
  training seed, so runs with different seeds are evaluated on the same images.

Class order is timm's (natural sort of the class folder names of the train root), which is also
what :func:`nhlcli.taxonomy.classes.classes_from_image_folder` returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from timm.data import ImageDataset
from timm.data.readers.img_extensions import get_img_extensions

from nhlcli.data.base import LabeledDataset, check_split
from nhlcli.data.errors import DataError, unreadable_image_error
from nhlcli.taxonomy.classes import classes_from_image_folder, image_folder_root

VAL_FRACTION = 0.1
VAL_FOLDERS = ("val", "validation")


def split_folders(root: Path) -> tuple[Path, Path | None]:
    """The train folder and the val folder (``None`` when validation is held out of train)."""
    train = image_folder_root(root)
    if train == root:
        return root, None
    for name in VAL_FOLDERS:
        if (root / name).is_dir():
            return train, root / name
    return train, None


def holdout_indices(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions of the held-out samples: a seeded, stratified ``fraction`` of every class.

    Each class is shuffled by its own generator (seeded by ``seed`` and the class label), so
    adding images to one class does not move the hold-out of another.
    """
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must be between 0 and 1, got {fraction}")
    held = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        if len(members) < 2:
            continue  # a lone image trains; the class is then absent from validation
        count = min(max(1, round(len(members) * fraction)), len(members) - 1)
        rng = np.random.default_rng([seed, int(label)])
        held.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)


def _extensions() -> str:
    return ", ".join(get_img_extensions())


class ImageFolderDataset(LabeledDataset):
    """One split of an ImageFolder, read by timm's ``ImageDataset`` folder reader.

    Decoding is done here rather than in timm's ``__getitem__``, which skips unreadable images
    with a warning: a bad file raises :class:`UnreadableImageError` naming it instead, or with
    ``skip_bad_images`` gives a placeholder sample (see :class:`LabeledDataset`).
    """

    def __init__(
        self,
        root: Path,
        split: str,
        transform=None,
        mode: str = "RGB",
        val_fraction: float = VAL_FRACTION,
        split_seed: int = 0,
        skip_bad_images: bool = False,
    ) -> None:
        self.root = Path(root)
        self.skip_bad_images = skip_bad_images
        self.split = check_split(split)
        self.name = str(self.root)
        self.mode = mode
        self.transform = transform
        if not self.root.is_dir():
            raise DataError(
                f"data directory {self.root} does not exist; pass 'fashion-mnist' or an ImageFolder"
            )
        train_root, val_root = split_folders(self.root)
        self.classes = classes_from_image_folder(self.root)
        class_map = {entry.id: i for i, entry in enumerate(self.classes)}
        train = self._read(train_root, class_map)
        counts = np.bincount([t for _, t in train.reader.samples], minlength=len(self.classes))
        empty = [self.classes[i].id for i in np.flatnonzero(counts == 0)]
        if empty:
            shown = ", ".join(str(train_root / c) for c in empty[:5])
            raise DataError(
                f"class folder {shown} has no images ({_extensions()}); add images or remove the folder"
            )
        self.holdout = val_root is None
        if val_root is None:
            samples = list(train.reader.samples)
            targets = np.array([t for _, t in samples])
            held = set(holdout_indices(targets, val_fraction, split_seed).tolist())
            keep = [s for i, s in enumerate(samples) if (i in held) == (self.split == "val")]
            self.split_root = train_root
            train.reader.samples = keep
            self.dataset = train
        elif self.split == "train":
            self.split_root, self.dataset = train_root, train
        else:
            self._check_val_folders(train_root, val_root, class_map)
            self.split_root, self.dataset = val_root, self._read(val_root, class_map)
        if len(self.dataset) == 0:
            raise DataError(
                f"the {self.split} split of {self.root} has no images ({_extensions()}); "
                f"add images to {self.split_root} or give it at least two images per class to hold out"
            )
        self.samples: list[tuple[str, int]] = list(self.dataset.reader.samples)
        self.targets = [t for _, t in self.samples]

    def _read(self, folder: Path, class_map: dict[str, int]) -> ImageDataset:
        try:
            return ImageDataset(str(folder), class_map=class_map, input_img_mode=self.mode)
        except RuntimeError as exc:  # timm's "Found 0 images in subfolders of ..."
            raise DataError(
                f"{folder} has no images in its class folders ({_extensions()}); add images to it"
            ) from exc

    def _check_val_folders(self, train_root: Path, val_root: Path, class_map: dict[str, int]) -> None:
        extra = sorted(
            p.name
            for p in val_root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in class_map
        )
        if extra:
            raise DataError(
                f"{val_root} has class folders that {train_root} lacks: {', '.join(extra[:8])}; "
                "train and val must have the same classes"
            )

    def load_image(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                return img.convert(self.mode)  # convert decodes, so broken pixel data fails here
        except Exception as exc:  # PIL raises many types for broken files; all mean "this file"
            raise unreadable_image_error(path, exc) from exc

    def sample_name(self, index: int) -> str:
        return self.samples[index][0]
