"""Training checkpoints for ``resume``: one directory per epoch, renamed into place whole.

A checkpoint directory (``<output>.ckpt`` or ``checkpoint_dir``) holds a marker file
(``nhl-checkpoints.json``, so nhl can tell its own directory from a user's) and the newest
checkpoint, ``epoch-0003/``: ``weights.safetensors`` (model weights, optimizer moments, random
generators) and ``state.json`` (epoch, step, schedule, optimizer scalars, run record and the sha256
of the weights file); beside it the run's log, ``summary.csv`` (:mod:`nhlcli.training.log`). Each
checkpoint is written into a hidden ``.epoch-0003.tmp-*`` directory, flushed to disk, and renamed
to ``epoch-0003`` in one step; only then is the previous one moved aside and removed. So a kill -9
at any instruction leaves the previous complete checkpoint (or the new one) in place, never a mixed
pair; the next run removes whatever half-made directories a crash left. Nothing is pickled.

A directory that holds anything nhl did not write is refused, never written over. Directories of
the first format (``last.safetensors`` + ``last.json``) are still read, and replaced by the new
layout at the next save.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from nhlcli.atomic import dumps_json, file_mode
from nhlcli.errors import NhlError
from nhlcli.jsonio import loads_json
from nhlcli.taxonomy.tree import tool_stamp
from nhlcli.text import one_line

CHECKPOINT_FORMAT = "nhl-checkpoint"
CHECKPOINT_VERSION = 2
MARKER_NAME = "nhl-checkpoints.json"
MARKER_FORMAT = "nhl-checkpoint-directory"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.json"
SUMMARY_FILE = "summary.csv"  # one row per epoch, written by nhlcli.training.log
EPOCH_DIR = re.compile(r"epoch-(\d{4,})")
TEMPORARY = re.compile(
    r"\.epoch-\d+\.tmp-.*|\.trash-.*|\.nhl-probe-.*|\.nhl-checkpoints\.json\..*\.tmp|\.summary\.csv\..*\.tmp"
)
# the first format: one pair in the directory itself, each file written by atomic_write
OLD_WEIGHTS, OLD_SIDECAR = "last.safetensors", "last.json"
OLD_TEMPORARY = re.compile(r"\.last\.(safetensors|json)\..*\.tmp")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the sidecar's fields, every tensor by name, and where it lies."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    path: Path | None = None

    @property
    def epoch(self) -> int:
        """Epochs completed when the checkpoint was written."""
        return int(self.meta["epoch"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])


# ------------------------------------------------------------------------------------ the sidecar
def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _schema_problem(meta: Any) -> str | None:
    """What is wrong with a sidecar's structure (``None``: nothing), checked before any field is
    used, so a hand-edited file gives one line instead of a traceback deep in a restore."""
    if not isinstance(meta, dict):
        return "it is not a JSON object"
    if meta.get("format") != CHECKPOINT_FORMAT:
        return f"its 'format' is {meta.get('format')!r}, not {CHECKPOINT_FORMAT!r}"
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("version", _whole, "a whole number"),
        ("epoch", lambda v: _whole(v) and v >= 0, "a whole number, 0 or more"),
        ("step", lambda v: _whole(v) and v >= 0, "a whole number, 0 or more"),
        ("model", lambda v: isinstance(v, dict), "an object (the model's config)"),
        ("optimizer", lambda v: isinstance(v, dict), "an object"),
        ("scheduler", lambda v: v is None or isinstance(v, dict), "an object or null"),
        ("rng", lambda v: isinstance(v, dict), "an object"),
        ("weights_sha256", lambda v: isinstance(v, str), "a sha256 string"),
        ("extra", lambda v: isinstance(v, dict), "an object"),
    ]
    for key, ok, need in checks:
        if key not in meta:
            return f"the key '{key}' is missing"
        if not ok(meta[key]):
            return f"'{key}' must be {need}, got {_short(meta[key])}"
    optimizer = meta["optimizer"]
    groups, scalars = optimizer.get("param_groups"), optimizer.get("scalars")
    if not (isinstance(groups, list) and groups and all(isinstance(g, dict) for g in groups)):
        return "'optimizer.param_groups' must be a list of objects"
    if not (isinstance(scalars, dict) and all(isinstance(s, dict) for s in scalars.values())):
        return "'optimizer.scalars' must be an object of objects"
    rng = meta["rng"]
    python, numpy_state = rng.get("python"), rng.get("numpy")
    if not (
        isinstance(python, list)
        and len(python) == 3
        and _whole(python[0])
        and isinstance(python[1], list)
        and len(python[1]) == 625
        and all(_whole(v) and 0 <= v < 2**32 for v in python[1])
        and (python[2] is None or _number(python[2]))
    ):
        return "'rng.python' is not a Python random state [version, 625 numbers, gauss]"
    if not (
        isinstance(numpy_state, list)
        and len(numpy_state) == 5
        and numpy_state[0] == "MT19937"
        and isinstance(numpy_state[1], list)
        and len(numpy_state[1]) == 624
        and all(_whole(v) and 0 <= v < 2**32 for v in numpy_state[1])
        and _whole(numpy_state[2])
        and 0 <= numpy_state[2] <= 624
        and _whole(numpy_state[3])
        and _number(numpy_state[4])
    ):
        return "'rng.numpy' is not a NumPy random state ['MT19937', 624 numbers, position, flag, cached]"
    extra = meta["extra"]
    for key, kind in (("config", dict), ("history", list), ("resumes", list), ("options", dict)):
        if key in extra and not isinstance(extra[key], kind):
            return f"'extra.{key}' must be {'an object' if kind is dict else 'a list'}"
    if not all(isinstance(h, dict) for h in extra.get("history", [])):
        return "'extra.history' must be a list of objects"
    bad = extra.get("bad_images", [])
    if not (isinstance(bad, list) and all(isinstance(b, str) for b in bad)):
        return "'extra.bad_images' must be a list of file names"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _damaged(source: Path, directory: Path, problem: str) -> NhlError:
    return NhlError(
        f"checkpoint {source} is damaged: {problem}; `resume` cannot continue it (delete {directory}, "
        "or pass `overwrite` to start over)"
    )


def _parse_sidecar(path: Path, directory: Path) -> dict[str, Any]:
    """A sidecar read, parsed and checked; one-line errors for every way it can be wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NhlError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:
        meta = loads_json(data, f"checkpoint {path}")
    except NhlError as exc:
        reason = str(exc).removeprefix(f"checkpoint {path}").strip(" :")
        raise _damaged(path, directory, "it " + reason if reason.startswith("is ") else reason) from None
    problem = _schema_problem(meta)
    if problem is not None:
        raise _damaged(path, directory, problem)
    if meta["version"] > CHECKPOINT_VERSION:
        raise NhlError(f"{path} was written by a newer nhl; upgrade nhlcli")
    return meta


