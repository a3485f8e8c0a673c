"""Image files and folders as a hostile but fair user makes them (issue 34): the same pixels on
every path, and no hang, traceback or Pillow warning on odd files.

Two parametrised matrices that grow with each new case:

* :data:`MODES`: one picture saved in every image mode Pillow reads. The data sets (train, eval)
  and ``nhl predict`` must turn each into the same tensor, and that tensor must be the picture
  as a viewer shows it (16-bit scaled, not clipped; transparency on white).
* :data:`ENTRIES`: one hostile folder entry each (symlink loop, FIFO, folder named like an image,
  decompression bomb, ...), through the library and through ``nhl eval``/``predict``/``train``.
  Every library call runs under an alarm and every command under a timeout, so a hang fails the
  test instead of blocking the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, make_tiny_data, run_nhl, tiny_model
from PIL import Image

from nhlcli.data import open_dataset
from nhlcli.data.errors import UnreadableImageError
from nhlcli.data.images import MAX_IMAGE_PIXELS
from nhlcli.data.loaders import build_transform
from nhlcli.errors import NhlError
from nhlcli.model.files import save_model
from nhlcli.prediction import load_image
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.sources import build_flat_tree

SIDE = 16
CLASSES = ["cat", "dog"]
HANG_SECONDS = 60  # a walk or read still running after this long is a hang
COMMAND_TIMEOUT = 240  # generous: the machine is shared; a hang runs into it, a slow start does not
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    """Fail (rather than block the suite) when the body runs longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def one_line(exc: BaseException, *fragments: str) -> str:
    message = str(exc)
    assert isinstance(exc, NhlError), repr(exc)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return message


