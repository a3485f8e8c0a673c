"""The data layer: Fashion-MNIST files, ImageFolders, relabelling onto trees, loaders, errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_data
from torch.utils.data import DataLoader

from nhlcli.data import (
    AugmentChoice,
    DataError,
    bad_image_names,
    build_transform,
    channel_stats,
    create_eval_loader,
    create_loaders,
    dataset_for_tree,
    default_augmentation,
    default_workers,
    open_dataset,
    split_bad,
    training_image_count,
    unreadable_image_message,
    unreadable_split_error,
    unwrap_worker_error,
)
from nhlcli.data import defaults as data_defaults
from nhlcli.data import fashion_mnist as fm
from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import FASHION_MNIST, ClassEntry
from nhlcli.taxonomy.sources import build_flat_tree
from nhlcli.taxonomy.tree import Tree

tiny = make_tiny_data

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
ANIMALS = ["cat", "dog", "fish", "bird"]


def one_line(exc: BaseException, *fragments: str) -> str:
    msg = str(exc)
    assert isinstance(exc, NhlError), repr(exc)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for fragment in fragments:
        assert fragment.lower() in msg.lower(), msg
    return msg


@pytest.fixture
def no_user_data(monkeypatch, tmp_path):
    """No NHL_DATA, an empty user cache: only the system copy can be found."""
    monkeypatch.delenv("NHL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NHL_OFFLINE", "1")


def flat_tree(ids: list[str]) -> Tree:
    return build_flat_tree([ClassEntry(c, c) for c in ids])


# ------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_from_debian_package(no_user_data):
    train = open_dataset("fashion-mnist", "train")
    val = open_dataset("fashion-mnist", "val")
    assert (len(train), len(val)) == (60000, 10000)
    assert train.classes == list(FASHION_MNIST) and len(train.classes) == 10
    assert np.bincount(train.targets).tolist() == [6000] * 10
    assert np.bincount(val.targets).tolist() == [1000] * 10
    img, label = train[0]
    assert img.mode == "L" and img.size == (28, 28) and 0 <= label < 10
    assert str(fm.locate()) == str(SYSTEM_FASHION)


def test_nhl_data_is_preferred(monkeypatch, tmp_path):
    tiny.make_fashion_mnist_idx(tmp_path / "data" / "fashion-mnist", n_train=30, n_test=10)
    monkeypatch.setenv("NHL_DATA", str(tmp_path / "data"))
    train, val = open_dataset("fashion-mnist", "train"), open_dataset("fashion-mnist", "val")
    assert (len(train), len(val)) == (30, 10)
    assert train.targets[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert np.array(train.load_image(3)).shape == (28, 28)
    rgb = open_dataset("fashion-mnist", "train", mode="RGB").load_image(3)
    assert rgb.mode == "RGB" and np.array_equal(np.array(rgb)[..., 0], np.array(train.load_image(3)))


def test_user_cache_and_uncompressed_files(monkeypatch, tmp_path):
    cache = tmp_path / "xdg" / "nhl" / "fashion-mnist"
    tiny.make_fashion_mnist_idx(cache, n_train=20, n_test=10)
    for gz in cache.glob("*.gz"):  # plain idx files are accepted too
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    monkeypatch.delenv("NHL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert len(open_dataset("fashion-mnist", "train")) == 20


def test_truncated_idx_file(monkeypatch, tmp_path):
    root = tiny.make_fashion_mnist_idx(tmp_path / "fm", n_train=20, n_test=10)
    monkeypatch.setenv("NHL_DATA", str(root))
    bad = root / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-20])  # a cut-off download
    with pytest.raises(NhlError) as err:
        open_dataset("fashion-mnist", "train")
    one_line(err.value, str(bad), "replace")
    raw = gzip.decompress((root / "t10k-images-idx3-ubyte.gz").read_bytes())
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))  # valid gzip, short
    with pytest.raises(NhlError) as err:
        open_dataset("fashion-mnist", "val")
    one_line(err.value, "t10k-images-idx3-ubyte.gz", "truncated")
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + bytes(8)))
    with pytest.raises(NhlError) as err:
        fm.read_idx_labels(root / "t10k-labels-idx1-ubyte.gz")
    one_line(err.value, "magic number")


def test_fashion_mnist_missing_everywhere(monkeypatch, tmp_path):
    monkeypatch.setenv("NHL_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NHL_OFFLINE", "1")
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (tmp_path / "system",))
    with pytest.raises(NhlError) as err:
        open_dataset("fashion-mnist", "train")
    one_line(
        err.value, "NHL_DATA", str(tmp_path / "cache"), str(tmp_path / "system"), "dataset-fashion-mnist"
    )


def test_partial_copy_is_reported(monkeypatch, tmp_path):
    root = tiny.make_fashion_mnist_idx(tmp_path / "fm", n_train=10, n_test=10)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("NHL_DATA", str(root))
    with pytest.raises(NhlError) as err:
        open_dataset("fashion-mnist", "train")
    one_line(err.value, "incomplete", "t10k-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------ ImageFolder
def test_image_folder_with_split_folders(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ["cls10", "cls2", "cls1"], per_class=4, split=True)
    train, val = open_dataset(root, "train"), open_dataset(root, "validation")
    assert [c.id for c in train.classes] == ["cls1", "cls2", "cls10"]  # timm's natural sort
    assert (len(train), len(val)) == (12, 6)
    for ds in (train, val):
        for i in range(len(ds)):
            assert Path(ds.sample_name(i)).parent.name == ds.classes[ds.targets[i]].id
    img, label = train[0]
    assert img.mode == "RGB" and img.size == (32, 32) and label == 0
    assert open_dataset(root, "val", mode="L").load_image(0).mode == "L"


def test_image_folder_holdout_split(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=10, split=False)
    train, val = open_dataset(root, "train"), open_dataset(root, "val")
    assert (len(train), len(val)) == (36, 4)  # 10 % of each class held out
    assert np.bincount(val.targets).tolist() == [1, 1, 1, 1]
    train_files = {train.sample_name(i) for i in range(len(train))}
    val_files = {val.sample_name(i) for i in range(len(val))}
    assert not train_files & val_files and len(train_files | val_files) == 40
    again = open_dataset(root, "val")
    assert [again.sample_name(i) for i in range(len(again))] == [val.sample_name(i) for i in range(len(val))]
    other = open_dataset(root, "val", val_fraction=0.3, split_seed=5)
    assert len(other) == 12
    only_train = tiny.make_image_folder(tmp_path / "t", ANIMALS, per_class=4, split=True)
    shutil.rmtree(only_train / "val")  # train/ without val/: held out of train/
    assert (len(open_dataset(only_train, "train")), len(open_dataset(only_train, "val"))) == (12, 4)


def test_a_holdout_carves_validation_from_the_training_images_only(tmp_path):
    """``holdout``: choose a recipe on training images; the data's own val split stays unseen."""
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=8, split=True)
    train, held = open_dataset(root, "train", holdout=0.25), open_dataset(root, "val", holdout=0.25)
    assert (len(train), len(held)) == (24, 8) and np.bincount(held.targets).tolist() == [2, 2, 2, 2]
    names = {ds.sample_name(i) for ds in (train, held) for i in range(len(ds))}
    full_train = open_dataset(root, "train")
    assert names == {full_train.sample_name(i) for i in range(len(full_train))}  # a partition of train
    assert all("/val/" not in n for n in names)
    img, label = held[0]
    assert img.size == (32, 32) and held.classes[label].id in ANIMALS
    with pytest.raises(NhlError, match="between 0 and 1"):
        open_dataset(root, "val", holdout=1.0)


