"""Built-in Fashion-MNIST: found on disk (NHL_DATA, the user cache, Debian's package) or downloaded.

The four idx files (gzipped or not) are read with numpy and validated, so a truncated or foreign
file is reported by name instead of failing deep inside training. Split ``train`` is the 60k
training file, ``val`` the 10k test (``t10k``) file. Images are 28x28 grey and are handed to the
transform as PIL ``"L"`` images; the transform decides whether the model sees 1 or 3 channels.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from nhlcli.data.base import LabeledDataset, check_split
from nhlcli.data.errors import DataError
from nhlcli.taxonomy.classes import FASHION_MNIST
from nhlcli.text import one_line

NAME = "fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
# Searched after NHL_DATA and the user cache; a module constant so tests can replace it.
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALL_FILES = tuple(name for pair in FILES.values() for name in pair)
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
DOWNLOAD_TIMEOUT_S = 30


def cache_dir() -> Path:
    """The user cache copy: ``$XDG_CACHE_HOME/nhl/fashion-mnist`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nhl" / NAME


def search_dirs() -> list[Path]:
    """Where the idx files are looked for, in order of preference."""
    dirs = []
    data = os.environ.get("NHL_DATA")
    if data:
        dirs += [Path(data) / NAME, Path(data)]
    return [*dirs, cache_dir(), *SYSTEM_DIRS]


def _find_file(folder: Path, base: str) -> Path | None:
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


def _places() -> str:
    data = os.environ.get("NHL_DATA")
    first = f"$NHL_DATA/{NAME} ({Path(data) / NAME})" if data else f"$NHL_DATA/{NAME} (NHL_DATA is unset)"
    return f"{first}, {cache_dir()} or {', '.join(str(d) for d in SYSTEM_DIRS)}"


def locate(download: bool = True) -> Path:
    """The folder holding all four idx files; downloads into the user cache when none does.

    A folder with only some of the files is an error rather than skipped, since silently using
    another copy would hide the user's mistake.
    """
    for folder in search_dirs():
        found = {base: _find_file(folder, base) for base in _ALL_FILES}
        if all(found.values()):
            return folder
        if any(found.values()):
            missing = ", ".join(f"{b}.gz" for b, f in found.items() if f is None)
            raise DataError(
                f"incomplete Fashion-MNIST in {folder}: {missing} missing; "
                "add the missing idx files or remove the partial copy"
            )
    if download:
        return _download(cache_dir())
    raise _not_found()


def _not_found(reason: str = "") -> DataError:
    why = f" and downloading it failed ({reason})" if reason else ""
    return DataError(
        f"Fashion-MNIST not found in {_places()}{why}; install the Debian package {DEBIAN_PACKAGE} "
        f"(apt-get install {DEBIAN_PACKAGE}) or put the four idx files in one of those places"
    )


def _download(dest: Path) -> Path:
    """Fetch the files through torchvision into ``dest`` (skipped when ``NHL_OFFLINE`` is set)."""
    if os.environ.get("NHL_OFFLINE", "").strip() not in ("", "0"):
        raise _not_found("NHL_OFFLINE is set")
    dest.mkdir(parents=True, exist_ok=True)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        from torchvision.datasets import FashionMNIST

        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            FashionMNIST(tmp, train=True, download=True)
            raw = Path(tmp) / "FashionMNIST" / "raw"
            for base in _ALL_FILES:
                shutil.move(str(raw / f"{base}.gz"), str(dest / f"{base}.gz"))
    except Exception as exc:  # any network/HTTP/disk failure: the user needs the same advice
        raise _not_found(one_line(exc) or type(exc).__name__) from exc
    finally:
        socket.setdefaulttimeout(old_timeout)
    return dest


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise _bad_file(path, one_line(exc) or type(exc).__name__) from exc


def _bad_file(path: Path, reason: str) -> DataError:
    return DataError(
        f"{path} is not a valid Fashion-MNIST idx file ({reason}); replace it with an intact copy "
        f"(reinstall {DEBIAN_PACKAGE}, or delete it so nhl finds or downloads another)"
    )


def read_idx_images(path: Path) -> np.ndarray:
    """An idx3 image file as an ``(N, rows, cols)`` uint8 array, header and size checked."""
    raw = _read_bytes(path)
    if len(raw) < 16:
        raise _bad_file(path, f"only {len(raw)} bytes")
    magic, n, rows, cols = np.frombuffer(raw, ">u4", count=4)
    if magic != IMAGES_MAGIC:
        raise _bad_file(path, f"magic number {int(magic)}, expected {IMAGES_MAGIC} for images")
    expected = 16 + int(n) * int(rows) * int(cols)
    if len(raw) != expected:
        raise _bad_file(path, f"{len(raw)} bytes, the header promises {expected}: truncated?")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(int(n), int(rows), int(cols))


def read_idx_labels(path: Path, num_classes: int = len(FASHION_MNIST)) -> np.ndarray:
    """An idx1 label file as an ``(N,)`` int64 array, header, size and label range checked."""
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise _bad_file(path, f"only {len(raw)} bytes")
    magic, n = np.frombuffer(raw, ">u4", count=2)
    if magic != LABELS_MAGIC:
        raise _bad_file(path, f"magic number {int(magic)}, expected {LABELS_MAGIC} for labels")
    if len(raw) != 8 + int(n):
        raise _bad_file(path, f"{len(raw)} bytes, the header promises {8 + int(n)}: truncated?")
    labels = np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)
    if labels.size and labels.max() >= num_classes:
        raise _bad_file(path, f"label {int(labels.max())} is out of range 0-{num_classes - 1}")
    return labels


@lru_cache(maxsize=4)
def _load_cached(images: str, labels: str, stamp: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx_images(Path(images))
    y = read_idx_labels(Path(labels))
    if len(x) != len(y):
        raise DataError(
            f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; "
            "the two files must come from the same Fashion-MNIST split"
        )
    return x, y


def load_split(split: str, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray, Path]:
    """Images, labels and the image file of one split (cached per process; files are ~50 MB)."""
    split = check_split(split)
    folder = folder or locate()
    paths = [_find_file(folder, base) for base in FILES[split]]
    if paths[0] is None or paths[1] is None:
        raise _not_found()
    stamp = tuple(v for p in paths for v in (p.stat().st_mtime_ns, p.stat().st_size))
    x, y = _load_cached(str(paths[0]), str(paths[1]), stamp)
    return x, y, paths[0]


class FashionMNISTDataset(LabeledDataset):
    """Fashion-MNIST as PIL ``"L"`` images (``mode="RGB"`` replicates the grey channel)."""

    def __init__(self, split: str, transform=None, mode: str = "L", folder: Path | None = None) -> None:
        self.split = check_split(split)
        self.images, labels, self.path = load_split(self.split, folder)
        if len(labels) == 0:
            raise DataError(f"{self.path} holds no images; the {self.split} split is empty")
        self.targets = labels.tolist()
        self.classes = list(FASHION_MNIST)
        self.name = NAME
        self.mode = mode
        self.transform = transform

    def load_image(self, index: int) -> Image.Image:
        img = Image.fromarray(self.images[index])
        return img if self.mode == "L" else img.convert(self.mode)

    def sample_name(self, index: int) -> str:
        return f"{self.path} image {index}"
