"""Data sets by name: one :class:`DatasetSpec` per built-in data set, so that adding one is a
module (a :class:`~nhlcli.data.base.LabeledDataset`) and one entry here (or a call to
:func:`register_dataset`).

Everything that depends on which data set a run uses reads its spec: the channels and input
size a model gets by default, the tree ``nhl train`` takes when none is given, what reports call
the splits, whether loader workers pay off, and the task ``nhl demo`` runs on it. An image
folder is not registered: :func:`dataset_spec` derives its spec (RGB, the backbone's input
size, no default tree, a real validation split).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhlcli.data.base import LabeledDataset, check_split
from nhlcli.data.emoji import DEFAULT_SIZE as EMOJI_SIZE
from nhlcli.data.emoji import NAME as EMOJI
from nhlcli.data.emoji import EmojiDataset
from nhlcli.data.fashion_mnist import NAME as FASHION_MNIST
from nhlcli.data.fashion_mnist import FashionMNISTDataset
from nhlcli.errors import NhlError

# How a registered data set opens one split: ``opener(split, transform=..., mode=..., size=...)``.
# ``mode`` is the PIL mode the transform gets ("L" or "RGB"); ``size`` the side of the images a
# data set that draws them makes (the model's input size; data read from files ignores it).
Opener = Callable[..., LabeledDataset]


@dataclass(frozen=True)
class DemoTask:
    """A data set's ``nhl demo``: what it trains on, which expert it cuts, which test images it keeps.

    ``train_classes`` cuts the data's tree to a part that trains well within the budget (the
    emoji demo trains on one Unicode group); ``sample_images`` maps a PNG file name to the class
    whose first test image it holds. ``tree`` builds the demo's tree and says where it came from;
    without one the demo takes the data set's default tree, cut to ``train_classes``, and
    ``tree_about`` says what that tree is.
    """

    title: str
    expert_name: str
    expert_classes: tuple[str, ...]
    model_file: str
    expert_file: str
    max_epochs: int
    workdir: str
    sample_images: dict[str, str]
    train_classes: tuple[str, ...] | None = None
    tree: Callable[[], tuple[Any, str]] | None = None
    tree_about: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """What nhl needs to know about one data set, beyond its images.

    ``mode``: the PIL mode its images come in ("L": grey, so models get 1 input channel by
    default). ``input_size``: the default image side (``None``: the backbone's). ``default_tree``:
    the tree (a shipped name or file) a run takes when none is given. ``report_names``: what
    reports call a split (``{"val": "test"}`` where the val split is the data's test set, so no
    report passes it off as validation). ``in_memory``: nothing to decode, so loader workers do
    not pay off. ``open`` is ``None`` only for an image folder, which :func:`open_dataset`
    reads with its own split options.
    """

    name: str
    open: Opener | None
    mode: str = "RGB"
    input_size: int | None = None
    default_tree: str | None = None
    report_names: Mapping[str, str] = field(default_factory=dict)
    in_memory: bool = False
    demo: DemoTask | None = None

    @property
    def in_chans(self) -> int:
        """The input channels a model for this data gets unless told otherwise."""
        return 1 if self.mode == "L" else 3

    def split_report_name(self, split: str) -> str:
        """What reports call ``split`` (``"val"`` may be the data's test set)."""
        split = "val" if split == "validation" else split
        return self.report_names.get(split, split)


def _open_fashion_mnist(split: str, transform: Any = None, mode: str = "L", size: int | None = None) -> Any:
    return FashionMNISTDataset(split, transform=transform, mode=mode)


def _fashion_mnist_demo_tree() -> tuple[Any, str]:
    """The demo's tree built from WordNet, or the shipped copy where WordNet is not installed."""
    from nhlcli.taxonomy import build_tree, shipped_tree
    from nhlcli.taxonomy.classes import FASHION_MNIST

    shipped = "fashion-mnist-wordnet-l2"
    try:
        return build_tree("wordnet", FASHION_MNIST, levels=2, name=shipped), "wordnet"
    except NhlError:
        return shipped_tree(shipped), f"shipped ({shipped}; WordNet is not installed)"


FASHION_MNIST_DEMO = DemoTask(
    title="Fashion-MNIST",
    expert_name="footwear",
    expert_classes=("sandal", "sneaker", "ankle boot"),
    model_file="fashion-nhl.safetensors",
    expert_file="footwear-expert.safetensors",
    max_epochs=8,
    workdir="nhl-demo",  # in the current directory, so that the docs' next commands find the files
    # the first test image of each class, by file name
    sample_images={
        "sandal.png": "sandal",
        "sneaker.png": "sneaker",
        "ankle-boot.png": "ankle-boot",
        "shirt.png": "shirt",
    },  # fmt: skip
    tree=_fashion_mnist_demo_tree,
)
# Unicode's "Animals & Nature" group (152 emoji, 3 levels): its 2,432 training images an epoch
# train at about 270 images/s here, so the budget holds tens of epochs; all 1,861 classes
# train with ``nhl train --data emoji`` (a full NHL trains at about 5 images/s there).
EMOJI_DEMO = DemoTask(
    title="Emoji, Animals & Nature",
    expert_name="sea animals",
    expert_classes=("animal-marine",),
    model_file="emoji-nhl.safetensors",
    expert_file="sea-animals-expert.safetensors",
    max_epochs=30,
    workdir="nhl-demo-emoji",
    sample_images={
        "shark.png": "shark",
        "octopus.png": "octopus",
        "dolphin.png": "dolphin",
        "cat-face.png": "cat face",
    },  # fmt: skip
    train_classes=("Animals & Nature",),
    tree_about="Unicode's emoji groups",
)

DATASETS: dict[str, DatasetSpec] = {
    # 28x28 grey, no validation set: its val split is the 10,000-image test set
    FASHION_MNIST: DatasetSpec(
        FASHION_MNIST,
        _open_fashion_mnist,
        mode="L",
        default_tree="fashion-mnist-wordnet-l2",
        report_names={"val": "test"},
        in_memory=True,
        demo=FASHION_MNIST_DEMO,
    ),  # fmt: skip
    # drawn on the fly (no files: nothing to decode) at the model's input size, 32 px unless told;
    # val is its fixed test split
    EMOJI: DatasetSpec(
        EMOJI,
        EmojiDataset,
        mode="RGB",
        input_size=EMOJI_SIZE,
        default_tree="emoji-unicode-l3",
        report_names={"val": "test"},
        in_memory=True,
        demo=EMOJI_DEMO,
    ),  # fmt: skip
}
DEFAULT_DATASET = FASHION_MNIST  # what commands train and evaluate on when no data is given


def register_dataset(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
    """Make ``spec`` reachable by its name everywhere a data set is named (``nhl train --data``,
    ``open_dataset``, ``evaluate_file``...). A name already registered is refused unless
    ``replace``; a name is never a path, so an image folder of that name can no longer be given
    by it (give ``./name``)."""
    if not spec.name or spec.name != spec.name.strip():
        raise ValueError(f"a data set needs a name without surrounding spaces, got {spec.name!r}")
    if spec.open is None:
        raise ValueError(f"data set {spec.name!r} needs an opener")
    if spec.name in DATASETS and not replace:
        raise ValueError(f"data set {spec.name!r} is already registered; pass replace=True to replace it")
    DATASETS[spec.name] = spec
    return spec


def registered_dataset(data: str | Path) -> DatasetSpec | None:
    """The registered spec ``data`` names (``None``: a folder, or nothing)."""
    return DATASETS.get(str(data))


def dataset_spec(data: str | Path) -> DatasetSpec:
    """The spec of a registered data set, or the one an image folder has (whether or not the
    folder exists: opening it says what is wrong)."""
    return registered_dataset(data) or DatasetSpec(name=str(data), open=None)


def dataset_names() -> tuple[str, ...]:
    """The registered data sets, as users may name them."""
    return tuple(DATASETS)


def open_registered(spec: DatasetSpec, split: str, transform: Any, mode: str | None, size: int | None) -> Any:
    """One split of a registered data set, in ``mode`` (default its own) at ``size`` (drawn data)."""
    assert spec.open is not None  # only folders have none, and they are not registered
    return spec.open(
        check_split(split), transform=transform, mode=mode or spec.mode, size=size or spec.input_size
    )
