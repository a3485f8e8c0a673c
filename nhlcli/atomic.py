"""Atomic file writes: a reader never sees a half-written file, a failure leaves none behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    The rename is atomic on POSIX and Windows, so ``path`` either keeps its old content or gets
    the complete new content. On any error the temporary file is removed. A symlinked ``path``
    (a ``--cache`` pointing to a shared cache) is updated through the link: the link's final target
    is replaced, and the link stays.
    """
    given = target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes 0600, and writers that replace ``tmp`` by their own temporary file
        # (safetensors' save_file, some exporters) bring theirs: give the finished file the
        # mode any new file of the user gets
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return given


def file_mode() -> int:
    """The mode a new file of this user gets: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask`` can
    only be read by setting it, which races with threads creating files meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _dump(value: Any, indent: int) -> str:
    if isinstance(value, dict) and value:
        pad = " " * (indent + 2)
        items = [
            f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {_dump(v, indent + 2)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and value:
        if not any(isinstance(v, (dict, list)) for v in value):
            one_line = json.dumps(value, ensure_ascii=False)
            if indent + len(one_line) <= 100:
                return one_line
        pad = " " * (indent + 2)
        return "[\n" + ",\n".join(pad + _dump(v, indent + 2) for v in value) + "\n" + " " * indent + "]"
    return json.dumps(value, ensure_ascii=False)


def dumps_json(data: Any) -> str:
    """The project's canonical JSON text: indented, key order kept, newline at the end.

    Short lists of plain values stay on one line so that files read well. One function so
    that equal data always gives byte-identical files.
    """
    return _dump(data, 0) + "\n"


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as canonical JSON to ``path`` atomically."""
    return atomic_write_text(path, dumps_json(data))
