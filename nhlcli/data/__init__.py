"""Data for training and evaluating classifiers whose logits follow a category tree's classes.

``open_dataset`` reads a split of a registered data set (``registry.py``: Fashion-MNIST, emoji;
:func:`register_dataset` adds one) or an ImageFolder in the data's own label order;
``dataset_for_tree`` relabels it into ``tree.classes`` order; ``create_loaders`` builds the
train/val DataLoaders with timm's transforms. Every user-facing problem is a one-line
:class:`DataError` (an :class:`~nhlcli.errors.NhlError`), also from DataLoader workers.
Every image file is read by :func:`read_image` (``images.py``), the reader ``nhl predict`` uses
too, so a file gives the same pixels everywhere. ``skip_bad_images`` turns undecodable files
into placeholder rows that :func:`split_bad` drops and :func:`bad_image_names` names;
:func:`default_workers` and :func:`default_augmentation` choose defaults from the machine and
the data.
"""

from nhlcli.data.bad import bad_image_names, split_bad, unreadable_split_error
from nhlcli.data.base import SPLITS, LabeledDataset, bad_target
from nhlcli.data.datasets import (
    TreeDataset,
    dataset_for_tree,
    open_dataset,
    resolve_holdout,
    split_name,
    trained_holdout,
    tree_leaves,
)
from nhlcli.data.defaults import (
    AugmentChoice,
    default_augmentation,
    default_workers,
    training_image_count,
    usable_cores,
)
from nhlcli.data.errors import DataError, UnreadableImageError, unreadable_image_message, unwrap_worker_error
from nhlcli.data.fashion_mnist import FashionMNISTDataset
from nhlcli.data.folder import VAL_FRACTION, ImageFolderDataset, find_images, holdout_indices
from nhlcli.data.images import MAX_IMAGE_PIXELS, read_image
from nhlcli.data.loaders import (
    DEFAULT_AUGMENT,
    build_transform,
    channel_stats,
    create_eval_loader,
    create_loaders,
    make_loader,
    model_holdout,
    model_loader,
)
from nhlcli.data.registry import (
    DATASETS,
    DEFAULT_DATASET,
    DatasetSpec,
    DemoTask,
    dataset_names,
    dataset_spec,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "DatasetSpec",
    "DemoTask",
    "dataset_names",
    "dataset_spec",
    "register_dataset",
    "DEFAULT_AUGMENT",
    "MAX_IMAGE_PIXELS",
    "SPLITS",
    "VAL_FRACTION",
    "AugmentChoice",
    "DataError",
    "FashionMNISTDataset",
    "ImageFolderDataset",
    "LabeledDataset",
    "TreeDataset",
    "UnreadableImageError",
    "bad_image_names",
    "bad_target",
    "build_transform",
    "channel_stats",
    "create_eval_loader",
    "create_loaders",
    "model_holdout",
    "model_loader",
    "dataset_for_tree",
    "find_images",
    "default_augmentation",
    "default_workers",
    "holdout_indices",
    "make_loader",
    "open_dataset",
    "read_image",
    "resolve_holdout",
    "split_name",
    "split_bad",
    "trained_holdout",
    "training_image_count",
    "tree_leaves",
    "unreadable_image_message",
    "unreadable_split_error",
    "unwrap_worker_error",
    "usable_cores",
]
