"""Advisory locks on outputs: two nhl processes never write one file or checkpoint directory at once.

Without them two ``nhl train -o same.safetensors`` both run, both print "wrote", and the last
writer silently wins. A command takes the lock on each output when it checks the path
(:mod:`nhlcli.paths` calls :func:`hold`), before any work, and keeps it until the process ends
(or :func:`release_all`); a second writer is refused at once with one line naming the first.

The lock files live in a private per-user folder (``$XDG_RUNTIME_DIR/nhl-locks`` or
``<tmp>/nhl-locks-<uid>``), named by a digest of the output's resolved path, so nothing is left in
the user's folders, and two spellings or a symlink of one output meet on one lock. ``fcntl.flock``
locks vanish with the process (kill -9 included), so a crash never leaves a stale lock; the file
itself is removed on release with the lock still held, and a taker checks that the file it locked
is still the one on disk, so removal never lets two processes hold one lock. Re-entrant within a
process: a library function that checks a path its command already holds just goes on.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nhlcli.errors import NhlError
from nhlcli.text import printable

LOCK_DIR_ENV = "NHL_LOCK_DIR"  # where lock files go, for tests and unusual set-ups
_held: dict[str, tuple[int, Path, int]] = {}  # key -> (fd, lock file, pid that took it)


def lock_directory() -> Path:
    """The private folder of this user's lock files (created 0700; refused when another user owns it,
    since whoever can write there could hold our locks)."""
    given = os.environ.get(LOCK_DIR_ENV)
    if given:
        folder = Path(given)
    elif os.environ.get("XDG_RUNTIME_DIR") and Path(os.environ["XDG_RUNTIME_DIR"]).is_dir():
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "nhl-locks"
    else:
        folder = Path(tempfile.gettempdir()) / f"nhl-locks-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        raise NhlError(f"cannot make the lock folder {folder}: {exc.strerror}; set {LOCK_DIR_ENV}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise NhlError(
            f"the lock folder {folder} is not a private folder of this user; remove it or set {LOCK_DIR_ENV}"
        )
    return folder


def lock_key(path: str | os.PathLike[str]) -> str:
    """One name per output, however it is spelled: the resolved path (symlinks followed)."""
    return str(Path(path).resolve())


def _command_line() -> str:
    args = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    if args and args[0] in ("__main__.py", "nhl", "-m", "-c"):
        args[0] = "nhl"
    text = printable(" ".join(args))
    return text if len(text) <= 100 else text[:97] + "..."


def _holder(lock_file: Path) -> str:
    try:
        text = lock_file.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another nhl process"
    return f"another nhl process (pid {pid}, '{printable(command)}')"


def hold(path: str | os.PathLike[str], label: str = "output") -> bool:
    """Take the lock on output ``path`` until the process ends (or :func:`release`); True when taken
    now, False when this process already held it. Refuses with one line when another process holds it."""
    if (os.environ.get("RANK", "0") or "0") != "0":
        return False  # under torchrun every rank runs the command; rank 0 alone writes
    key = lock_key(path)
    if key in _held and _held[key][2] == os.getpid():
        return False
    lock_file = lock_directory() / (
        hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest() + ".lock"
    )
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NhlError(
                f"{label} {printable(str(path))} is being written by {_holder(lock_file)}; wait for it to "
                "finish or choose another path"
            ) from None
        try:
            same = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed it on release after we opened it: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {_command_line()}\n".encode("utf-8", "replace"))
    _held[key] = (fd, lock_file, os.getpid())
    return True


def release(path: str | os.PathLike[str]) -> None:
    """Give back the lock on ``path`` (a no-op when not held by this process)."""
    _release_key(lock_key(path))


def _release_key(key: str) -> None:
    entry = _held.get(key)
    if entry is None:
        return
    fd, lock_file, owner = entry
    del _held[key]
    if owner != os.getpid():  # a forked child: the lock is its parent's to give back
        return
    try:
        lock_file.unlink(missing_ok=True)  # still locked: a waiting taker sees the file gone
    finally:
        os.close(fd)


def release_all() -> None:
    """Give back every lock this process holds (at exit; tests call it between cases)."""
    for key in list(_held):
        _release_key(key)


@contextmanager
def holding(path: str | os.PathLike[str], label: str = "output") -> Iterator[None]:
    """Hold the lock on ``path`` inside a ``with`` block; a lock the process already held stays held."""
    taken = hold(path, label)
    try:
        yield
    finally:
        if taken:
            release(path)


atexit.register(release_all)
