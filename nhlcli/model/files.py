"""Model files: safetensors weights plus JSON metadata that rebuilds the module by itself.

A file holds everything needed to use it without the code that trained it: format version,
backbone and trunk config, branch config, the tree (and so the classes), input size and
normalisation, and optionally the cost at save time, training summary and expert lineage.
Loading rebuilds the module from that metadata and loads the weights strictly. Nothing is ever
unpickled.

Beside the nhl metadata the header records two digests: ``nhl_metadata_sha256``, the sha256 of
the nhl metadata text as written, checked on every read of a file (it is small), and
``nhl_tensor_sha256``, the sha256 of the tensor data section exactly as written (everything
after the header), checked on every full load (the bytes are read then anyway) and by
``nhl cutout``. So a hand-edited class name or normalisation, or a flipped byte in the weights,
which would load without complaint, is refused in one line. Files written before a digest
existed still load.

Every read opens the file once: the header, the digests and the tensors all come from that one
open file, so a file replaced (atomically, by ``nhl cutout`` or ``nhl train``) while it is read is
read either wholly as the old file or wholly as the new one, never the header of one with the
tensors of the other.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import stat
import struct
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensor_bytes
from safetensors.torch import save_file

from nhlcli.atomic import atomic_write
from nhlcli.errors import NhlError
from nhlcli.jsonio import loads_json
from nhlcli.taxonomy.tree import tool_stamp
from nhlcli.text import one_line

if TYPE_CHECKING:  # files.py reads and writes any kind; the contract is only its type
    from nhlcli.model.contract import NhlModel

MODEL_FORMAT = "nhl-model"
MODEL_VERSION = 1
METADATA_KEY = "nhl"
DIGEST_KEY = "nhl_tensor_sha256"  # header key: sha256 of the tensor data section
METADATA_DIGEST_KEY = "nhl_metadata_sha256"  # header key: sha256 of the nhl metadata text (UTF-8)
# bounds on what a file may claim, so a hand-edited size fails before anything is allocated
MAX_INPUT_SIDE = 4096
MAX_INPUT_CHANNELS = 16
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a header
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 1 << 20


def _header_length(handle: Any) -> int:
    """The size of a safetensors header (its first 8 bytes, little-endian)."""
    raw = handle.read(8)
    if len(raw) < 8:
        raise NhlError(f"{handle.name} is too short to be a safetensors file; it may be truncated")
    return struct.unpack("<Q", raw)[0]


def _digests_of(handle: IO[bytes], data_offset: int) -> tuple[str, str]:
    """sha256 of the whole open file and of its tensor data section, in one pass from the start."""
    whole, data = hashlib.sha256(), hashlib.sha256()
    handle.seek(0)
    whole.update(handle.read(data_offset))
    for block in iter(lambda: handle.read(_BLOCK), b""):
        whole.update(block)
        data.update(block)
    return whole.hexdigest(), data.hexdigest()


def _seal(path: Path, placeholder: str) -> None:
    """Write the sha256 of the data section, as it lies in the file, over ``placeholder`` in the
    header (same length, so no offset moves and the data is not written twice)."""
    with open(path, "r+b") as handle:
        size = _header_length(handle)
        header = handle.read(size)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
        token = placeholder.encode("ascii")
        at = header.find(token)
        if at < 0 or header.find(token, at + 1) >= 0:
            raise RuntimeError("the digest placeholder is not once in the safetensors header")
        handle.seek(8 + at)
        handle.write(digest.hexdigest().encode("ascii"))


def metadata_digest(text: str) -> str:
    """sha256 of the nhl metadata text as stored in the header."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def save_model(model: NhlModel, path: str | Path, **sections: Any) -> Path:
    """Write ``model`` (any model kind, gated or not) atomically with its rebuild metadata.

    ``sections`` (e.g. ``cost=...``, ``expert=...``, ``training=...``) are stored beside the
    model's own config.
    """
    meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, **model.config(), "tool": tool_stamp()}
    meta.update({k: v for k, v in sections.items() if v is not None})
    state = model.file_state()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    text = json.dumps(meta, ensure_ascii=False)
    placeholder = secrets.token_hex(32)  # 64 hex characters, as long as the digest
    header = {METADATA_KEY: text, METADATA_DIGEST_KEY: metadata_digest(text), DIGEST_KEY: placeholder}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=header)
        _seal(tmp, placeholder)

    return atomic_write(path, write)