def test_imagenet_folders_get_names(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ["n01491361", "n01440764"], per_class=2, split=True)
    classes = open_dataset(root, "train").classes
    assert [(c.id, c.name) for c in classes] == [("n01440764", "tench"), ("n01491361", "tiger shark")]


def test_labels_follow_the_tree_order(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=2, split=True)
    # two levels and a class order unlike the folders' alphabetical order
    nested = {
        "id": "root",
        "name": "animals",
        "children": [
            {"id": "water", "name": "water", "children": [{"id": "fish", "name": "Fish"}]},
            {
                "id": "land",
                "name": "land",
                "children": [
                    {"id": "dog", "name": "Dog"},
                    {"id": "kitty", "name": "Cat", "aliases": ["cat"]},
                ],
            },
            {"id": "air", "name": "air", "children": [{"id": "bird", "name": "Bird"}]},
        ],
    }
    tree = Tree.from_nested(nested, ["fish", "dog", "kitty", "bird"])
    base = open_dataset(root, "train")
    ds = dataset_for_tree(root, "train", tree)
    assert len(ds) == len(base) == 8
    for i in range(len(ds)):
        folder = Path(ds.sample_name(i)).parent.name
        leaf = "kitty" if folder == "cat" else folder
        assert ds.targets[i] == tree.classes.index(leaf)
        assert ds[i][1] == tree.classes.index(leaf)
    assert [c.id for c in ds.classes] == ["fish", "dog", "cat", "bird"]


