"""Unicode's emoji list as a class list with its own hierarchy (group -> subgroup -> emoji).

The classes are the fully-qualified emoji of Unicode's ``emoji-test.txt`` without skin-tone
variants (Debian package ``unicode-data``), named by their CLDR short names, with ids built
from their code points (``1F408`` for ``cat``), so ids are stable across runs and machines.
Each glyph is drawn once with the Noto Color Emoji font (Debian package
``fonts-noto-color-emoji``); glyphs that the font draws identically (``flag: Norway`` and
``flag: Bouvet Island``) cannot be told apart from pixels, so they are merged into one class
named by the shortest of their names, the others kept as its aliases (:func:`merged_glyphs`
lists them).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nhlcli.errors import NhlError

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_PX = 109  # the one size of Noto Color Emoji's bitmap strike
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
_LINE = re.compile(r"^([0-9A-F ]+?)\s*;\s*([a-z-]+)\s*#\s*\S+\s+E(\d+\.\d+)\s+(.+?)\s*$")


@dataclass(frozen=True)
class EmojiGlyph:
    """One emoji class: id from its code points, CLDR short name, place in Unicode's tree."""

    id: str
    name: str
    group: str
    subgroup: str
    text: str
    aliases: tuple[str, ...] = ()  # names of glyphs drawn identically, merged into this one


def _installed_file(variable: str, default: Path, what: str, package: str) -> Path:
    """A file a Debian package installs (the environment variable overrides where it is)."""
    path = Path(os.environ.get(variable, default))
    if not path.is_file():
        raise NhlError(
            f"{what} {path} is missing; install the Debian package {package} (apt-get install {package})"
        )
    return path


def emoji_test_file() -> Path:
    """Unicode's ``emoji-test.txt`` (``NHL_EMOJI_TEST`` overrides where it is)."""
    return _installed_file("NHL_EMOJI_TEST", EMOJI_TEST, "Unicode's emoji list", "unicode-data")


def emoji_font_file() -> Path:
    """The colour emoji font (``NHL_EMOJI_FONT`` overrides where it is)."""
    return _installed_file("NHL_EMOJI_FONT", EMOJI_FONT, "the colour emoji font", "fonts-noto-color-emoji")


def unicode_version(path: Path | None = None) -> str:
    """The emoji version the file states (``# Version: 15.0``)."""
    for line in (path or emoji_test_file()).read_text(encoding="utf-8").splitlines()[:20]:
        if line.startswith("# Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def parse_emoji_test(path: Path) -> list[EmojiGlyph]:
    """Fully-qualified emoji without skin tones, in Unicode's (CLDR) order."""
    glyphs: list[EmojiGlyph] = []
    group = subgroup = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            match = _LINE.match(line)
            if not match:
                raise NhlError(f"{path}:{number}: not an emoji-test line ({line[:60]!r}); use Unicode's file")
            points = [int(p, 16) for p in match.group(1).split()]
            if match.group(2) != "fully-qualified" or SKIN_TONES & set(points):
                continue
            ids = "-".join(f"{p:04X}" for p in points)
            glyphs.append(EmojiGlyph(ids, match.group(4), group, subgroup, "".join(map(chr, points))))
    if not glyphs:
        raise NhlError(f"{path} lists no fully-qualified emoji; use Unicode's emoji-test.txt")
    return glyphs


@lru_cache(maxsize=2)
def _font(path: str) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(path, FONT_PX)


def rasterise(text: str, font_path: Path | None = None) -> Any:
    """The glyph drawn once at the font's own size, cropped to its ink, as an RGBA image."""
    from PIL import Image, ImageDraw

    font = _font(str(font_path or emoji_font_file()))
    canvas = Image.new("RGBA", (FONT_PX * 3, FONT_PX * 3 // 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise NhlError(f"the emoji font draws nothing for {text!r}; use fonts-noto-color-emoji")
    return canvas.crop(box)


@lru_cache(maxsize=1)
def _glyphs_and_merges() -> tuple[tuple[EmojiGlyph, ...], tuple[tuple[str, ...], ...]]:
    glyphs = parse_emoji_test(emoji_test_file())
    font = emoji_font_file()
    same: dict[str, list[int]] = {}
    for i, glyph in enumerate(glyphs):
        image = rasterise(glyph.text, font)
        same.setdefault(hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest(), []).append(i)
    # of glyphs drawn alike, the shortest name stays (flag: Norway, not flag: Bouvet Island)
    keeper = {}
    for members in same.values():
        kept = min(members, key=lambda i: (len(glyphs[i].name), i))
        keeper[kept] = [glyphs[i].name for i in members if i != kept]
    kept_glyphs = tuple(
        EmojiGlyph(g.id, g.name, g.group, g.subgroup, g.text, tuple(keeper[i]))
        for i, g in enumerate(glyphs)
        if i in keeper
    )
    merges = tuple((g.name, *g.aliases) for g in kept_glyphs if g.aliases)
    return kept_glyphs, merges


def emoji_glyphs() -> tuple[EmojiGlyph, ...]:
    """Every emoji class, identical glyphs merged (drawn once each, about a second)."""
    return _glyphs_and_merges()[0]


def merged_glyphs() -> tuple[tuple[str, ...], ...]:
    """The names drawn identically, each tuple merged into its first name (the class's)."""
    return _glyphs_and_merges()[1]


def slug(text: str) -> str:
    """A node id from a Unicode group name: ``Animals & Nature`` -> ``animals-nature``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
