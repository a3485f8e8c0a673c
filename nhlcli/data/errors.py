"""Data errors that stay one line even when they cross a DataLoader worker boundary.

A DataLoader worker cannot send an exception object to the main process: torch formats the
traceback as text and rebuilds the exception there as ``type(msg)`` with a multi-line ``msg``
("Caught X in DataLoader worker process 0. Original Traceback ... X: <message>").
:class:`DataError` recognises that text in its constructor and keeps only the original one-line
message, so the main process sees a clean :class:`~nhlcli.errors.NhlError` without any help from
the caller. :func:`unwrap_worker_error` does the same for any other exception.

An image file that cannot be decoded raises :class:`UnreadableImageError`, a :class:`DataError`
whose message names the file and suggests ``--skip-bad-images``; with that option on the
datasets return a placeholder instead (see :mod:`nhlcli.data.bad`).
"""

from __future__ import annotations

import re

from nhlcli.errors import NhlError
from nhlcli.text import one_line

_WORKER_MARK = "Original Traceback"
_TYPE_PREFIX = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception): ")


def _original_message(text: str) -> str | None:
    """The last line of a traceback text that torch's worker wrapper produced, without its type."""
    if _WORKER_MARK not in text:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    return _TYPE_PREFIX.sub("", lines[-1].strip(), count=1) if lines else None


class DataError(NhlError):
    """A problem with the data (missing, unreadable or mislabelled files); message is one line.

    Raised inside DataLoader workers too: when torch rebuilds it from the worker's traceback text
    the constructor extracts the original message again.
    """

    def __init__(self, message: str = "") -> None:
        text = str(message)
        original = _original_message(text)
        super().__init__(one_line(original if original is not None else text))


class UnreadableImageError(DataError):
    """An image file that cannot be decoded (truncated, empty, not an image): a separate type so
    ``skip_bad_images`` leaves out exactly these and still stops on every other data error."""


SKIP_HINT = "remove or replace the file, or pass `skip_bad_images` to leave unreadable images out"


def unreadable_image_error(path: str, exc: BaseException) -> UnreadableImageError:
    """The one-line error for an image file that failed to decode with ``exc``."""
    reason = one_line(exc) or type(exc).__name__
    return UnreadableImageError(f"cannot decode image {path} ({reason}); {SKIP_HINT}")


def unreadable_image_message(exc: BaseException) -> str | None:
    """The one-line message when ``exc`` reports a data problem, also as re-raised from a worker.

    For a training loop's ``except`` around iterating a DataLoader: an :class:`NhlError` (what the
    datasets raise, rebuilt by torch in the main process) gives its cleaned message; an exception
    of another type whose worker traceback ends in one gives that message too; anything else
    (a bug) gives ``None`` so the caller re-raises it.
    """
    text = str(exc)
    original = _original_message(text)
    if isinstance(exc, NhlError):
        return one_line(original if original is not None else text)
    if original is None:
        return None
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    kind = last.split(":", 1)[0].rsplit(".", 1)[-1]
    if kind in ("DataError", "UnreadableImageError", "NhlError"):
        return one_line(original)
    if kind in ("UnidentifiedImageError", "DecompressionBombError"):
        return f"cannot decode an image ({one_line(original)}); {SKIP_HINT}"
    return None


def unwrap_worker_error(exc: BaseException) -> NhlError:
    """A one-line :class:`NhlError` for an exception re-raised from a DataLoader worker.

    :class:`NhlError` subclasses come back as they are once their message is cleaned; other
    exceptions keep their type name, since they are bugs rather than data problems.
    """
    text = str(exc)
    original = _original_message(text)
    if isinstance(exc, NhlError):
        if original is None and "\n" not in text:
            return exc
        try:
            return type(exc)(one_line(original or text))
        except Exception:  # a subclass with another constructor
            return NhlError(one_line(original or text))
    if original is not None:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        return NhlError(f"loading data failed in a worker: {one_line(last)}")
    return NhlError(f"loading data failed: {type(exc).__name__}: {one_line(text)}")
