"""Model files: safetensors weights plus JSON metadata that rebuilds the module by itself.

A file holds everything needed to use it without the code that trained it: format version,
backbone and trunk config, branch config, the tree (and so the classes), input size and
normalisation, and optionally the cost at save time, training summary and expert lineage.
Loading rebuilds the module from that metadata and loads the weights strictly. Nothing is ever
unpickled.
"""

from __future__ import annotations

import hashlib
import json
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


def file_digest(path: str | Path) -> str:
    """sha256 of a file: how an expert names the exact parent it was cut from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: text}))


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
    return meta


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model file (safetensors, never pickle)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise NhlError(f"{path}: cannot read the weights ({reason}); the file may be truncated") from exc


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a file describes and load its weights strictly, in eval mode."""
    from nhlcli.model.registry import model_from_config

    meta = read_metadata(path)
    model = model_from_config(meta, skeleton=True)
    state = load_weights(path)
    gate_state = {k[len("gates.") :]: state.pop(k) for k in [k for k in state if k.startswith("gates.")]}
    try:
        model.load_state_dict(state, strict=True, assign=True)
        model.metadata = meta
        if "gates" in meta:
            from nhlcli.gates.gated import GatedModel, GateSpec

            model = GatedModel(model, GateSpec.from_dict(meta["gates"]))
            model.load_gate_state(gate_state)
        elif gate_state:
            raise RuntimeError(f"unexpected gate tensors {sorted(gate_state)[:3]}")
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise NhlError(f"{path}: the weights do not fit the model its metadata describes ({first})") from exc
    model.metadata = meta
    return model.to(device).eval()
