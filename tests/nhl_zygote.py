"""A warm starter for the tests' ``nhl`` processes: it imports torch, timm and nhlcli once, then
forks one child per command, so each ``python -m nhlcli ARGS`` the tests run skips the ~4 s of
imports while staying a real process of its own (own exit status, own file descriptors, own locks,
normal interpreter shutdown).

Protocol, one JSON line each way over stdin/stdout:
  request  {"args": [...], "cwd": "...", "env": {...}, "umask": N, "out": PATH, "err": PATH,
            "timeout": SECONDS}
  replies  {"pid": N} at the fork, then {"code": N} or {"timeout": true}
The first line written is {"ready": true} or {"ready": false, "why": "..."} (the imports printed
something, which a real process would show on its stderr, so the caller must not use this starter).

``conftest.run_nhl`` starts one per test worker and falls back to a plain subprocess whenever the
starter cannot stand in faithfully (another environment, a second command at the same time). What
a child inherits from the test besides its environment, its working directory and umask, travels
with the request."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import sys
import tempfile
import time

# what the commands import lazily; importing it here, in the parent, is the time saved
PRELOAD = (
    "torch",
    "timm",
    "nhlcli.cli",
    "nhlcli.data.datasets",
    "nhlcli.evaluation",
    "nhlcli.experts",
    "nhlcli.gates.workflow",
    "nhlcli.model.files",
    "nhlcli.model.loading",
    "nhlcli.prediction",
    "nhlcli.taxonomy.build",
    "nhlcli.training.run",
)


def _send(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _preload() -> str:
    """Import PRELOAD with stderr caught; return whatever the imports printed."""
    with tempfile.TemporaryFile() as caught:
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            for name in PRELOAD:
                importlib.import_module(name)
            sys.stderr.flush()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        return caught.read().decode(errors="replace")


def _run_child(request: dict) -> None:
    """In the forked child: become ``python -m nhlcli ARGS`` and never return to the loop."""
    import random
    import runpy

    import numpy

    os.setpgid(0, 0)  # a timeout kills the command and any data-loading workers it started
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["out"], os.O_WRONLY),
                            (2, request["err"], os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    random.seed()  # a fresh process draws fresh entropy; the forked one would share the parent's
    numpy.random.seed()
    sys.argv = ["nhlcli", *request["args"]]
    runpy.run_module("nhlcli", run_name="__main__", alter_sys=True)
    raise SystemExit(0)  # main() always exits; this is for a __main__ that returns


def _wait(pid: int, timeout: float) -> dict:
    """The child's exit status, or a timeout after killing its process group."""
    deadline = time.monotonic() + timeout
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"timeout": True}
            ready, _, _ = select.select([pidfd], [], [], left)
            if ready:
                _, status = os.waitpid(pid, 0)
                return {"code": os.waitstatus_to_exitcode(status)}
    finally:
        os.close(pidfd)


def main() -> None:
    printed = _preload()
    if printed.strip():
        _send({"ready": False, "why": printed.strip()})
        return
    _send({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request)  # exits through the normal interpreter shutdown
        _send({"pid": pid})
        _send(_wait(pid, float(request["timeout"])))


if __name__ == "__main__":
    main()
