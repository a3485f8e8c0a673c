"""Data for training and evaluating classifiers whose logits follow a category tree's classes.

``open_dataset`` reads a split of Fashion-MNIST or an ImageFolder in the data's own label order;
``dataset_for_tree`` relabels it into ``tree.classes`` order; ``create_loaders`` builds the
train/val DataLoaders with timm's transforms. Every user-facing problem is a one-line
:class:`DataError` (an :class:`~nhlcli.errors.NhlError`), also from DataLoader workers.
"""

from nhlcli.data.base import SPLITS, LabeledDataset
from nhlcli.data.datasets import BUILTIN, TreeDataset, dataset_for_tree, open_dataset, tree_leaves
from nhlcli.data.errors import DataError, unwrap_worker_error
from nhlcli.data.fashion_mnist import FashionMNISTDataset
from nhlcli.data.folder import VAL_FRACTION, ImageFolderDataset, holdout_indices
from nhlcli.data.loaders import (
    DEFAULT_AUGMENT,
    build_transform,
    channel_stats,
    create_eval_loader,
    create_loaders,
    make_loader,
)

__all__ = [
    "BUILTIN",
    "DEFAULT_AUGMENT",
    "SPLITS",
    "VAL_FRACTION",
    "DataError",
    "FashionMNISTDataset",
    "ImageFolderDataset",
    "LabeledDataset",
    "TreeDataset",
    "build_transform",
    "channel_stats",
    "create_eval_loader",
    "create_loaders",
    "dataset_for_tree",
    "holdout_indices",
    "make_loader",
    "open_dataset",
    "tree_leaves",
    "unwrap_worker_error",
]