# ------------------------------------------------------------------ one picture in every mode
RNG = np.random.default_rng(34)
GREY = RNG.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
COLOUR = RNG.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
ALPHA[0, :] = 0  # fully transparent and fully opaque pixels too
ALPHA[1, :] = 255
PALETTE_IMAGE = Image.fromarray(COLOUR).quantize(16)
PALETTE = np.asarray(PALETTE_IMAGE.getpalette(), np.float64).reshape(-1, 3)
INDEX = np.asarray(PALETTE_IMAGE)


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing onto white, computed here without Pillow."""
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(colour * a + 255 * (1 - a))


def repeat(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.float64)[..., None], 3, axis=2)


def cmyk_as_rgb(path: Path) -> np.ndarray:
    """The CMYK JPEG's decoded ink values as RGB by the textbook formula (JPEG is lossy, so the
    file's own values, not :data:`COLOUR`)."""
    with Image.open(path) as img:
        cmyk = np.asarray(img, np.float64)
    return (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255


@dataclass(frozen=True)
class ModeCase:
    file: str  # name (its extension picks the format)
    make: Callable[[], Image.Image]
    expected: Callable[[Path], np.ndarray]  # HxWx3 in 0..255 from the file: as a viewer shows it
    save: dict | None = None
    in_folders: bool = True  # an extension ImageFolders read (timm's: png, jpg, jpeg); else predict only


MODES = {
    "RGB": ModeCase("rgb.png", lambda: Image.fromarray(COLOUR), lambda _: COLOUR.astype(np.float64)),
    "L (8-bit grey)": ModeCase("grey.png", lambda: Image.fromarray(GREY), lambda _: repeat(GREY)),
    "I;16 (16-bit grey PNG)": ModeCase(
        "grey16.png",
        lambda: Image.fromarray(
            np.minimum(GREY.astype(np.int64) * 257 + RNG.integers(0, 128, GREY.shape), 65535).astype(
                np.uint16
            )
        ),
        lambda _: repeat(GREY),
    ),
    "I (32-bit grey TIFF)": ModeCase(
        "grey32.tif",
        lambda: Image.fromarray(GREY.astype(np.int32) * 257),
        lambda _: repeat(GREY),
        in_folders=False,
    ),
    "1 (1-bit)": ModeCase(
        "bits.png", lambda: Image.fromarray(GREY > 127), lambda _: repeat(np.where(GREY > 127, 255, 0))
    ),
    "P (palette)": ModeCase("palette.png", lambda: PALETTE_IMAGE, lambda _: PALETTE[INDEX]),
    "P with a transparent index": ModeCase(
        "palette-transparent.png",
        lambda: PALETTE_IMAGE,
        lambda _: on_white(PALETTE[INDEX], np.where(INDEX == 3, 0, 255)),
        save={"transparency": 3},
    ),
    "LA (grey and alpha)": ModeCase(
        "grey-alpha.png",
        lambda: Image.merge("LA", (Image.fromarray(GREY), Image.fromarray(ALPHA))),
        lambda _: repeat(on_white(GREY[..., None], ALPHA)[..., 0]),
    ),
    "RGBA": ModeCase(
        "rgba.png",
        lambda: Image.fromarray(np.dstack([COLOUR, ALPHA]), "RGBA"),
        lambda _: on_white(COLOUR, ALPHA),
    ),
    "CMYK (JPEG)": ModeCase("cmyk.jpg", lambda: Image.fromarray(COLOUR).convert("CMYK"), cmyk_as_rgb),
}


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, what a grey model sees of a colour picture."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def transform(in_chans: int) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform at the images' own size: no resampling, pixels / 255."""
    return build_transform(SIDE, is_training=False, mean=(0.0,), std=(1.0,), in_chans=in_chans, crop_pct=1.0)


@pytest.fixture(scope="module")
def mode_folder(tmp_path_factory) -> Path:
    """An ImageFolder whose ``cat`` class holds the picture in every mode of :data:`MODES`."""
    root = tmp_path_factory.mktemp("modes")
    make_tiny_data.make_image_folder(root, CLASSES, per_class=2, size=SIDE)
    for case in MODES.values():
        case.make().save(root / "train" / "cat" / case.file, **(case.save or {}))
    return root


@pytest.mark.parametrize("in_chans", [3, 1])
@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_gives_the_same_tensor_on_every_path(mode_folder, name, in_chans):
    case, tf = MODES[name], transform(in_chans)
    path = mode_folder / "train" / "cat" / case.file
    with no_hang():
        dataset = open_dataset(mode_folder, "train", tf, mode="L" if in_chans == 1 else "RGB")
        names = [Path(p).name for p, _ in dataset.samples]
        from_predict = tf(load_image(path, "L" if in_chans == 1 else "RGB"))
    assert (case.file in names) == case.in_folders
    from_data = dataset[names.index(case.file)][0] if case.in_folders else from_predict
    assert from_data.shape == (in_chans, SIDE, SIDE)
    assert torch.equal(from_data, from_predict)  # train, eval and predict: one reader
    expected = case.expected(path)
    expected = luma(expected)[None] if in_chans == 1 else expected.transpose(2, 0, 1)
    torch.testing.assert_close(
        from_data.double(), torch.from_numpy(expected / 255), atol=1 / 255 + 1e-6, rtol=0
    )


@pytest.mark.parametrize("in_chans", [3, 1])
def test_16_bit_and_8_bit_copies_of_a_picture_are_one_tensor(mode_folder, in_chans):
    tf, mode = transform(in_chans), "L" if in_chans == 1 else "RGB"
    folder = mode_folder / "train" / "cat"
    dataset = open_dataset(mode_folder, "train", tf, mode=mode)
    names = [Path(p).name for p, _ in dataset.samples]
    eight, sixteen = (dataset[names.index(n)][0] for n in ("grey.png", "grey16.png"))
    torch.testing.assert_close(eight, sixteen, atol=1 / 255 + 1e-6, rtol=0)  # data set path
    predicted = [tf(load_image(folder / n, mode)) for n in ("grey.png", "grey16.png")]
    torch.testing.assert_close(*predicted, atol=1 / 255 + 1e-6, rtol=0)  # predict path
    assert sixteen.std() > 0.2  # scaled: Pillow's own convert would clip it to near white


def flat_model() -> torch.nn.Module:
    return tiny_model(build_flat_tree([ClassEntry(c, c) for c in CLASSES]), kind="flat", size=SIDE, seed=0)


def write_16_bit_copy(source: Path, target: Path) -> None:
    """The same ImageFolder with every image saved as 16-bit grey PNG (values x 257)."""
    for image in source.rglob("*.*"):
        grey = np.asarray(Image.open(image).convert("L"), np.uint16) * 257
        out = target / image.relative_to(source).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(out)


@pytest.mark.slow
def test_eval_scores_a_16_bit_copy_exactly_as_the_8_bit_original(tmp_path):
    eight = make_tiny_data.make_image_folder(tmp_path / "eight", CLASSES, per_class=2, size=SIDE)
    for image in list(eight.rglob("*.jpg")):  # lossless grey originals, so the copies hold the same values
        Image.open(image).convert("L").save(image.with_suffix(".png"))
        image.unlink()
    for image in eight.rglob("*.png"):
        Image.open(image).convert("L").save(image)
    write_16_bit_copy(eight, tmp_path / "sixteen")
    model = tmp_path / "m.safetensors"
    save_model(flat_model(), model)
    reports = []
    for data in (eight, tmp_path / "sixteen"):
        run = run_nhl("eval", model, "--data", data, "--workers", "0", "--device", "cpu", "--json",
                      timeout=COMMAND_TIMEOUT)  # fmt: skip
        assert run.code == 0, run.err
        reports.append(json.loads(run.out))
    for key in ("images", "top1", "loss"):
        assert reports[0][key] == reports[1][key], key


@pytest.mark.slow
def test_predict_reads_every_mode_through_the_cli(mode_folder, tmp_path):
    model = tmp_path / "m.safetensors"
    save_model(flat_model(), model)
    files = [mode_folder / "train" / "cat" / case.file for case in MODES.values()]
    run = run_nhl("predict", model, *files, "--device", "cpu", "--json", timeout=COMMAND_TIMEOUT)
    assert run.code == 0, run.err
    assert "Warning" not in run.err
    assert [Path(p["file"]).name for p in json.loads(run.out)["predictions"]] == [f.name for f in files]


# ------------------------------------------------------------------ hostile folder entries
def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims ``width`` x ``height`` pixels (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def plant_symlink_loop(folder: Path) -> Path:
    os.symlink("..", folder / "up")
    return folder / "up"


def plant_fifo(folder: Path) -> Path:
    os.mkfifo(folder / "x.png")
    return folder / "x.png"


def plant_folder_named_like_an_image(folder: Path) -> Path:
    (folder / "x.png").mkdir()
    return folder / "x.png"


def plant_bomb(width: int, height: int) -> Callable[[Path], Path]:
    def plant(folder: Path) -> Path:
        (folder / "bomb.png").write_bytes(png_claiming(width, height))
        return folder / "bomb.png"

    return plant


def plant_text(folder: Path) -> Path:
    (folder / "notes.png").write_text("not an image, whatever the name says\n")
    return folder / "notes.png"


def plant_postscript(folder: Path) -> Path:
    """An EPS file named .png: Pillow would decode it by running Ghostscript on it."""
    Image.fromarray(COLOUR).save(folder / "drawing.eps")
    (folder / "drawing.eps").rename(folder / "drawing.png")
    return folder / "drawing.png"


def plant_truncated(folder: Path) -> Path:
    (bad,) = make_tiny_data.write_bad_images(folder, ["truncated.jpg"], size=SIDE)
    return bad


def plant_dangling_link(folder: Path) -> Path:
    os.symlink("gone.png", folder / "dangling.png")
    return folder / "dangling.png"


def plant_link_to_an_image(folder: Path) -> Path:
    outside = folder.parent.parent.parent / f"outside-{folder.parent.name}.png"
    Image.fromarray(GREY).save(outside)
    os.symlink(outside, folder / "linked.png")
    return folder / "linked.png"


def plant_empty_class(folder: Path) -> Path:
    (folder.parent / "owl").mkdir()
    return folder.parent / "owl"


def plant_hidden_file(folder: Path) -> Path:
    """What macOS leaves beside every copied file: AppleDouble metadata named ``._<name>``."""
    (folder / "._cat_000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    return folder / "._cat_000.png"


def plant_unreadable_file(folder: Path) -> Path:
    path = folder / "locked.png"
    Image.fromarray(GREY).save(path)
    path.chmod(0)
    return path


def plant_unreadable_folder(folder: Path) -> Path:
    (folder / "locked").mkdir()
    Image.fromarray(GREY).save(folder / "locked" / "a.png")
    (folder / "locked").chmod(0)
    return folder / "locked"


@dataclass(frozen=True)
class Entry:
    """A hostile entry planted in the ``cat`` folder of both splits, and what each path must do.

    ``opens``: fragments of the one-line error ``open_dataset`` raises (``None``: it opens, with
    the entry among its samples unless ``listed`` is False). ``reads``: fragments of the error
    reading the entry raises (``None``: it reads); ``skip_bad_images`` then leaves it out.
    ``predict``: fragments of ``nhl predict``'s error.
    """

    plant: Callable[[Path], Path]
    opens: tuple[str, ...] | None = None
    listed: bool = True
    reads: tuple[str, ...] | None = None
    predict: tuple[str, ...] | None = None
    needs_non_root: bool = False


BOMB = ("too large", f"{MAX_IMAGE_PIXELS:,}")
DECODE = ("cannot decode",)
ENTRIES = {
    "symlink loop (up -> ..)": Entry(plant_symlink_loop, listed=False),
    "FIFO named x.png": Entry(
        plant_fifo,
        reads=("x.png", "FIFO", "not an image file"),
        predict=("x.png", "FIFO"),
    ),
    "folder named x.png": Entry(
        plant_folder_named_like_an_image, listed=False, predict=("x.png", "a folder")
    ),
    "bomb over the warning limit": Entry(
        plant_bomb(10_000, 9_000),
        reads=("bomb.png", "10000x9000", *BOMB),
        predict=("bomb.png", "10000x9000", *BOMB),
    ),
    "bomb over Pillow's error limit": Entry(
        plant_bomb(30_000, 30_000),
        reads=("bomb.png", "900,000,000", *BOMB),
        predict=("bomb.png", "900,000,000", *BOMB),
    ),
    "text named .png": Entry(plant_text, reads=("notes.png", *DECODE), predict=("notes.png", *DECODE)),
    "PostScript named .png": Entry(
        plant_postscript, reads=("drawing.png", *DECODE), predict=("drawing.png", *DECODE)
    ),
    "truncated JPEG": Entry(
        plant_truncated, reads=("truncated.jpg", *DECODE), predict=("truncated.jpg", *DECODE)
    ),
    "dangling symlink": Entry(
        plant_dangling_link,
        reads=("dangling.png", "does not exist"),
        predict=("dangling.png", "does not exist"),
    ),
    "symlink to an image file": Entry(plant_link_to_an_image),
    "empty class folder": Entry(plant_empty_class, opens=("owl", "has no images")),
    "hidden AppleDouble file": Entry(plant_hidden_file, listed=False),
    "unreadable file": Entry(
        plant_unreadable_file,
        reads=("locked.png", "Permission denied"),
        predict=("locked.png", "Permission denied"),
        needs_non_root=True,
    ),
    "unreadable folder": Entry(
        plant_unreadable_folder, opens=("locked", "cannot list", "Permission denied"), needs_non_root=True
    ),
}


def skip_if_root(entry: Entry) -> None:
    if entry.needs_non_root and IS_ROOT:
        pytest.skip("root reads files whatever their permissions")


def hostile_folder(root: Path, entry: Entry) -> tuple[Path, Path]:
    """A tiny ImageFolder with ``entry`` planted in ``train/cat`` and ``val/cat``; the data and the
    planted train entry."""
    data = make_tiny_data.make_image_folder(root / "data", CLASSES, per_class=2, size=SIDE)
    entry.plant(data / "val" / "cat")
    return data, entry.plant(data / "train" / "cat")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(flat_model(), path)
    return path


@pytest.mark.parametrize("name", list(ENTRIES))
def test_library_walks_and_reads_a_hostile_entry_in_one_line(tmp_path, name):
    entry = ENTRIES[name]
    skip_if_root(entry)
    data, planted = hostile_folder(tmp_path, entry)
    with no_hang():
        if entry.opens is not None:
            with pytest.raises(NhlError) as err:
                open_dataset(data, "train")
            one_line(err.value, *entry.opens)
            return
        dataset = open_dataset(data, "train", transform(3))
        names = [p for p, _ in dataset.samples]
        assert (str(planted) in names) == entry.listed, names
        assert not [n for n in names if f"{os.sep}up{os.sep}" in n]  # nothing read through a loop
        for index in range(len(dataset)):  # every sample reads or is one named bad image
            if names[index] != str(planted):
                assert dataset[index][1] >= 0
        if not entry.listed:
            return
        if entry.reads is None:
            assert dataset[names.index(str(planted))][1] >= 0
            return
        with pytest.raises(UnreadableImageError) as err:
            dataset[names.index(str(planted))]
        one_line(err.value, *entry.reads, "`skip_bad_images`")
        dataset.skip_bad_images = True
        image, target = dataset[names.index(str(planted))]
        assert target < 0 and not image.any()  # a placeholder, counted and named by the loop


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, e in ENTRIES.items() if e.predict])
def test_predict_refuses_a_hostile_file_in_one_line(tmp_path, name, model_file):
    entry = ENTRIES[name]
    skip_if_root(entry)
    _, planted = hostile_folder(tmp_path, entry)
    run = run_nhl("predict", model_file, planted, "--device", "cpu", timeout=COMMAND_TIMEOUT)
    assert_one_line_error(run, *entry.predict)
    assert "DecompressionBomb" not in run.err


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ENTRIES))
def test_eval_on_a_hostile_folder_finishes_or_stops_in_one_line(tmp_path, name, model_file):
    entry = ENTRIES[name]
    skip_if_root(entry)
    data, _ = hostile_folder(tmp_path, entry)
    run = run_nhl("eval", model_file, "--data", data, "--workers", "0", "--device", "cpu", "--json",
                  timeout=COMMAND_TIMEOUT)  # fmt: skip
    assert "Warning" not in run.err and "Traceback" not in run.err
    fragments = entry.opens or entry.reads
    if fragments is None:
        assert run.code == 0, run.err
        extra = entry.listed and entry.reads is None  # a linked image counts; a loop adds nothing
        assert json.loads(run.out)["images"] == 2 + extra  # the val images, none twice
    else:
        assert_one_line_error(run, *fragments)


TRAIN = ["--flat", "--input-size", str(SIDE), "--batch-size", "4", "--workers", "0", "--augment", "none",
         "--epochs", "1", "--device", "cpu", "--json"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["symlink loop (up -> ..)", "FIFO named x.png", "bomb over the warning limit"]
)
def test_train_on_a_hostile_folder_ends(tmp_path, name):
    """The cases that hung or printed Pillow's warning: train ends, with the entry named when
    ``--skip-bad-images`` leaves it out."""
    entry = ENTRIES[name]
    data, planted = hostile_folder(tmp_path, entry)
    out = tmp_path / "m.safetensors"
    if entry.opens or entry.reads:
        stopped = run_nhl("train", "--data", data, "-o", out, *TRAIN, timeout=COMMAND_TIMEOUT)
        assert_one_line_error(stopped, planted.name, "--skip-bad-images")
        assert not out.exists()
    run = run_nhl("train", "--data", data, "-o", out, *TRAIN, "--skip-bad-images", timeout=COMMAND_TIMEOUT)
    assert run.code == 0, run.err
    assert "Warning" not in run.err
    named = {Path(p).name for p in json.loads(run.out).get("bad_images", [])}
    assert named == ({planted.name} if entry.opens or entry.reads else set())