# ----------------------------------------------------------------------------- reading, one open
@dataclass(frozen=True)
class ModelHeader:
    """A model file's header, read and checked: the nhl metadata and the digests it records."""

    path: Path
    meta: dict[str, Any]
    data_offset: int  # where the tensor data section starts
    tensor_digest: str | None  # recorded at save time (None: a file from before digests)
    metadata_digest: str | None


@dataclass
class ModelFileContents:
    """Everything of a model file, read through one open: header, tensors, digests of the bytes."""

    header: ModelHeader
    tensors: dict[str, torch.Tensor]
    data_sha256: str  # of the tensor data section as read (checked against the recorded one)
    file_sha256: str | None = None  # of the whole file, when asked for (its identity)

    @property
    def meta(self) -> dict[str, Any]:
        return self.header.meta


def _unreadable(path: Path, reason: str) -> NhlError:
    return NhlError(
        f"{path} is not a readable safetensors file ({reason}); it may be truncated or another "
        "format (nhl model files are .safetensors written by 'nhl train' or 'nhl cutout')"
    )


def _open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading, refusing what is not a regular file (a FIFO would block)."""
    if not path.exists():
        raise NhlError(f"model file {path} does not exist")
    if not path.is_file():
        raise NhlError(f"model file {path} is not a regular file; give a .safetensors model file")
    try:
        handle = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise NhlError(f"cannot read model file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise NhlError(f"model file {path} is not a regular file; give a .safetensors model file")
    return handle


def _header_bytes(handle: IO[bytes], path: Path) -> tuple[bytes, int]:
    """The header JSON bytes of an open file (read from its start) and where the data begins."""
    handle.seek(0)
    raw = handle.read(8)
    if len(raw) < 8:
        raise _unreadable(path, "shorter than a safetensors header")
    size = struct.unpack("<Q", raw)[0]
    file_size = os.fstat(handle.fileno()).st_size
    if size > MAX_HEADER_BYTES or 8 + size > file_size:
        raise _unreadable(path, f"its header claims {size} bytes, the file has {file_size}")
    return handle.read(size), 8 + size


def _recorded_hex(path: Path, value: Any, what: str) -> str | None:
    if value is not None and not (isinstance(value, str) and _HEX64.match(value)):
        raise NhlError(
            f"{path}: the recorded {what} digest is not a sha256 ({str(value)[:20]!r}); the file is damaged"
        )
    return value


def parse_header(path: str | Path, header_json: bytes, data_offset: int) -> ModelHeader:
    """Check a safetensors header (its JSON bytes) as an nhl model's: structure, metadata bounds
    and the metadata digest; a one-line error naming the file for anything else."""
    path = Path(path)
    try:
        header = loads_json(header_json, f"{path}: the safetensors header")
    except NhlError as exc:
        raise _unreadable(path, str(exc).removeprefix(f"{path}: ")) from None
    extra = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(header, dict) or not isinstance(extra, (dict, type(None))):
        raise _unreadable(path, "its header is not a safetensors header")
    extra = extra or {}
    raw = extra.get(METADATA_KEY)
    if raw is None:
        raise NhlError(
            f"{path} is a safetensors file without nhl metadata, not an nhl model; train one with "
            "'nhl train' (plain timm weights go to `pretrained_file`)"
        )
    if not isinstance(raw, str):
        raise damaged_metadata(path, "the 'nhl' header entry is not a JSON text")
    meta = loads_json(raw, f"{path}: the nhl metadata")
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise NhlError(f"{path}: metadata format is {found!r}, expected {MODEL_FORMAT!r}")
    version = meta.get("version")
    if not isinstance(version, int) or version > MODEL_VERSION:
        raise NhlError(
            f"{path} was written by a newer nhl (model format version {version}, this nhl reads "
            f"{MODEL_VERSION}); upgrade nhlcli"
        )
    problem = metadata_problem(meta)
    if problem:
        raise damaged_metadata(path, problem)
    recorded_meta = _recorded_hex(path, extra.get(METADATA_DIGEST_KEY), "metadata")
    if recorded_meta is not None and recorded_meta != metadata_digest(raw):
        raise NhlError(
            f"{path}: the nhl metadata does not match the digest recorded at save time: the file is "
            "damaged or was edited (class names, normalisation, sizes); use an intact copy, or train "
            "or cut the model again"
        )
    recorded_data = _recorded_hex(path, extra.get(DIGEST_KEY), "tensor")
    return ModelHeader(path, meta, data_offset, recorded_data, recorded_meta)


def read_header(handle: IO[bytes], path: str | Path) -> ModelHeader:
    """The checked header of an open model file."""
    path = Path(path)
    try:
        header_json, offset = _header_bytes(handle, path)
    except OSError as exc:
        raise NhlError(f"cannot read model file {path}: {exc.strerror}") from None
    return parse_header(path, header_json, offset)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The nhl metadata of a model file, checked (bounds and its digest); one open, header only."""
    path = Path(path)
    with _open_regular(path) as handle:
        return read_header(handle, path).meta