def test_subset_drops_other_classes(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=2, split=True)
    expert = flat_tree(["fish", "cat"])
    ds = dataset_for_tree(root, "train", expert, subset=True)
    assert len(ds) == 4
    names = [Path(ds.sample_name(i)).parent.name for i in range(len(ds))]
    assert sorted(set(names)) == ["cat", "fish"]
    assert all(t == expert.classes.index(n) for t, n in zip(ds.targets, names, strict=True))
    with pytest.raises(NhlError) as err:
        dataset_for_tree(root, "train", flat_tree(["fish", "cat", "horse"]), subset=True)
    one_line(err.value, "in the tree but not in the data: horse")


def test_mismatch_lists_both_sides(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=1, split=True)
    with pytest.raises(NhlError) as err:
        dataset_for_tree(root, "train", flat_tree(["cat", "dog", "fish", "horse"]))
    one_line(err.value, "not in the tree: bird", "in the tree but not in the data: horse")


def test_folder_errors(tmp_path):
    with pytest.raises(NhlError) as err:
        open_dataset(tmp_path / "missing", "train")
    one_line(err.value, "does not exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NhlError) as err:
        open_dataset(tmp_path / "empty", "train")
    one_line(err.value, "no class folders")
    root = tiny.make_image_folder(tmp_path / "d", ["cat", "dog"], per_class=2, split=False)
    (root / "owl").mkdir()
    (root / "owl" / "notes.txt").write_text("not an image")
    with pytest.raises(NhlError) as err:
        open_dataset(root, "train")
    one_line(err.value, str(root / "owl"), "no images")
    with pytest.raises(NhlError) as err:
        open_dataset(root, "test")
    one_line(err.value, "'train' or 'val'")


def test_split_without_images(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ["cat", "dog"], per_class=2, split=True)
    for f in (root / "val").rglob("*.*"):
        f.unlink()
    assert len(open_dataset(root, "train")) == 4
    with pytest.raises(NhlError) as err:
        open_dataset(root, "val")
    one_line(err.value, str(root / "val"), "no images")
    single = tiny.make_image_folder(tmp_path / "one", ["cat", "dog"], per_class=1, split=False)
    with pytest.raises(NhlError) as err:  # one image a class: nothing to hold out
        open_dataset(single, "val")
    one_line(err.value, "val split", "no images")


def test_corrupt_image_in_workers(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ["cat", "dog"], per_class=4, split=True)
    bad = root / "train" / "dog" / "dog_001.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    tf = build_transform(16, is_training=False, mean=(0.5,), std=(0.5,))
    ds = dataset_for_tree(root, "train", flat_tree(["cat", "dog"]), tf)
    with pytest.raises(NhlError) as err:
        for _ in DataLoader(ds, batch_size=2, num_workers=2):
            pass
    one_line(err.value, str(bad), "remove or replace", "`skip_bad_images`")
    assert "--skip-bad-images" in err.value.for_command_line()  # what the CLI prints
    assert unreadable_image_message(err.value) == str(err.value)
    with pytest.raises(NhlError) as err:  # the same without workers
        ds[[ds.sample_name(i) for i in range(len(ds))].index(str(bad))]
    one_line(err.value, str(bad))


def test_unwrap_worker_error():
    text = (
        "Caught ValueError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nValueError: bad thing happened\n'
    )
    err = unwrap_worker_error(RuntimeError(text))
    assert isinstance(err, NhlError) and "\n" not in str(err) and "ValueError: bad thing" in str(err)
    wrapped = NhlError(text.replace("ValueError", "nhlcli.errors.NhlError"))
    assert str(unwrap_worker_error(wrapped)) == "bad thing happened"
    plain = DataError("already fine")
    assert unwrap_worker_error(plain) is plain


def test_unreadable_image_message():
    from_worker = (
        "Caught UnreadableImageError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in f\nnhlcli.data.errors.UnreadableImageError: cannot decode '
        "image a/b.jpg (image file is truncated); remove or replace the file\n"
    )
    assert unreadable_image_message(RuntimeError(from_worker)) == (
        "cannot decode image a/b.jpg (image file is truncated); remove or replace the file"
    )
    pil = from_worker.replace("nhlcli.data.errors.UnreadableImageError", "PIL.UnidentifiedImageError")
    assert "`skip_bad_images`" in unreadable_image_message(RuntimeError(pil))
    bug = from_worker.replace("nhlcli.data.errors.UnreadableImageError", "TypeError")
    assert unreadable_image_message(RuntimeError(bug)) is None  # a bug keeps its traceback
    assert unreadable_image_message(ValueError("unrelated")) is None


# ------------------------------------------------------------------ unreadable images
def loader_opts(**extra) -> dict:
    return dict(input_size=16, mean=(0.5,), std=(0.5,), in_chans=3, **{"batch_size": 4, **extra})


def drain(loader: DataLoader) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """One pass as the training loop makes it: each batch's readable rows and the bad indices."""
    images, targets, bad = [], [], []
    for x, y in loader:
        x_ok, y_ok, b = split_bad(x, y)
        assert torch.all(x[y < 0] == 0)  # placeholders are zero images of the batch's shape
        images.append(x_ok)
        targets += y_ok.tolist()
        bad += b
    return images, targets, bad


@pytest.mark.slow
def test_bad_images_stop_training_without_the_option(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=3, split=True)
    (bad,) = tiny.write_bad_images(root / "train" / "dog", ["empty.png"])
    train, _ = create_loaders(root, flat_tree(ANIMALS), **loader_opts(workers=2))
    with pytest.raises(NhlError) as err:
        drain(train)
    one_line(err.value, f"cannot decode image {bad}", "`skip_bad_images`")


@pytest.mark.slow
def test_skip_bad_images_with_workers(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=3, split=True)
    bad_train = tiny.write_bad_images(root / "train" / "dog")
    (bad_val,) = tiny.write_bad_images(root / "val" / "fish", ["truncated.jpg"])
    tree = flat_tree(ANIMALS)
    opts = loader_opts(skip_bad_images=True, batch_size=5)
    train, val = create_loaders(root, tree, **opts, workers=2)
    assert len(train.dataset) == 12 + 3  # 3 full batches: the training loader drops nothing
    images, targets, bad = drain(train)
    assert sorted(bad_image_names(train.dataset, bad)) == sorted(map(str, bad_train))
    assert len(targets) == 12 and all(x.shape[1:] == (3, 16, 16) for x in images)
    good = {train.dataset.sample_name(i): t for i, t in enumerate(train.dataset.targets)}
    readable = [t for name, t in good.items() if Path(name) not in bad_train]
    assert sorted(targets) == sorted(readable)  # every readable image once, with its own label
    _, val_targets, val_bad = drain(val)
    assert bad_image_names(val.dataset, val_bad) == [str(bad_val)] and len(val_targets) == 4
    again = drain(create_loaders(root, tree, **opts, workers=0)[0])[2]
    assert sorted(again) == sorted(bad)  # the same without workers


def test_skip_bad_images_in_parts_and_subsets(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=4, split=True)
    (bad,) = tiny.write_bad_images(root / "val" / "cat", ["notes.jpg"])
    expert = flat_tree(["fish", "cat"])
    opts = loader_opts(workers=0, skip_bad_images=True, subset=True)
    found = []
    for part in ("1/2", "2/2"):  # the file sits in one of the two halves
        loader = create_eval_loader(root, expert, part=part, **opts)
        found += bad_image_names(loader.dataset, drain(loader)[2])
    assert found == [str(bad)]


def test_every_image_bad_is_an_error(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ["cat", "dog"], per_class=2, split=True)
    for f in (root / "train").rglob("*.*"):
        f.write_bytes(b"")
    train, _ = create_loaders(root, flat_tree(["cat", "dog"]), skip_bad_images=True, **loader_opts(workers=0))
    _, targets, bad = drain(train)
    assert targets == [] and sorted(bad) == [0, 1, 2, 3]
    one_line(unreadable_split_error(train.dataset, bad), "no image of the train split", "4 unreadable")


def test_split_bad_leaves_clean_batches_alone():
    x, y = torch.ones(3, 1, 2, 2), torch.tensor([2, 0, 1])
    x2, y2, bad = split_bad(x, y)
    assert x2 is x and y2 is y and bad == []
    x3, y3, bad = split_bad(x, torch.tensor([2, -8, -1]))
    assert x3.shape == (1, 1, 2, 2) and y3.tolist() == [2] and bad == [7, 0]


# ------------------------------------------------------------------ defaults
def test_default_workers(monkeypatch, tmp_path):
    folder = tmp_path / "images"
    assert default_workers("fashion-mnist", cores=64) == 0  # in memory: nothing to decode
    assert [default_workers(folder, cores=n) for n in (1, 2, 3, 4, 9, 64)] == [0, 0, 2, 3, 8, 8]
    monkeypatch.setattr(data_defaults.os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(folder) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four ranks share the twelve cores
    assert default_workers(folder) == 2


def test_default_augmentation():
    small = default_augmentation(32, 60000)
    assert small == AugmentChoice(None, (0.8, 1.0), small.reason)
    assert "32 px" in small.reason and "no randaugment" in small.reason.lower()
    imagenet = default_augmentation(224, 1_281_167)
    assert (imagenet.augment, imagenet.crop_scale) == ("rand-m9-mstd0.5", (0.08, 1.0))
    assert "224 px" in imagenet.reason and "rand-m9-mstd0.5" in imagenet.reason
    few = default_augmentation(224, 5000)
    mid = default_augmentation(96, 5000)
    for choice in (mid, few):
        assert choice.augment and 0.08 < choice.crop_scale[0] < 0.8 and choice.crop_scale[1] == 1.0
    assert "5000" in few.reason
    for choice in (small, mid, few, imagenet):  # every pick is a recipe timm builds
        build_transform(
            32, is_training=True, mean=(0.5,), std=(0.5,), augment=choice.augment, scale=choice.crop_scale
        )
    with pytest.raises(NhlError):
        default_augmentation(0, 100)


def test_training_image_count(monkeypatch, tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=10, split=False)
    assert training_image_count(root) == 36  # the val hold-out is not trained on
    tiny.make_fashion_mnist_idx(tmp_path / "fashion-mnist", n_train=30, n_test=10)
    monkeypatch.setenv("NHL_DATA", str(tmp_path))
    assert training_image_count("fashion-mnist") == 30
    with pytest.raises(NhlError) as err:
        training_image_count(tmp_path / "missing")
    one_line(err.value, "does not exist")


# ------------------------------------------------------------------ transforms and loaders
def test_channel_stats():
    assert channel_stats((0.5,), (0.25,), 3) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    grey_mean, grey_std = channel_stats((0.2, 0.4, 0.6), (0.1, 0.2, 0.3), 1)
    assert grey_mean == pytest.approx((0.4,)) and grey_std == pytest.approx((0.2,))
    with pytest.raises(NhlError):
        channel_stats((0.1, 0.2), (0.1, 0.2), 3)
    with pytest.raises(NhlError):
        build_transform(32, is_training=True, mean=(0.5,), std=(0.5,), augment="rand-q5")


@pytest.mark.parametrize("in_chans, mean", [(1, (0.5,)), (3, (0.485, 0.456, 0.406)), (3, (0.5,))])
def test_create_loaders_shapes_and_seed(tmp_path, in_chans, mean):
    root = tiny.make_image_folder(tmp_path / "d", ANIMALS, per_class=6, split=False)
    tree = flat_tree(ANIMALS)
    opts = dict(input_size=24, mean=mean, std=(0.25,) * len(mean), in_chans=in_chans, batch_size=5, workers=1)
    train, val = create_loaders(root, tree, seed=3, **opts)
    x, y = next(iter(train))
    assert x.shape == (5, in_chans, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) == 20 // 5 and len(train.dataset) == 20 and len(val.dataset) == 4
    xv, _ = next(iter(val))
    assert xv.shape == (4, in_chans, 24, 24)
    again, _ = create_loaders(root, tree, seed=3, **opts)
    x2, y2 = next(iter(again))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    other, _ = create_loaders(root, tree, seed=4, **opts)
    assert not torch.equal(x, next(iter(other))[0])


def test_fashion_mnist_loaders(monkeypatch, tmp_path):
    tiny.make_fashion_mnist_idx(tmp_path / "fashion-mnist", n_train=40, n_test=20)
    monkeypatch.setenv("NHL_DATA", str(tmp_path))
    tree = build_flat_tree(list(FASHION_MNIST))
    for in_chans, mean in ((1, (0.29,)), (3, (0.485, 0.456, 0.406))):
        opts = dict(input_size=32, mean=mean, std=(0.3,) * len(mean), batch_size=8, workers=0, crop_pct=1.0)
        train, val = create_loaders("fashion-mnist", tree, **opts)
        assert next(iter(train))[0].shape == (8, in_chans, 32, 32)
        xv, yv = next(iter(val))
        assert xv.shape == (8, in_chans, 32, 32) and yv.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    expert = build_flat_tree([FASHION_MNIST[9], FASHION_MNIST[5]])
    loader = create_eval_loader(
        "fashion-mnist", expert, input_size=28, mean=(0.5,), std=(0.5,), workers=0, subset=True
    )
    assert len(loader.dataset) == 4 and sorted(set(loader.dataset.targets)) == [0, 1]
    assert loader.dataset.targets[:2] == [1, 0]  # sandal (label 5) first, now tree class 1


def test_distributed_needs_init(tmp_path):
    root = tiny.make_image_folder(tmp_path / "d", ["cat", "dog"], per_class=2, split=True)
    with pytest.raises(NhlError) as err:
        create_loaders(
            root, flat_tree(["cat", "dog"]), input_size=16, mean=(0.5,), std=(0.5,), distributed=True
        )
    one_line(err.value, "torchrun")


def test_download_into_user_cache(monkeypatch, tmp_path):
    import torchvision.datasets

    class FakeFashionMNIST:  # what torchvision leaves on disk, without the network
        def __init__(self, root, train=True, download=False):
            tiny.make_fashion_mnist_idx(Path(root) / "FashionMNIST" / "raw", n_train=10, n_test=10)

    monkeypatch.delenv("NHL_DATA", raising=False)
    monkeypatch.delenv("NHL_OFFLINE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    assert len(open_dataset("fashion-mnist", "val")) == 10
    assert sorted(p.name for p in fm.cache_dir().iterdir()) == sorted(f"{b}.gz" for b in fm._ALL_FILES)

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    with pytest.raises(NhlError) as err:
        open_dataset("fashion-mnist", "train")
    one_line(err.value, "downloading it failed", "name resolution", "dataset-fashion-mnist")
