"""Training checkpoints for ``--resume``: safetensors for every tensor, a JSON sidecar for the rest.

The pair holds the model weights, the optimizer state (moments and step counts), the schedule,
the epoch and step reached and the random-number generators, so that a resumed run continues
exactly where the interrupted one stopped. Both files are written atomically; the sidecar is
written last and records the digest of the tensors, so a half-written pair is never taken for a
checkpoint. Nothing is pickled.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from nhlcli.atomic import atomic_write, atomic_write_json
from nhlcli.errors import NhlError
from nhlcli.model.files import file_digest, load_weights
from nhlcli.taxonomy.tree import tool_stamp

CHECKPOINT_FORMAT = "nhl-checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_NAME = "last.safetensors"
SIDECAR_NAME = "last.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the sidecar's fields and every tensor by name."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def epoch(self) -> int:
        """Epochs completed when the checkpoint was written."""
        return int(self.meta["epoch"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def _rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    meta = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return meta, tensors


def _restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]
    ]
    return {"param_groups": groups, "scalars": scalars}, tensors


def _join_optimizer(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``last.safetensors`` + ``last.json`` in ``directory`` atomically; returns the sidecar."""
    directory = Path(directory)
    optim_meta, optim_tensors = _split_optimizer(optimizer.state_dict())
    rng_meta, rng_tensors = _rng_state()
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    weights = atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp)))
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "step": step,
        "model": model.config(),
        "optimizer": optim_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_meta,
        "weights_sha256": file_digest(weights),
        "extra": extra or {},
        "tool": tool_stamp(),
    }
    return atomic_write_json(directory / SIDECAR_NAME, meta)


def read_sidecar(directory: str | Path) -> dict[str, Any] | None:
    """The sidecar of the checkpoint in ``directory`` (epoch, config, history), or None when there is
    none or it is not an nhl checkpoint's; cheap (the tensors are not read)."""
    sidecar = Path(directory) / SIDECAR_NAME
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT else None


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Read a checkpoint pair, checking that the sidecar belongs to the weights beside it."""
    directory = Path(directory)
    sidecar, weights = directory / SIDECAR_NAME, directory / WEIGHTS_NAME
    if not sidecar.is_file() or not weights.is_file():
        raise NhlError(f"no checkpoint in {directory} to resume from; start without `resume`")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NhlError(f"checkpoint {sidecar} is not valid JSON; delete {directory} to start over") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise NhlError(f"{sidecar} is not an nhl checkpoint")
    if int(meta.get("version", 0)) > CHECKPOINT_VERSION:
        raise NhlError(f"{sidecar} was written by a newer nhl; upgrade nhlcli")
    if meta.get("weights_sha256") != file_digest(weights):
        raise NhlError(
            f"checkpoint {weights} does not match {sidecar} (interrupted write?); delete {directory}"
        )
    return Checkpoint(meta, load_weights(weights))


def restore(
    checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> None:
    """Put model, optimizer, schedule and random generators back to the checkpoint's state."""
    prefix = "model/"
    model.load_state_dict(
        {k[len(prefix) :]: v for k, v in checkpoint.tensors.items() if k.startswith(prefix)}
    )
    optimizer.load_state_dict(_join_optimizer(checkpoint.meta["optimizer"], checkpoint.tensors))
    if scheduler is not None and checkpoint.meta.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint.meta["scheduler"])
    _restore_rng(checkpoint.meta["rng"], checkpoint.tensors)