def recorded_digest(path: str | Path) -> str | None:
    """The tensor-data sha256 recorded at save time (``None``: a file from before digests)."""
    path = Path(path)
    with _open_regular(path) as handle:
        return read_header(handle, path).tensor_digest


def check_digest(path: str | Path, recorded: str | None, actual: str) -> None:
    """One line naming the file when its tensor data is not what was saved."""
    if recorded is not None and recorded != actual:
        raise NhlError(
            f"{path}: the tensor data does not match the digest recorded at save time: the file is "
            "damaged (changed or flipped bytes); use an intact copy, or train or cut the model again"
        )


def read_model_file(path: str | Path, whole_digest: bool = False) -> ModelFileContents:
    """Read a model file whole through one open: the checked header, the tensors, and the tensor
    data checked against its recorded digest (hashed from the same bytes the tensors come from).
    ``whole_digest`` also hashes the whole file (its identity, as an expert's lineage names it)."""
    path = Path(path)
    with _open_regular(path) as handle:
        try:
            content = handle.read()
        except OSError as exc:
            raise NhlError(f"cannot read model file {path}: {exc.strerror}") from None
    if len(content) < 8:
        raise _unreadable(path, "shorter than a safetensors header")
    size = struct.unpack("<Q", content[:8])[0]
    if size > MAX_HEADER_BYTES or 8 + size > len(content):
        raise _unreadable(path, f"its header claims {size} bytes, the file has {len(content)}")
    header = parse_header(path, content[8 : 8 + size], 8 + size)
    view = memoryview(content)
    data_sha256 = hashlib.sha256(view[header.data_offset :]).hexdigest()
    check_digest(path, header.tensor_digest, data_sha256)
    file_sha256 = hashlib.sha256(view).hexdigest() if whole_digest else None
    view.release()
    try:
        tensors = load_tensor_bytes(content)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = one_line(exc, 200)
        raise NhlError(f"{path}: cannot read the weights ({reason}); the file may be truncated") from exc
    return ModelFileContents(header, tensors, data_sha256, file_sha256)


class OpenModelFile:
    """A model file held open: its header, and its tensors read later from the same open file
    (for readers that take only some rows of a tensor, like cutouts)."""

    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path = path
        self.handle = handle
        self._reading = threading.Lock()  # one position in the file: one reader at a time
        self.header = read_header(handle, path)

    @property
    def meta(self) -> dict[str, Any]:
        return self.header.meta

    def digests(self) -> tuple[str, str]:
        """sha256 of the whole open file and of its tensor data section."""
        with self._reading:
            return _digests_of(self.handle, self.header.data_offset)

    def same_file_path(self) -> str | None:
        """A path that opens this very file (not whatever ``path`` names now), for libraries that
        take a path, such as ``safe_open``; ``None`` where the system has none (then read bytes)."""
        fd = self.handle.fileno()
        mine = os.fstat(fd)
        for candidate in (f"/proc/self/fd/{fd}", f"/dev/fd/{fd}"):
            try:
                other = os.stat(candidate)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (mine.st_dev, mine.st_ino):
                return candidate
        return None

    def read_all(self) -> bytes:
        """The whole open file's bytes."""
        with self._reading:
            self.handle.seek(0)
            return self.handle.read()


@contextmanager
def open_model_file(path: str | Path) -> Iterator[OpenModelFile]:
    """Open a model file once and read its checked header; everything else read from it within
    the ``with`` comes from the same file, even if ``path`` is replaced meanwhile."""
    path = Path(path)
    with _open_regular(path) as handle:
        yield OpenModelFile(path, handle)


