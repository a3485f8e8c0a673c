"""Reading one image file into the pixels a model sees: the one reader of train, eval and predict.

Every image file that reaches a model goes through :func:`read_image`, so the same file gives the
same pixels whether a data loader or ``nhl predict`` reads it:

* only regular files are opened (a FIFO, socket, device or folder is refused before any read, and
  the file is opened with ``O_NONBLOCK`` and checked again, so nothing can block);
* every format Pillow reads except EPS, which Pillow decodes by running Ghostscript;
* images over :data:`MAX_IMAGE_PIXELS` are refused with their size, before their pixels are
  decoded (Pillow's own decompression-bomb warning and error never reach the user);
* EXIF orientation is applied;
* high bit-depth grey (16-bit ``I;16``, 32-bit ``I``, float ``F``) is scaled into 0..255, not
  clipped (Pillow's ``convert("L")`` turns most 16-bit pictures white);
* transparency (``LA``, ``RGBA``, palette images with a transparent index, ``PA``) is composited
  onto :data:`BACKGROUND` (white), as an image viewer shows it;
* the result is 8-bit ``"L"`` or ``"RGB"``: grey into an RGB model repeats the grey value, colour
  into a grey model takes Pillow's ITU-R 601 luma; ``CMYK``, ``YCbCr`` and 1-bit images are
  converted by Pillow.

Problems raise :class:`~nhlcli.data.errors.UnreadableImageError`, one line naming the file, so the
data sets' ``skip_bad_images`` leaves such files out and counts them.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from nhlcli.data.errors import SKIP_HINT, UnreadableImageError
from nhlcli.text import one_line, printable

# Pillow's own default limit (about 9459 x 9459), fixed here so a changed Pillow global does not move it.
MAX_IMAGE_PIXELS = 89_478_485
BACKGROUND = (255, 255, 255)  # what transparent pixels become
MODES = ("L", "RGB")
_GREY_MODES = {"1", "L", "LA", "La", "I", "F"}
_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
# EPS is decoded by running Ghostscript on the file: not for files of unknown origin.
_UNSAFE_FORMATS = {"EPS"}


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(name for name in Image.OPEN if name not in _UNSAFE_FORMATS)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``st_mode`` from ``os.stat``)."""
    for test, words in _FILE_KINDS:
        if test(mode):
            return words
    return "not a regular file"


def image_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be an image file (missing, a folder, a FIFO, ...), or ``None``.

    Only ``stat``s the path (symlinks followed), so it never blocks on a FIFO or a device.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be opened ({exc.strerror or type(exc).__name__})"
    return None if stat.S_ISREG(mode) else f"is {file_kind(mode)}, not an image file"


def _open_regular(path: str) -> int:
    """A read-only descriptor of the regular file ``path``; nothing else is opened or waited on."""
    problem = image_file_problem(path)
    if problem is not None:
        raise UnreadableImageError(f"image {printable(path)} {problem}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UnreadableImageError(
            f"image {printable(path)} cannot be opened ({exc.strerror or exc})"
        ) from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # replaced between the stat and the open
        os.close(fd)
        raise UnreadableImageError(f"image {printable(path)} is {file_kind(mode)}, not an image file")
    return fd


def _too_large(path: str, width: int | None, height: int | None, pixels: int) -> UnreadableImageError:
    shape = f"{width}x{height} = " if width and height else ""
    return UnreadableImageError(
        f"image {printable(path)} is too large to read safely ({shape}{pixels:,} pixels; "
        f"the limit is {MAX_IMAGE_PIXELS:,})"
    )


def _scaled_grey(img: Image.Image) -> Image.Image:
    """High bit-depth grey scaled into 8-bit ``"L"``, not clipped.

    16-bit modes divide by 257 (65535 -> 255). A 32-bit ``I`` image is taken as 8-bit when its
    values stay within 0..255, as 16-bit when within 0..65535, and scaled by its maximum beyond.
    A float ``F`` image in 0..1 is multiplied by 255; other float values are clipped to 0..255.
    """
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        values = values / 257.0
    elif img.mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
        values = values * 255.0
    elif img.mode == "I" and values.size and values.max() > 255:
        values = values / (257.0 if values.max() <= 65535 else values.max() / 255.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def _on_background(img: Image.Image) -> Image.Image:
    """An image with alpha composited onto :data:`BACKGROUND`, as ``"RGB"``."""
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return "A" in img.mode or "a" in img.mode or "transparency" in img.info


def to_8bit(img: Image.Image) -> Image.Image:
    """A decoded image of any Pillow mode as 8-bit ``"L"`` (grey modes) or ``"RGB"`` (the rest),
    with high bit depths scaled and transparency composited onto :data:`BACKGROUND`."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return _scaled_grey(img)
    grey = img.mode in _GREY_MODES
    if _has_alpha(img):
        img = _on_background(img)
        return img.convert("L") if grey else img
    if grey:
        return img if img.mode == "L" else img.convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def to_mode(img: Image.Image, mode: str | None) -> Image.Image:
    """``img`` (any Pillow mode) as 8-bit ``mode`` (``"L"`` or ``"RGB"``; ``None``: the image's own)."""
    if mode not in (None, *MODES):
        raise ValueError(f"image mode {mode!r} is not supported; use 'L' or 'RGB'")
    img = to_8bit(img)
    return img if mode is None or img.mode == mode else img.convert(mode)


def read_image(path: str | Path, mode: str | None = None, *, hint: str = SKIP_HINT) -> Image.Image:
    """The image file ``path`` as 8-bit ``mode`` (``"L"``, ``"RGB"``; ``None``: grey files ``"L"``,
    the rest ``"RGB"``), upright, decoded now. See the module notes for how modes are converted.

    Every problem (missing, not a regular file, too large, not an image, truncated, unreadable)
    raises :class:`UnreadableImageError`: one line naming the file, ending in ``hint``.
    """
    if mode not in (None, *MODES):
        raise ValueError(f"image mode {mode!r} is not supported; use 'L' or 'RGB'")
    path = str(path)
    try:
        fd = _open_regular(path)
        with open(path, "rb", opener=lambda _path, _flags: fd) as file, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bombs are checked below; odd metadata is no news
            try:
                img = Image.open(file, formats=_formats())
            except Image.DecompressionBombError as exc:
                found = _BOMB_PIXELS.search(str(exc))
                if found is None:
                    raise
                raise _too_large(path, None, None, int(found.group(1))) from exc
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _too_large(path, width, height, width * height)
            img.load()  # decode now, so broken pixel data fails here and not in a transform
            img = ImageOps.exif_transpose(img) or img
            return to_mode(img, mode)
    except UnreadableImageError as exc:
        raise UnreadableImageError(f"{exc}; {hint}") from exc
    except Image.UnidentifiedImageError as exc:  # its message names the file object, not the file
        reason = "not in a format Pillow reads"
        raise UnreadableImageError(f"cannot decode image {printable(path)} ({reason}); {hint}") from exc
    except Exception as exc:  # Pillow raises many types for broken files; all mean "this file"
        reason = one_line(exc) or type(exc).__name__
        raise UnreadableImageError(f"cannot decode image {printable(path)} ({reason}); {hint}") from exc
