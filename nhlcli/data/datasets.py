"""Open a data set by name or folder, and relabel it into a category tree's class order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from nhlcli.data.base import LabeledDataset, bad_target, check_split
from nhlcli.data.errors import DataError
from nhlcli.data.folder import VAL_FRACTION, ImageFolderDataset, holdout_indices
from nhlcli.data.registry import dataset_names, dataset_spec, open_registered, registered_dataset
from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.match import match_classes
from nhlcli.taxonomy.tree import Tree


def split_name(data: str | Path, split: str, holdout: float = 0.0) -> str:
    """The split as reports should name it: the data set's spec says what its splits are
    (Fashion-MNIST has no validation set, its ``val`` is the 10,000-image test set, and emoji's
    ``val`` is its fixed test set, so reports say ``test`` there rather than pass it off as
    validation); with a ``holdout`` it is that hold-out, and ``train`` the training images less it."""
    if holdout and split in ("val", "validation"):
        return f"hold-out ({holdout:.0%} of train)"
    if holdout and split == "train":
        return f"train less the hold-out ({holdout:.0%})"
    return dataset_spec(data).split_report_name(split)


def trained_holdout(meta: Mapping[str, Any]) -> float:
    """The hold-out a model file records it was trained without (``nhl train --holdout``; 0 for
    none, and for files without a training record: experts cut by hand, gated files keep it)."""
    value = (meta.get("training") or {}).get("holdout") or 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise NhlError(
            f"the model file records a training hold-out of {value!r}, not a fraction in [0, 1); "
            "give `holdout` yourself"
        )
    return float(value)


def resolve_holdout(holdout: float | None, split: str, trained: float = 0.0) -> float:
    """The hold-out to take ``split`` of a model's data with (see :func:`open_dataset`).

    ``None``: the one the model was trained with (``trained``, from :func:`trained_holdout`), so
    ``train`` is the images it learned from and ``val`` the hold-out it never saw; ``0``: none,
    the data's own splits (Fashion-MNIST's ``val`` is its test set). A fraction in (0, 1): that
    stratified share of the training images (split seed 0, as ``nhl train --holdout``) is
    ``val`` and the rest ``train``. A ``val`` hold-out other than a non-zero ``trained`` is
    refused: it would hold images the model learned from.
    """
    if holdout is None:
        return trained
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise NhlError(
            f"{holdout}: give the fraction of the training images to hold out, in (0, 1) "
            "(0: no hold-out, the data's own splits)",
            "holdout",
        )
    if holdout and split not in ("train", "val", "validation"):
        raise NhlError(
            f"{split!r}: with `holdout` the training images split into train (the rest) and val "
            "(the hold-out); use one of those",
            "split",
        )
    if holdout and trained and holdout != trained and split != "train":
        raise NhlError(
            f"{holdout:g} is not the hold-out the model was trained without ({trained:g}): that val "
            f"split would hold images the model learned from; give {trained:g} or leave it out",
            "holdout",
        )
    return float(holdout)


class HeldOutSplit(LabeledDataset):
    """Some samples of a data set (a hold-out carved from its training images, or the rest)."""

    def __init__(self, base: LabeledDataset, indices: np.ndarray, split: str) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.targets = [base.targets[i] for i in self.indices]
        self.classes, self.name, self.mode, self.split = base.classes, base.name, base.mode, split
        self.transform = base.transform
        self.skip_bad_images = base.skip_bad_images

    def load_image(self, index: int) -> Any:
        return self.base.load_image(self.indices[index])

    def sample_name(self, index: int) -> str:
        return self.base.sample_name(self.indices[index])


def open_dataset(
    spec: str | Path,
    split: str,
    transform: Callable[[Any], Any] | None = None,
    *,
    mode: str | None = None,
    val_fraction: float = VAL_FRACTION,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    image_size: int | None = None,
    holdout: float = 0.0,
) -> LabeledDataset:
    """One split (``"train"`` or ``"val"``) of a registered data set (:mod:`nhlcli.data.registry`)
    or an ImageFolder directory.

    ``mode`` is the PIL mode handed to ``transform``: ``None`` keeps the data's own ("L" for
    Fashion-MNIST, "RGB" for folders); ``"L"`` or ``"RGB"`` convert. ``val_fraction`` and
    ``split_seed`` only matter for folders without a val folder (see :mod:`nhlcli.data.folder`).
    ``skip_bad_images``: undecodable files give placeholder samples instead of an error (see
    :class:`~nhlcli.data.base.LabeledDataset`). ``image_size``: the side of the images a data set
    that draws them makes (emoji; default 32), usually the model's input size. ``holdout``: a
    stratified fraction of the training images (seeded by ``split_seed``) becomes ``val`` and the
    rest ``train``, so a recipe can be chosen without looking at the test set.
    """
    split = check_split(split)
    if holdout:
        if not 0 < holdout < 1:
            raise DataError(f"the hold-out must be a fraction between 0 and 1, got {holdout}")
        base = open_dataset(
            spec, "train", transform, mode=mode, val_fraction=val_fraction, split_seed=split_seed,
            skip_bad_images=skip_bad_images, image_size=image_size,
        )  # fmt: skip
        held = holdout_indices(np.asarray(base.targets), holdout, split_seed)
        keep = held if split == "val" else np.setdiff1d(np.arange(len(base)), held)
        return HeldOutSplit(base, keep, split)
    if mode not in (None, "L", "RGB"):
        raise DataError(f"image mode {mode!r} is not supported; use 'L' (grey) or 'RGB'")
    registered = registered_dataset(spec)
    if registered is not None:
        dataset = open_registered(registered, split, transform, mode, image_size)
        dataset.skip_bad_images = skip_bad_images  # most never fail to decode; kept for symmetry
        return dataset
    path = Path(spec)
    if not path.is_dir():
        what = "is a file, not a directory" if path.is_file() else "does not exist"
        raise DataError(
            f"data {str(spec)!r} {what}; pass {' or '.join(repr(b) for b in dataset_names())} or an "
            "ImageFolder directory (one folder of images per class)"
        )
    return ImageFolderDataset(
        path,
        split,
        transform=transform,
        mode=mode or "RGB",
        val_fraction=val_fraction,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
    )


def tree_leaves(tree: Tree, entries: Sequence[ClassEntry], subset: bool = False) -> list[str | None]:
    """The tree class matched to each data class, ``None`` for data classes left out (``subset``).

    Exact matching (the default) demands a one-to-one match. With ``subset`` data classes that
    are not in the tree are dropped, but every tree class must still be in the data.
    """
    if not subset:
        return list(match_classes(tree, entries, exact=True))
    leaves: list[str | None] = []
    for entry in entries:
        try:
            leaves.append(match_classes(tree, [entry], exact=False)[0])
        except NhlError:
            leaves.append(None)
    kept = [e for e, leaf in zip(entries, leaves, strict=True) if leaf is not None]
    if not kept:
        shown = ", ".join(e.id for e in entries[:8])
        raise DataError(
            f"none of the data's classes ({shown}) is in the tree; use the tree or expert built for this data"
        )
    match_classes(tree, kept, exact=True)  # every tree class present, no two data classes per leaf
    return leaves


class TreeDataset(Dataset):
    """A labelled data set whose labels are a tree's class indices (``tree.classes`` order).

    Samples of data classes outside the tree (``subset``) are left out. ``classes`` lists the
    data's class entry for each tree class, in tree order. An unreadable sample skipped by the
    base data set gets the negative target ``bad_target(index)`` in *this* data set's indices,
    so :meth:`sample_name` names it.
    """

    def __init__(self, base: LabeledDataset, tree: Tree, subset: bool = False) -> None:
        self.base = base
        self.tree = tree
        leaves = tree_leaves(tree, base.classes, subset=subset)
        label_map = np.full(len(base.classes), -1, np.int64)
        by_leaf: dict[str, ClassEntry] = {}
        for k, leaf in enumerate(leaves):
            if leaf is not None:
                label_map[k] = tree.class_index(leaf)
                by_leaf[leaf] = base.classes[k]
        self.classes: list[ClassEntry] = [by_leaf[c] for c in tree.classes]
        mapped = label_map[np.asarray(base.targets, np.int64)]
        self.indices = np.flatnonzero(mapped >= 0)
        self.targets: list[int] = mapped[self.indices].tolist()
        if not self.targets:
            raise DataError(
                f"the {base.split} split of {base.name} has no images of the tree's classes; "
                "check that the data and the tree belong together"
            )

    @property
    def transform(self) -> Callable[[Any], Any] | None:
        return self.base.transform

    @transform.setter
    def transform(self, value: Callable[[Any], Any] | None) -> None:
        self.base.transform = value

    @property
    def split(self) -> str:
        return self.base.split

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, target = self.base[int(self.indices[index])]
        return img, (bad_target(index) if target < 0 else self.targets[index])

    def sample_name(self, index: int) -> str:
        return self.base.sample_name(int(self.indices[index]))

    def __repr__(self) -> str:
        return f"TreeDataset({self.base!r}, tree={self.tree.name!r}, samples={len(self)})"


def dataset_for_tree(
    spec: str | Path,
    split: str,
    tree: Tree,
    transform: Callable[[Any], Any] | None = None,
    subset: bool = False,
    **open_kwargs: Any,
) -> TreeDataset:
    """A split labelled by ``tree``'s class indices, ready for a model with the tree's logits.

    ``subset=True`` is for an expert that covers only some classes: data classes outside the
    tree are dropped, and tree classes the data lacks are an error. ``open_kwargs`` go to
    :func:`open_dataset` (``mode``, ``val_fraction``, ``split_seed``, ``skip_bad_images``).
    """
    return TreeDataset(open_dataset(spec, split, transform, **open_kwargs), tree, subset=subset)
