"""Reading JSON a user hands us: a bounded nesting depth and one-line errors.

Python's ``json`` parser recurses once per nesting level, so a file of 100,000 ``[`` raises
``RecursionError`` (a traceback, and on some builds a crash) before any schema check runs. Every
JSON that nhl reads from a file, a model header or a server answer goes through :func:`loads_json`,
which measures the nesting in one linear pass first and refuses anything deeper than any file nhl
writes could be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nhlcli.errors import NhlError

MAX_JSON_DEPTH = 64  # nhl's own files nest at most about 10 deep (trees are lists of nodes)


def json_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in ``text`` (strings skipped), without parsing."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads_json(text: str | bytes, source: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse ``text`` (read from ``source``, which the error names), refusing nesting deeper than
    ``max_depth`` and invalid JSON with one line each."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NhlError(f"{source} is not UTF-8 text (byte {exc.start}); is it a JSON file?") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise NhlError(
            f"{source}: JSON nested {depth} levels deep, more than the {max_depth} any nhl file uses; "
            "the file is damaged or not an nhl file"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise NhlError(f"{source} is not valid JSON ({exc.msg} at {where})") from None
    except (RecursionError, ValueError) as exc:  # ValueError: e.g. an integer of 100,000 digits
        raise NhlError(f"{source} cannot be read as JSON ({exc})") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read and parse the JSON file at ``path`` (``what`` names it in errors: "tree file")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NhlError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise NhlError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise NhlError(f"cannot read {what} {path}: {exc.strerror}") from None
    return loads_json(data.removeprefix(b"\xef\xbb\xbf"), f"{what} {path}")
