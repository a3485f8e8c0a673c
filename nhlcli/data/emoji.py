"""The built-in ``emoji`` data set: Unicode's emoji as 1,861 classes, drawn and disguised on the fly.

Each glyph is rasterised once per process (:mod:`nhlcli.taxonomy.emoji`), then every image is
made from it in the loader workers, no files on disk: the glyph scaled, rotated and moved on a
background (solid, gradient, noise, or clutter of other glyphs' fragments), then perhaps partly
occluded, blurred and JPEG-compressed. Training images are new every epoch, drawn from torch's
random state (seeded by the run's seed, per loader worker); the ``val`` split, reported as
``test``, is fixed by :data:`TEST_SEED` and the same on every machine with the same font.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from nhlcli.data.base import LabeledDataset, check_split
from nhlcli.data.errors import DataError
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.emoji import emoji_font_file, emoji_glyphs, rasterise

NAME = "emoji"
DEFAULT_SIZE = 32
TRAIN_PER_CLASS = 16  # images of each class in one training epoch (new ones every epoch)
TEST_PER_CLASS = 4  # images of each class in the fixed test split
TEST_SEED = 20261204


@lru_cache(maxsize=4)
def glyph_sprites(side: int) -> tuple[Image.Image, ...]:
    """Every class's glyph as RGBA, its longer side ``side`` pixels (once per process and size)."""
    font = emoji_font_file()
    sprites = []
    for glyph in emoji_glyphs():
        image = rasterise(glyph.text, font)
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        sprites.append(image.resize(size, Image.LANCZOS))
    return tuple(sprites)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _background(rng: np.random.Generator, size: int, sprites: tuple[Image.Image, ...]) -> Image.Image:
    kind = rng.integers(4)
    if kind == 0:  # solid
        return Image.new("RGB", (size, size), _colour(rng))
    if kind == 1:  # linear gradient between two colours, any direction
        a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (xs * np.cos(angle) + ys * np.sin(angle) + 1.5) / 3.0
        pixels = a + (b - a) * t[..., None]
        return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    if kind == 2:  # coloured noise, smoothed a little
        noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        return Image.fromarray(noise).filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5) * size / 32))
    canvas = Image.new("RGB", (size, size), _colour(rng))  # clutter: fragments of other glyphs
    for _ in range(int(rng.integers(2, 5))):
        other = sprites[int(rng.integers(len(sprites)))]
        w, h = other.size
        cw, ch = max(1, int(w * rng.uniform(0.3, 0.6))), max(1, int(h * rng.uniform(0.3, 0.6)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        piece = other.crop((x0, y0, x0 + cw, y0 + ch))
        canvas.paste(piece, (int(rng.integers(-cw // 2, size)), int(rng.integers(-ch // 2, size))), piece)
    return canvas


def draw_sample(
    glyph: int, rng: np.random.Generator, size: int, sprites: tuple[Image.Image, ...]
) -> Image.Image:
    """One disguised image of class ``glyph``, all randomness from ``rng``."""
    canvas = _background(rng, size, sprites)
    sprite = sprites[glyph]
    scale = rng.uniform(0.55, 1.0) * size / max(sprite.size)
    fitted = sprite.resize((max(1, round(sprite.width * scale)), max(1, round(sprite.height * scale))))
    turned = fitted.rotate(rng.uniform(-25, 25), resample=Image.BILINEAR, expand=True)
    slack_x, slack_y = size - turned.width, size - turned.height
    jitter = 0.1 * size
    x = int(slack_x / 2 + rng.uniform(-jitter, jitter) + rng.uniform(-0.5, 0.5) * max(slack_x, 0))
    y = int(slack_y / 2 + rng.uniform(-jitter, jitter) + rng.uniform(-0.5, 0.5) * max(slack_y, 0))
    canvas.paste(turned, (x, y), turned)
    if rng.random() < 0.3:  # partial occlusion: a bar over 10-25 % of the image
        area = rng.uniform(0.10, 0.25) * size * size
        w = int(np.clip(rng.uniform(0.3, 1.0) * size, 1, size))
        h = int(np.clip(area / w, 1, size))
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        ImageDraw.Draw(canvas).rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=_colour(rng))
    if rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * size / 32))
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        canvas.save(buffer, "JPEG", quality=int(rng.integers(30, 80)))
        canvas = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return canvas


class EmojiDataset(LabeledDataset):
    """Unicode's emoji as classes (ids are code points, see :mod:`nhlcli.taxonomy.emoji`), each
    image drawn when asked for. ``size``: the side in pixels (32 by default, any size works)."""

    def __init__(
        self,
        split: str,
        transform: Any = None,
        mode: str = "RGB",
        size: int = DEFAULT_SIZE,
        per_class: int | None = None,
    ) -> None:
        self.split = check_split(split)
        if size < 8:
            raise DataError(f"emoji images need at least 8 pixels a side, got {size}")
        glyphs = emoji_glyphs()
        self.classes = [ClassEntry(g.id, g.name, None, g.aliases) for g in glyphs]
        count = per_class or (TRAIN_PER_CLASS if self.split == "train" else TEST_PER_CLASS)
        self.targets = np.repeat(np.arange(len(glyphs)), count).tolist()
        self.size, self.name, self.mode, self.transform = size, NAME, mode, transform

    def rng(self, index: int) -> np.random.Generator:
        """The test split's images are fixed by index; training draws new ones from torch's state."""
        if self.split == "train":
            return np.random.default_rng([int(torch.randint(0, 2**62, ()).item()), index])
        return np.random.default_rng([TEST_SEED, index])

    def load_image(self, index: int) -> Image.Image:
        sprites = glyph_sprites(2 * self.size)
        image = draw_sample(int(self.targets[index]), self.rng(index), self.size, sprites)
        return image if self.mode == "RGB" else image.convert(self.mode)

    def sample_name(self, index: int) -> str:
        entry = self.classes[int(self.targets[index])]
        return f"emoji {self.split} image {index} ({entry.name})"
