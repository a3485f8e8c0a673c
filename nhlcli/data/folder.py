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

The walk (:func:`find_images`): every file with an image extension anywhere below a class folder
belongs to that class. Symlinks are followed, but a folder reached a second time (a symlink loop
such as ``up -> ..``, or two links to one folder) is walked once, so the walk always ends. Names
starting with ``.`` are skipped, as for class folders. A folder named like an image (``x.png/``)
is walked like any folder. An entry named like an image that is not a regular file (a FIFO, a
socket, a device, a dangling link) is never opened: reading it raises the one-line
:class:`~nhlcli.data.errors.UnreadableImageError` that names it, and ``skip_bad_images`` leaves
it out, counted and named, like a broken file. Pixels are read by
:func:`nhlcli.data.images.read_image`, the reader ``nhl predict`` uses too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from timm.data.readers.img_extensions import get_img_extensions
from timm.utils.misc import natural_key

from nhlcli.data.base import LabeledDataset, check_split
from nhlcli.data.errors import DataError
from nhlcli.data.images import read_image
from nhlcli.taxonomy.classes import classes_from_image_folder, image_folder_root
from nhlcli.text import printable

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


def find_images(folder: str | Path) -> list[str]:
    """The entries named like images below ``folder``, in walk order (``os.path.join``-ed).

    Only names are listed (and folders ``stat``-ed), so nothing is opened and nothing can block.
    Iterative, with the ``(device, inode)`` of every folder walked, so no folder is listed twice;
    the folders above ``folder`` count as walked, so a link back up (``up -> ..``) is not followed
    and cannot bring other classes' images in. Hidden names are skipped. An entry named like an
    image that is not a regular file (FIFO, socket, device, dangling link) is listed: reading it
    raises :class:`~nhlcli.data.errors.UnreadableImageError` like a broken file. A folder that
    cannot be listed is a :class:`DataError`.
    """
    extensions = get_img_extensions(as_set=True)
    images: list[str] = []
    walked: set[tuple[int, int]] = set()
    for above in Path(os.path.realpath(folder)).parents:
        try:
            info = os.stat(above)
        except OSError:
            continue
        walked.add((info.st_dev, info.st_ino))
    pending = [str(folder)]
    while pending:
        current = pending.pop()
        try:
            info = os.stat(current)
            if (info.st_dev, info.st_ino) in walked:
                continue
            walked.add((info.st_dev, info.st_ino))
            with os.scandir(current) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            raise DataError(
                f"cannot list the folder {printable(current)} ({exc.strerror or exc}); "
                "make it readable or remove it"
            ) from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks; a loop's ELOOP reads as "not a folder"
            except OSError:
                is_dir = False
            if is_dir:
                pending.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in extensions:
                images.append(entry.path)
    return images


class ImageFolderDataset(LabeledDataset):
    """One split of an ImageFolder, walked by :func:`find_images` and read by
    :func:`~nhlcli.data.images.read_image`.

    A bad file raises :class:`UnreadableImageError` naming it, or with ``skip_bad_images`` gives
    a placeholder sample (see :class:`LabeledDataset`).
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
            from nhlcli.data.registry import dataset_names

            named = " or ".join(repr(name) for name in dataset_names())
            raise DataError(f"data directory {self.root} does not exist; pass {named} or an ImageFolder")
        train_root, val_root = split_folders(self.root)
        self.classes = classes_from_image_folder(self.root)
        class_map = {entry.id: i for i, entry in enumerate(self.classes)}
        train = self._read(train_root)
        counts = np.bincount([t for _, t in train], minlength=len(self.classes))
        empty = [self.classes[i].id for i in np.flatnonzero(counts == 0)]
        if empty:
            shown = ", ".join(str(train_root / c) for c in empty[:5])
            raise DataError(
                f"class folder {shown} has no images ({_extensions()}); add images or remove the folder"
            )
        self.holdout = val_root is None
        if val_root is None:
            targets = np.array([t for _, t in train])
            held = set(holdout_indices(targets, val_fraction, split_seed).tolist())
            samples = [s for i, s in enumerate(train) if (i in held) == (self.split == "val")]
            self.split_root = train_root
        elif self.split == "train":
            self.split_root, samples = train_root, train
        else:
            self._check_val_folders(train_root, val_root, class_map)
            self.split_root, samples = val_root, self._read(val_root)
        if len(samples) == 0:
            raise DataError(
                f"the {self.split} split of {self.root} has no images ({_extensions()}); "
                f"add images to {self.split_root} or give it at least two images per class to hold out"
            )
        self.samples: list[tuple[str, int]] = samples
        self.targets = [t for _, t in self.samples]

    def _read(self, folder: Path) -> list[tuple[str, int]]:
        """(file, label) of every image in the class folders of ``folder``, in timm's order (the
        natural sort of the paths), so hold-outs match those of earlier versions."""
        samples = []
        for label, entry in enumerate(self.classes):
            class_folder = os.path.join(str(folder), entry.id)
            if not os.path.isdir(class_folder):
                continue  # a val folder may lack a class; an empty train class is refused above
            samples += [(path, label) for path in find_images(class_folder)]
        if not samples:
            raise DataError(
                f"{printable(str(folder))} has no images in its class folders ({_extensions()}); "
                "add images to it"
            )
        return sorted(samples, key=lambda sample: natural_key(sample[0]))

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
        return read_image(self.samples[index][0], self.mode)

    def sample_name(self, index: int) -> str:
        return self.samples[index][0]