def verify_model_file(path: str | Path) -> str | None:
    """Check a model file's metadata and tensor data against their recorded digests (one read).

    Returns the tensor digest when it matches, ``None`` when the file records none (written before
    nhl recorded digests; such files still load); raises :class:`NhlError` when either differs.
    """
    return read_model_file(path).header.tensor_digest


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )


def metadata_problem(meta: Mapping[str, Any]) -> str | None:
    """What is wrong with the keys every model kind is rebuilt from (``None``: nothing), so that a
    damaged or hand-edited file fails in one line naming the key instead of deep inside the
    rebuild. Each kind checks its own sections (``config_problem`` of its class)."""
    if not isinstance(meta.get("kind"), str):
        return f"'kind' is {meta.get('kind')!r}, expected the model kind's name (e.g. 'nhl' or 'flat')"
    for key in ("trunk", "tree", "input"):
        if key not in meta:
            return f"the key {key!r} is missing"
        if not isinstance(meta[key], dict):
            return f"{key!r} is not an object"
    trunk, inp = meta["trunk"], meta["input"]
    if not isinstance(trunk.get("backbone"), str) or not trunk["backbone"]:
        return "'trunk.backbone' is missing or not a name"
    if not positive_int(trunk.get("in_chans")):
        return f"'trunk.in_chans' must be a positive integer, got {trunk.get('in_chans')!r}"
    split = trunk.get("split")
    if split is not None and (not isinstance(split, int) or isinstance(split, bool)):
        return f"'trunk.split' must be an integer, got {split!r}"
    if set(trunk) - {"backbone", "split", "in_chans"}:
        return f"'trunk' has unknown keys {sorted(set(trunk) - {'backbone', 'split', 'in_chans'})}"
    if trunk["in_chans"] > MAX_INPUT_CHANNELS:
        return f"'trunk.in_chans' {trunk['in_chans']} is out of bounds (at most {MAX_INPUT_CHANNELS})"
    size = inp.get("size")
    if not (isinstance(size, list) and len(size) == 3 and all(positive_int(v) for v in size)):
        return f"'input.size' must be 3 positive integers (channels, height, width), got {size!r}"
    if size[0] > MAX_INPUT_CHANNELS or max(size[1:]) > MAX_INPUT_SIDE:
        return (
            f"'input.size' {size} is out of bounds (at most {MAX_INPUT_CHANNELS} channels and "
            f"{MAX_INPUT_SIDE} pixels a side)"
        )
    if size[0] != trunk["in_chans"]:
        return f"'input.size' has {size[0]} channels but 'trunk.in_chans' is {trunk['in_chans']}"
    for key in ("mean", "std"):
        if not _numbers(inp.get(key)) or len(inp[key]) != size[0]:
            return f"'input.{key}' must be {size[0]} numbers (one per channel), got {inp.get(key)!r}"
        if not all(math.isfinite(v) for v in inp[key]):
            return f"'input.{key}' must be finite numbers, got {inp[key]!r}"
    if any(v <= 0 for v in inp["std"]):
        return "'input.std' must be positive"
    return _classes_problem(meta)


def _classes_problem(meta: Mapping[str, Any]) -> str | None:
    """Where the class list recorded beside the tree disagrees with the tree's."""
    classes = meta["tree"].get("classes")
    if not isinstance(classes, list):
        return None  # the tree's own check says what is wrong
    if len(set(map(str, classes))) != len(classes):
        return "'tree.classes' lists a class twice"
    expert = meta.get("expert")
    if isinstance(expert, dict) and "classes" in expert and expert["classes"] != classes:
        return "'expert.classes' differs from the tree's classes"
    cost = meta.get("cost")
    if isinstance(cost, dict) and "classes" in cost and cost["classes"] != len(classes):
        return f"'cost.classes' is {cost['classes']!r} but the tree has {len(classes)} classes"
    return None


def damaged_metadata(path: str | Path, problem: str) -> NhlError:
    """The one error every damaged-metadata finding reads as."""
    return NhlError(
        f"{path}: the nhl metadata is damaged: {problem} (was it edited by hand?); use an intact "
        "copy of the model file"
    )
