"""Model files: safetensors weights plus JSON metadata that rebuilds the module by itself.

A file holds everything needed to use it without the code that trained it: format version,
backbone and trunk config, branch config, the tree (and so the classes), input size and
normalisation, and optionally the cost at save time, training summary and expert lineage.
Loading rebuilds the module from that metadata and loads the weights strictly. Nothing is ever
unpickled.

Beside the nhl metadata the header records ``nhl_tensor_sha256``: the sha256 of the tensor data
section exactly as written (everything after the header), so a flipped byte in the weights,
which loads without complaint, is found by ``nhl profile --verify`` and by ``nhl cutout``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from nhlcli.atomic import atomic_write
from nhlcli.errors import NhlError
from nhlcli.taxonomy.tree import tool_stamp

MODEL_FORMAT = "nhl-model"
MODEL_VERSION = 1
METADATA_KEY = "nhl"
DIGEST_KEY = "nhl_tensor_sha256"  # header key: sha256 of the tensor data section
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 1 << 20


def file_digest(path: str | Path) -> str:
    """sha256 of a file: how an expert names the exact parent it was cut from."""
    return file_digests(path)[0]


def _header_length(handle: Any) -> int:
    """The size of a safetensors header (its first 8 bytes, little-endian)."""
    raw = handle.read(8)
    if len(raw) < 8:
        raise NhlError(f"{handle.name} is too short to be a safetensors file; it may be truncated")
    return struct.unpack("<Q", raw)[0]


def file_digests(path: str | Path) -> tuple[str, str]:
    """sha256 of the whole file and of its tensor data section, in one pass over the file."""
    whole, data = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as handle:
        size = _header_length(handle)
        handle.seek(0)
        whole.update(handle.read(8 + size))
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


def save_model(model: nn.Module, path: str | Path, **sections: Any) -> Path:
    """Write ``model`` (an NHL or flat model) atomically with its rebuild metadata.

    ``sections`` (e.g. ``cost=...``, ``expert=...``, ``training=...``) are stored beside the
    model's own config.
    """
    meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, **model.config(), "tool": tool_stamp()}
    meta.update({k: v for k, v in sections.items() if v is not None})
    state = model.file_state() if hasattr(model, "file_state") else model.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    text = json.dumps(meta, ensure_ascii=False)
    placeholder = secrets.token_hex(32)  # 64 hex characters, as long as the digest

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: text, DIGEST_KEY: placeholder})
        _seal(tmp, placeholder)

    return atomic_write(path, write)


def recorded_digest(path: str | Path) -> str | None:
    """The tensor-data sha256 recorded at save time (``None``: a file from before digests)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            value = (handle.metadata() or {}).get(DIGEST_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise NhlError(f"{path} is not a readable safetensors file ({reason}); it may be truncated") from exc
    if value is not None and not _HEX64.match(value):
        raise NhlError(
            f"{path}: the recorded tensor digest is not a sha256 ({value[:20]!r}); the file is damaged"
        )
    return value


def check_digest(path: str | Path, recorded: str | None, actual: str) -> None:
    """One line naming the file when its tensor data is not what was saved."""
    if recorded is not None and recorded != actual:
        raise NhlError(
            f"{path}: the tensor data does not match the digest recorded at save time: the file is "
            "damaged (changed or flipped bytes); use an intact copy, or train or cut the model again"
        )


def verify_model_file(path: str | Path) -> str | None:
    """Check a model file's tensor data against its recorded digest.

    Returns the digest when it matches, ``None`` when the file records none (written before
    nhl recorded digests; such files still load); raises :class:`NhlError` when it differs.
    """
    read_metadata(path)
    recorded = recorded_digest(path)
    if recorded is None:
        return None
    check_digest(path, recorded, file_digests(path)[1])
    return recorded


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The nhl metadata of a model file, checked; a clear one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise NhlError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise NhlError(
            f"{path} is not a readable safetensors file ({reason}); it may be truncated or another "
            "format (nhl model files are .safetensors written by 'nhl train' or 'nhl cutout')"
        ) from exc
    if raw is None:
        raise NhlError(
            f"{path} is a safetensors file without nhl metadata, not an nhl model; train one with "
            "'nhl train' (plain timm weights go to --pretrained-file)"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise NhlError(f"{path}: the nhl metadata is not valid JSON ({exc.msg})") from exc
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise NhlError(f"{path}: metadata format is {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    version = meta.get("version")
    if not isinstance(version, int) or version > MODEL_VERSION:
        raise NhlError(
            f"{path} was written by a newer nhl (model format version {version}, this nhl reads "
            f"{MODEL_VERSION}); upgrade nhlcli"
        )
    problem = metadata_problem(meta)
    if problem:
        raise damaged_metadata(path, problem)
    return meta


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
    size = inp.get("size")
    if not (isinstance(size, list) and len(size) == 3 and all(positive_int(v) for v in size)):
        return f"'input.size' must be 3 positive integers (channels, height, width), got {size!r}"
    if size[0] != trunk["in_chans"]:
        return f"'input.size' has {size[0]} channels but 'trunk.in_chans' is {trunk['in_chans']}"
    for key in ("mean", "std"):
        if not _numbers(inp.get(key)) or len(inp[key]) != size[0]:
            return f"'input.{key}' must be {size[0]} numbers (one per channel), got {inp.get(key)!r}"
    if any(v <= 0 for v in inp["std"]):
        return "'input.std' must be positive"
    return None


def damaged_metadata(path: str | Path, problem: str) -> NhlError:
    """The one error every damaged-metadata finding reads as."""
    return NhlError(
        f"{path}: the nhl metadata is damaged: {problem} (was it edited by hand?); use an intact "
        "copy of the model file"
    )


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model file (safetensors, never pickle)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise NhlError(f"{path}: cannot read the weights ({reason}); the file may be truncated") from exc