# ---------------------------------------------------------------------------------- the directory
def _is_old_sidecar(path: Path) -> bool:
    """Whether ``path`` is a first-format sidecar nhl wrote (judged by its format field only)."""
    try:
        meta = loads_json(path.read_bytes(), str(path))
    except (OSError, NhlError):
        return False
    return isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT


def _has_marker(directory: Path) -> bool:
    marker = directory / MARKER_NAME
    try:
        meta = loads_json(marker.read_bytes(), str(marker))
    except (OSError, NhlError):
        return False
    return isinstance(meta, dict) and meta.get("format") == MARKER_FORMAT


def check_ownership(directory: str | Path) -> None:
    """Refuse a checkpoint directory that holds a file nhl did not write: saving there would
    replace or delete the user's files."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    entries = sorted(directory.iterdir())
    ours = _has_marker(directory)
    old = (directory / OLD_SIDECAR).is_file() and _is_old_sidecar(directory / OLD_SIDECAR)
    for entry in entries:
        name = entry.name
        if name == MARKER_NAME and ours:
            continue
        if EPOCH_DIR.fullmatch(name) and entry.is_dir() and not entry.is_symlink() and ours:
            continue
        if name == SUMMARY_FILE and entry.is_file() and not entry.is_symlink() and (ours or old):
            continue
        if TEMPORARY.fullmatch(name) and (ours or name.startswith(".nhl-probe-")):
            continue
        if name in (OLD_SIDECAR, OLD_WEIGHTS) and (old or ours) or OLD_TEMPORARY.fullmatch(name):
            continue
        raise NhlError(
            f"checkpoint directory {directory} holds {name}, which nhl did not write; choose another "
            "`checkpoint_dir` (an empty or new directory) so it is not overwritten"
        )


def clean_stale(directory: str | Path) -> list[str]:
    """Remove what an interrupted save left (half-made checkpoint directories, temporary files);
    call only while holding the directory's lock. Returns the names removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        if TEMPORARY.fullmatch(entry.name) or OLD_TEMPORARY.fullmatch(entry.name):
            _remove(entry)
            removed.append(entry.name)
    return removed


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _epoch_dirs(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = EPOCH_DIR.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest(directory: str | Path) -> tuple[Path, Path] | None:
    """The newest complete checkpoint in ``directory`` as (sidecar, weights), or None when there is
    none. A renamed-in epoch directory is complete by construction; a first-format pair is taken
    when no epoch directory exists."""
    directory = Path(directory)
    epochs = _epoch_dirs(directory)
    if epochs:
        newest = epochs[-1][1]
        return newest / STATE_FILE, newest / WEIGHTS_FILE
    sidecar = directory / OLD_SIDECAR
    if sidecar.is_file():
        return sidecar, directory / OLD_WEIGHTS
    return None


def read_sidecar(directory: str | Path) -> dict[str, Any] | None:
    """The sidecar of the newest checkpoint in ``directory`` (epoch, config, history), or None when
    there is none; a damaged one is an error, not "no checkpoint". Cheap: the tensors are not read."""
    directory = Path(directory)
    found = latest(directory)
    if found is None:
        return None
    return _parse_sidecar(found[0], directory)


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """The newest checkpoint in ``directory``, its weights checked against the digest its sidecar
    records (read once: the bytes checked are the bytes loaded)."""
    directory = Path(directory)
    found = latest(directory)
    if found is None:
        raise NhlError(f"no checkpoint in {directory} to resume from; start without `resume`")
    sidecar, weights = found
    meta = _parse_sidecar(sidecar, directory)
    try:
        data = weights.read_bytes()
    except FileNotFoundError:
        raise _damaged(sidecar, directory, f"its weights file {weights.name} is missing") from None
    except OSError as exc:
        raise NhlError(f"cannot read checkpoint {weights}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
        raise _damaged(sidecar, directory, f"{weights.name} does not match the digest recorded beside it")
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise _damaged(sidecar, directory, f"{weights.name} cannot be read ({exc})") from None
    return Checkpoint(meta, tensors, sidecar.parent)


def _tree_summary(tree: Any) -> str:
    if not isinstance(tree, dict):
        return _short(tree)
    classes = tree.get("classes")
    count = f"{len(classes)} classes" if isinstance(classes, list) else "?"
    return f"{tree.get('name', '?')!r} ({count})"


def _differences(stored: Any, now: Any, where: str) -> list[str]:
    if where == "tree" and stored != now:
        return [f"tree is {_tree_summary(stored)}, the options give {_tree_summary(now)}"]
    if isinstance(stored, dict) and isinstance(now, dict):
        found = []
        for key in [*stored, *(k for k in now if k not in stored)]:
            found += _differences(stored.get(key), now.get(key), f"{where}.{key}" if where else str(key))
        return found
    if stored != now:
        return [f"{where} is {_short(stored)}, the options give {_short(now)}"]
    return []


def model_difference(stored: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between the checkpoint's model config and the one the options build, in words
    ("the checkpoint's trunk.backbone is 'resnet18', the options give 'resnet34'"); None: nothing."""
    found = _differences(stored, now, "")
    if not found:
        return None
    shown = "; ".join(f"the checkpoint's {item}" for item in found[:3])
    return shown + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")


# ---------------------------------------------------------------------------- state to and from
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


# ------------------------------------------------------------------------------------- writing
def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, file_mode())


def _sync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a kill -9 needs nothing; a power cut does)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ensure_marker(directory: Path) -> None:
    if _has_marker(directory):
        return
    fd, name = tempfile.mkstemp(prefix=f".{MARKER_NAME}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    _write_synced(tmp, dumps_json({"format": MARKER_FORMAT, "version": CHECKPOINT_VERSION}).encode())
    os.replace(tmp, directory / MARKER_NAME)


def _retire(entry: Path) -> None:
    """Remove a finished-with checkpoint: renamed aside first (one atomic step), so a crash during
    the removal leaves a hidden directory the next run cleans, never a half-deleted epoch."""
    if not entry.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=entry.parent))
    os.replace(entry, trash / "x")
    shutil.rmtree(trash, ignore_errors=True)


def discard(directory: str | Path) -> None:
    """Remove every checkpoint in ``directory`` (a fresh start), and the old run's log: a crash of
    the new run must never resume an older run's epochs."""
    directory = Path(directory)
    for _, entry in _epoch_dirs(directory):
        _retire(entry)
    if _has_marker(directory):
        (directory / SUMMARY_FILE).unlink(missing_ok=True)
    for name in (OLD_SIDECAR, OLD_WEIGHTS):
        (directory / name).unlink(missing_ok=True)
    clean_stale(directory)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``epoch`` as ``epoch-NNNN/`` in ``directory``, in one rename, then
    remove the previous one; returns the new checkpoint's directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _ensure_marker(directory)
    optim_meta, optim_tensors = _split_optimizer(optimizer.state_dict())
    rng_meta, rng_tensors = _rng_state()
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    weights = save_tensors(tensors)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "step": step,
        "model": model.config(),
        "optimizer": optim_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_meta,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "extra": extra or {},
        "tool": tool_stamp(),
    }
    name = f"epoch-{epoch:04d}"
    building = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=directory))
    try:
        _write_synced(building / WEIGHTS_FILE, weights)
        _write_synced(building / STATE_FILE, dumps_json(meta).encode("utf-8"))
        os.chmod(building, file_mode() | (file_mode() & 0o444) >> 2)  # rw-r--r-- -> rwxr-xr-x
        _sync_dir(building)
        final = directory / name
        _retire(final)  # only after a discarded run: a fresh run starts from an empty directory
        os.replace(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    _sync_dir(directory)
    for number, entry in _epoch_dirs(directory):
        if number != epoch:
            _retire(entry)
    for old in (OLD_SIDECAR, OLD_WEIGHTS):
        (directory / old).unlink(missing_ok=True)
    return final


def _state_problem(stored: dict[str, Any], fresh: dict[str, Any]) -> str | None:
    """What makes a stored schedule state unlike the one this run's scheduler has: a key it does not
    know, or a value of another type (loading it would accept it and fail steps later)."""
    for key, value in stored.items():
        if key not in fresh:
            return f"has the unknown key {key!r}"
        now = fresh[key]
        if now is None or value is None:
            continue
        numeric = (int, float)
        if isinstance(now, bool) != isinstance(value, bool) or (
            isinstance(now, numeric) and not isinstance(value, numeric)
        ):
            return f"has {key!r} {_short(value)}"
        if (
            not isinstance(now, numeric)
            and type(now) is not type(value)
            and not (isinstance(now, (list, tuple)) and isinstance(value, (list, tuple)))
        ):
            return f"has {key!r} {_short(value)}"
    return None


def restore(
    checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> None:
    """Put model, optimizer, schedule and random generators back to the checkpoint's state; a
    checkpoint whose parts do not fit (hand-edited, another model) is one line, not a traceback."""
    prefix = "model/"
    where = checkpoint.path or "the checkpoint"
    try:
        model.load_state_dict(
            {k[len(prefix) :]: v for k, v in checkpoint.tensors.items() if k.startswith(prefix)}
        )
        optimizer.load_state_dict(_join_optimizer(checkpoint.meta["optimizer"], checkpoint.tensors))
        if scheduler is not None and checkpoint.meta.get("scheduler") is not None:
            problem = _state_problem(checkpoint.meta["scheduler"], scheduler.state_dict())
            if problem:
                raise ValueError(f"its schedule {problem}")
            scheduler.load_state_dict(checkpoint.meta["scheduler"])
        _restore_rng(checkpoint.meta["rng"], checkpoint.tensors)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, OverflowError) as exc:
        reason = one_line(exc, 200)
        raise NhlError(
            f"checkpoint {where} does not fit this run ({reason}); `resume` cannot "
            "continue it (delete it, or pass `overwrite` to start over)"
        ) from None
