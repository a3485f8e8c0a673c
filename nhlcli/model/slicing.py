"""Slicing: the one way a model is cut down to some classes (cutouts, routing, ``--classes``).

Every branch tensor of an NHL model has the node dimension first (the contract
:mod:`nhlcli.model.branches` keeps), so keeping some classes is row selection on the branch
levels and the leaf heads: no weight is recomputed and the kept logits are exactly the parent's.
A :class:`SlicePlan` says which rows of each tensor stay; :func:`slice_state` applies it to a
state dict in memory and :func:`read_sliced_state` to a safetensors file, reading only the kept
rows, so cutting a 1000-class model never holds its full branch weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from nhlcli.errors import NhlError
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import one_line

_LEVEL_KEY = re.compile(r"^levels\.(\d+)\.")


@dataclass(frozen=True)
class SlicePlan:
    """Which rows of each tensor of ``parent``'s model a model over ``kept`` keeps.

    ``level_rows[d]`` are the kept node positions of branch level ``d + 1`` (in the parent's
    level order), ``leaf_rows`` the kept leaf heads; trunk tensors are kept whole.
    """

    parent: Tree
    kept: Tree
    level_rows: tuple[tuple[int, ...], ...]
    leaf_rows: tuple[int, ...]

    @classmethod
    def build(cls, parent: Tree, kept: Tree, single_branch: bool = False) -> SlicePlan:
        level_rows = []
        for depth in range(1, parent.levels + 1):
            if single_branch:  # one branch feeds every class; it stays whole
                level_rows.append((0,))
                continue
            position = {n: i for i, n in enumerate(parent.level(depth))}
            level_rows.append(tuple(position[n] for n in kept.level(depth)))
        leaf_position = {n: i for i, n in enumerate(parent.level(parent.levels))}
        leaf_rows = tuple(leaf_position[n] for n in kept.level(kept.levels))
        return cls(parent, kept, tuple(level_rows), leaf_rows)

    def rows(self, key: str) -> tuple[int, ...] | None:
        """The kept rows (dim 0) of the state-dict tensor ``key``; ``None`` keeps it whole."""
        match = _LEVEL_KEY.match(key)
        if match:
            return self.level_rows[int(match.group(1))]
        if key.startswith("heads."):
            return self.leaf_rows
        return None


def slice_state(
    state: Mapping[str, torch.Tensor], plan: SlicePlan, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` (keys below ``prefix``, the prefix dropped) with only the kept rows."""
    out = {}
    with torch.no_grad():
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            rows = plan.rows(key)
            name = key[len(prefix) :]
            if rows is None:
                out[name] = value.detach().clone()
            else:
                out[name] = value.index_select(0, torch.tensor(rows, device=value.device)).clone()
    return out


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``[start, stop)`` of ``rows``, in order (subtrees are mostly contiguous)."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


def read_sliced_state(path: str | Path, plan: SlicePlan) -> dict[str, torch.Tensor]:
    """The kept tensors of the model file ``path``, reading only the kept rows of each."""
    state = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                rows = plan.rows(key)
                if rows is None:
                    state[key] = handle.get_tensor(key)
                    continue
                part = handle.get_slice(key)
                pieces = [part[start:stop] for start, stop in _runs(rows)]
                state[key] = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    except (SafetensorError, OSError, ValueError) as exc:
        reason = one_line(exc)
        raise NhlError(f"{path}: cannot read the weights ({reason}); the file may be truncated") from exc
    return state
