"""Output paths checked before any work starts: never an input, always writable.

A command that finds out at save time that it cannot write (or, worse, that it is about to
replace the file it read) has either wasted the user's time or destroyed their data. Every
command therefore checks each output path here first, against all of its inputs; an output inside
an input folder (a model written into the data set, where it would become a class folder) is
refused too. A checked output is then locked (:mod:`nhlcli.locks`) until the process ends, so a
second nhl process writing it is refused before it starts work.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from nhlcli import locks
from nhlcli.errors import NhlError

PathLike = str | os.PathLike[str]


def same_file(first: PathLike, second: PathLike) -> bool:
    """Whether two spellings name one file: resolved paths (``./../x``, symlinks) or hard links."""
    a, b = Path(first), Path(second)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_among(path: PathLike, files: Iterable[PathLike], label: str = "output") -> None:
    """Refuse an output that is one of many input files (``nhl predict -o`` over a folder): one
    ``stat`` each, where :func:`check_output_file` resolves every spelling. An output that does
    not exist yet cannot be an existing file."""
    try:
        own = os.stat(path)
    except OSError:
        return
    for given in files:
        try:
            other = os.stat(given)
        except OSError:
            continue
        if (own.st_dev, own.st_ino) == (other.st_dev, other.st_ino):
            raise NhlError(
                f"{label} {path} is also an input of this command ({given}); writing it would destroy "
                "the input: choose another output path"
            )


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def _refuse_inside_input(target: Path, given: Path, label: str) -> None:
    """An output inside an input folder (``--data D`` with ``-o D/train/m.safetensors``) would
    change that input: the data set gains a file or a class folder."""
    if given.is_dir() and not same_file(target, given) and _inside(target, given):
        raise NhlError(
            f"{label} {target} is inside the input folder {given}; writing there would change that input "
            "(a data set would gain a class folder): choose a path outside it"
        )


def _nearest_existing(path: Path) -> Path:
    probe = path.resolve().parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _writable_directory(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (tried, since permission bits lie to root
    and read-only file systems such as /proc only say so when written)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".nhl-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _check_location(path: Path, label: str) -> None:
    """The parent chain of ``path`` is (or can become) a writable directory."""
    ancestor = _nearest_existing(path)
    if not ancestor.is_dir():
        raise NhlError(f"{label} {path}: {ancestor} is a file, not a directory; choose another path")
    if not _writable_directory(ancestor):
        raise NhlError(f"{label} {path}: cannot write in {ancestor} (read-only or no permission)")


def check_output_file(
    path: PathLike | None, inputs: Iterable[PathLike | None] = (), label: str = "output"
) -> Path | None:
    """Refuse an output file that is empty, a directory, unwritable, one of ``inputs`` or inside an
    input folder; then lock it for this process (refused when another nhl process writes it).

    ``label`` names the output in the message (the CLI passes its flag, e.g. ``--report``).
    Returns the path (``None`` passes through, for optional outputs).
    """
    if path is None:
        return None
    if str(path).strip() in ("", "."):
        raise NhlError(f"{label} is empty; give a file name")
    target = Path(path)
    for given in inputs:
        if given is not None and same_file(target, Path(given)):
            raise NhlError(
                f"{label} {target} is also an input of this command ({given}); writing it would destroy "
                "the input: choose another output path"
            )
        if given is not None:
            _refuse_inside_input(target, Path(given), label)
    if target.is_dir():
        raise NhlError(f"{label} {target} is a directory; give a file name")
    if target.exists() and not target.is_file():
        raise NhlError(f"{label} {target} exists and is not a regular file; choose another path")
    _check_location(target, label)
    locks.hold(target, label)
    return target


def check_output_dir(
    path: PathLike | None, inputs: Iterable[PathLike | None] = (), label: str = "output directory"
) -> Path | None:
    """Refuse an output directory that is a file, unwritable, or holds / is / lies inside one of
    ``inputs``; then lock it for this process (refused when another nhl process writes it)."""
    if path is None:
        return None
    if str(path).strip() == "":
        raise NhlError(f"{label} is empty; give a directory")
    target = Path(path)
    for given in inputs:
        if given is not None and (same_file(target, Path(given)) or _inside(Path(given), target)):
            raise NhlError(
                f"{label} {target} holds an input of this command ({given}); choose another directory"
            )
        if given is not None:
            _refuse_inside_input(target, Path(given), label)
    if target.exists() and not target.is_dir():
        raise NhlError(f"{label} {target} is a file, not a directory; choose another path")
    if target.is_dir():
        if not _writable_directory(target):
            raise NhlError(f"{label} {target}: cannot write there (read-only or no permission)")
    else:
        _check_location(target, label)
    locks.hold(target, label)
    return target


def check_distinct_outputs(outputs: dict[str, PathLike | None]) -> None:
    """Refuse two outputs of one command that name the same file (the second would replace the first)."""
    seen: dict[Path, str] = {}
    for label, path in outputs.items():
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise NhlError(
                f"{label} and {seen[resolved]} name the same file {path}; give two different paths"
            )
        seen[resolved] = label
