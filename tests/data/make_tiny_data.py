"""Write tiny, learnable image data sets for tests (nothing generated is committed).

Run as a script to look at the data::

    python tests/data/make_tiny_data.py OUTDIR

or import ``make_image_folder`` / ``make_fashion_mnist_idx`` from tests. Every image carries a
class-specific colour and stripe pattern plus noise, so a small model can learn the classes in a
few steps, and a grey copy still tells them apart (stripes differ, not just the hue).
"""

from __future__ import annotations

import argparse
import colorsys
import gzip
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def class_image(
    k: int, n_classes: int, size: int, rng: np.random.Generator, grey: bool = False
) -> np.ndarray:
    """One image of class ``k``: hue and stripe period/orientation set by the class, plus noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = 2 + (k % 5)
    coord = xx if k % 2 == 0 else yy
    stripes = ((coord + rng.integers(0, period)) // period) % 2  # random phase, class period
    if grey:
        img = np.where(stripes, 40 + 20 * (k % 10), 10).astype(np.float64)
        img += rng.normal(0, 12, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)
    r, g, b = colorsys.hsv_to_rgb(k / max(n_classes, 1), 0.8, 0.9)
    colour = np.array([r, g, b]) * 255
    img = np.where(stripes[..., None], colour, colour * 0.35)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path,
    classes: Sequence[str],
    per_class: int = 4,
    size: int = 32,
    split: bool = True,
    seed: int = 0,
) -> Path:
    """Write an ImageFolder of PNG and JPEG images under ``root`` and return ``root``.

    With ``split`` the classes sit in ``train/`` (``per_class`` images each) and ``val/``
    (half as many, at least one); without it, ``root`` holds the class folders directly.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    splits = {"train": per_class, "val": max(1, per_class // 2)} if split else {"": per_class}
    for split_name, count in splits.items():
        for k, name in enumerate(classes):
            folder = root / split_name / name if split_name else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = Image.fromarray(class_image(k, len(classes), size, rng))
                if i % 2:
                    img.save(folder / f"{name}_{i:03d}.jpg", quality=95)
                else:
                    img.save(folder / f"{name}_{i:03d}.png")
    return root


BAD_IMAGES = {  # the broken files a real data set turns up, by the name they would hide behind
    "truncated.jpg": "a JPEG cut off half way (an interrupted copy)",
    "empty.png": "a zero-byte PNG",
    "notes.jpg": "a text file named .jpg",
}


def write_bad_images(folder: Path, names: Sequence[str] = tuple(BAD_IMAGES), size: int = 32) -> list[Path]:
    """Write broken image files (see :data:`BAD_IMAGES`) into ``folder`` and return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / name
        if name.startswith("truncated"):
            img = Image.fromarray(class_image(0, 1, size, np.random.default_rng(0)))
            img.save(path, quality=95)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif name.startswith("empty"):
            path.write_bytes(b"")
        else:
            path.write_text("not an image, whatever the name says\n")
        paths.append(path)
    return paths


def _write_idx_gz(path: Path, magic: int, dims: Sequence[int], data: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + data.astype(np.uint8).tobytes())


def make_fashion_mnist_idx(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write the four Fashion-MNIST idx.gz files (28x28 grey, labels ``i % 10``) under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.stack([class_image(int(k), 10, 28, rng, grey=True) for k in labels]) if n else None
        if images is None:
            images = np.zeros((0, 28, 28), np.uint8)
        image_file, label_file = FASHION_FILES[prefix]
        _write_idx_gz(root / image_file, 2051, (n, 28, 28), images)
        _write_idx_gz(root / label_file, 2049, (n,), labels)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)
    classes = ["cat", "dog", "fish", "bird"]
    make_image_folder(args.outdir / "image-folder", classes, args.per_class, args.size, split=True)
    make_image_folder(args.outdir / "image-folder-flat", classes, args.per_class, args.size, split=False)
    make_fashion_mnist_idx(args.outdir / "fashion-mnist", n_train=100, n_test=20)
    print(f"wrote {args.outdir}/image-folder, image-folder-flat and fashion-mnist")


if __name__ == "__main__":
    main()
