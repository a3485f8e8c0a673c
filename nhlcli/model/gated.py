"""A model with decision gates: early exits after trunk stages and routing through the tree.

Exit gates (paper 004, Algorithm 1): a linear layer on the globally pooled output of a stage; a
sample leaves at the first gate whose score (largest margin, or largest softmax probability for
cross-entropy gates) reaches that gate's threshold, and the rest of the network runs only for the
samples still in the batch. A threshold of ``None`` (infinity) never exits.

Routing (beyond the papers): a gate on the trunk output of an NHL model predicts the level-1
nodes of the tree (the super-categories); with ``route_top_k = K`` each sample runs only the
branches under its K best super-categories, the other classes' logits are ``-inf``. Samples with
the same K super-categories run together, through branch levels sliced as an expert's are, so
their logits equal the full model's for those classes.

The file is the base model's file plus a ``gates`` metadata section and ``gates.*`` tensors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nhlcli.errors import NhlError
from nhlcli.model.stages import StagedNetwork, check_staging
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted

GATE_PREFIX = "gates."
LOSSES = ("hinge", "ce")  # what gates are trained with (nhlcli.gates.loss) and exit on


def exit_scores(loss: str, outputs: torch.Tensor) -> torch.Tensor:
    """What a sample exits on: the largest margin (hinge) or the largest softmax probability (ce)."""
    if loss == "hinge":
        return outputs.max(dim=1).values
    return outputs.softmax(dim=1).max(dim=1).values


@dataclass
class GateSpec:
    """Where the gates sit and when they let samples go (the file's ``gates`` section)."""

    stages: list[int]
    loss: str = "hinge"
    thresholds: list[float | None] = field(default_factory=list)
    route: bool = False
    fit: dict[str, Any] = field(default_factory=dict)
    tune: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise NhlError(f"unknown gate loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if not self.thresholds:
            self.thresholds = [None] * len(self.stages)
        check_thresholds(self.thresholds, len(self.stages))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateSpec:
        try:
            return cls(
                stages=[int(s) for s in data["stages"]],
                loss=str(data.get("loss", "hinge")),
                thresholds=[None if t is None else float(t) for t in data.get("thresholds", [])],
                route=bool(data.get("route", False)),
                fit=dict(data.get("fit", {})),
                tune=data.get("tune"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NhlError(
                f"the file's gates section is malformed ({exc}); refit with 'nhl gates fit'"
            ) from exc


def check_thresholds(thresholds: Sequence[float | None], gates: int) -> None:
    if len(thresholds) != gates:
        raise NhlError(
            f"{counted(len(thresholds), 'threshold')} given but the model has {counted(gates, 'gate')}; "
            "give one per gate (inf never exits)"
        )
    for t in thresholds:
        if t is not None and math.isnan(t):
            raise NhlError("a threshold is NaN; give numbers (inf never exits, -inf always exits)")


def exit_names(stages: Sequence[int]) -> list[str]:
    """How reports name the exits of gates after ``stages``, then the full network."""
    return [f"gate {g + 1} (stage {s})" for g, s in enumerate(stages)] + ["full network"]


class Gate(nn.Module):
    """Global average pooling, then one linear layer: ``[B, C, H, W]`` -> ``[B, outputs]``."""

    def __init__(self, in_features: int, outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


class BranchPath(nn.Module):
    """The branches of an NHL model under some level-1 nodes: trunk output -> those classes' logits."""

    def __init__(self, model: nn.Module, nodes: Sequence[str]) -> None:
        super().__init__()
        from nhlcli.model.slicing import sliced_branches

        tree: Tree = model.tree
        sub = tree.subtree(list(nodes))
        self.levels, self.heads = sliced_branches(model, sub)
        leaf_position = {c: i for i, c in enumerate(sub.level(sub.levels))}
        self.register_buffer(
            "class_to_leaf", torch.tensor([leaf_position[c] for c in sub.classes]), persistent=False
        )
        self.register_buffer(
            "columns", torch.tensor([tree.class_index(c) for c in sub.classes]), persistent=False
        )
        self.eval()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for level in self.levels:
            features = level(features)
        return self.heads(features).index_select(1, self.class_to_leaf)


@dataclass
class GatedOutput:
    """Logits (a gate's outputs for samples that left there), the exit of each sample (gate index,
    or the number of gates for the full network) and the MACs each sample cost."""

    logits: torch.Tensor
    exits: torch.Tensor
    macs: torch.Tensor


def _macs(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        out = module(x)
    return counter.get_total_flops() // 2, out.detach()


class GatedModel(nn.Module):
    """An NHL or flat model with exit gates after chosen stages and an optional routing gate."""

    def __init__(self, model: nn.Module, spec: GateSpec, check: bool = False) -> None:
        super().__init__()
        self.model = model
        self.staged: StagedNetwork = model.staged()
        if check:
            check_staging(self.staged, model)
        last = self.staged.last_exit
        for s in spec.stages:
            if not 0 <= s <= last:
                raise NhlError(
                    f"gate stage {s} is out of range: this model has gate-able stages 0 to {last} "
                    f"({self.staged.last_exit_name})"
                )
        if len(set(spec.stages)) != len(spec.stages) or list(spec.stages) != sorted(spec.stages):
            raise NhlError(f"gate stages must be distinct and increasing, got {spec.stages}")
        if spec.route and self.staged.route_problem:
            raise NhlError(self.staged.route_problem)
        self.spec = spec
        classes = len(model.tree.classes)
        self.exits = nn.ModuleList(Gate(self.staged.channels[s], classes) for s in spec.stages)
        self.route: Gate | None = None
        if spec.route:
            self.route = Gate(self.staged.channels[self.staged.split], len(model.tree.level(1)))
        self.route_top_k: int | None = None
        self._paths: dict[tuple[int, ...], BranchPath] = {}
        self._path_macs: dict[tuple[int, ...], int] = {}
        self._stage_macs: list[int] | None = None
        self._trunk_shape: tuple[int, ...] = ()
        # one-time work inside forward passes (building a routed branch set, counting its MACs),
        # which throughput measurements leave out
        self.setup_seconds = 0.0
        self.metadata: dict[str, Any] = {}

    # -- what the rest of nhl reads from a model ------------------------------------------------
    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def tree(self) -> Tree:
        return self.model.tree

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    @property
    def input_config(self) -> Any:
        return self.model.input_config

    def parameter_groups(self) -> dict[str, int]:
        groups = dict(self.model.parameter_groups())
        gates = sum(p.numel() for p in self.gate_modules().parameters())
        return {**groups, "total": groups["total"] + gates, "gates": gates}

    def gate_modules(self) -> nn.ModuleDict:
        parts: dict[str, nn.Module] = {"exits": self.exits}
        if self.route is not None:
            parts["route"] = self.route
        return nn.ModuleDict(parts)

    def config(self) -> dict[str, Any]:
        return {**self.model.config(), "gates": self.spec.to_dict()}

    def file_state(self) -> dict[str, torch.Tensor]:
        """The base model's tensors under their own names, the gates' under ``gates.``."""
        state = dict(self.model.state_dict())
        state.update({GATE_PREFIX + k: v for k, v in self.gate_modules().state_dict().items()})
        return state

    def load_gate_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.gate_modules().load_state_dict(dict(state), strict=True)

    @property
    def thresholds(self) -> list[float | None]:
        return list(self.spec.thresholds)

    def set_thresholds(self, thresholds: Sequence[float | None]) -> None:
        check_thresholds(thresholds, len(self.exits))
        self.spec.thresholds = [None if t is None or t == math.inf else float(t) for t in thresholds]

    def set_route_top_k(self, k: int | None) -> None:
        """Route each sample through its ``k`` best super-categories' branches (None: all)."""
        if k is None:
            self.route_top_k = None
            return
        if self.route is None:
            raise NhlError(
                "needs a routing gate: fit one with 'nhl gates fit' on an NHL model "
                "(a flat model or a file fitted with `no_route` has none)",
                "route_top_k",
            )
        supers = len(self.tree.level(1))
        if not 1 <= k <= supers:
            raise NhlError(f"{k}: choose 1 to {supers} (the tree's super-categories)", "route_top_k")
        self.route_top_k = k

    # -- cost ----------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def stage_macs(self) -> list[int]:
        """MACs of each stage for one image, then of the rest of the network (last entry)."""
        if self._stage_macs is None:
            was = self.training
            self.eval()
            x = torch.zeros(1, *self.input_config.size, device=self._device())
            macs = []
            for stage in self.staged.stages:
                m, x = _macs(stage, x)
                macs.append(m)
            self._trunk_shape = tuple(x.shape)
            macs.append(_macs(self.staged.finish, x)[0])
            self.train(was)
            self._stage_macs = macs
        return self._stage_macs

    def gate_macs(self) -> list[int]:
        """MACs of each exit gate (its linear layer; pooling is additions)."""
        return [g.linear.in_features * g.linear.out_features for g in self.exits]

    def route_macs(self) -> int:
        return 0 if self.route is None else self.route.linear.in_features * self.route.linear.out_features

    def exit_macs(self, thresholds: Sequence[float | None] | None = None) -> list[int]:
        """MACs for an image leaving at each gate, then for one running the whole network, with
        every active gate (threshold not ``None``) on the way evaluated; without routing."""
        thresholds = self.spec.thresholds if thresholds is None else thresholds
        stages, gates = self.stage_macs(), self.gate_macs()
        active = [m if t is not None else 0 for m, t in zip(gates, thresholds, strict=True)]
        out = []
        for g, s in enumerate(self.spec.stages):
            out.append(sum(stages[: s + 1]) + sum(active[: g + 1]))
        out.append(sum(stages) + sum(active))
        return out

    def base_macs(self) -> int:
        """MACs of the ungated model."""
        return sum(self.stage_macs())

    def routed_macs(self, key: tuple[int, ...]) -> int:
        """MACs of an image through the whole trunk, the routing gate and the branches under the
        level-1 nodes ``key`` (exit gates not included)."""
        if key not in self._path_macs:
            started = time.perf_counter()
            stages = self.stage_macs()
            x = torch.zeros(self._trunk_shape, device=self._device())
            branch = _macs(self._path(key), x)[0]
            self._path_macs[key] = sum(stages[:-1]) + self.route_macs() + branch
            self.setup_seconds += time.perf_counter() - started
        return self._path_macs[key]

    # -- inference -----------------------------------------------------------------------------
    def _path(self, key: tuple[int, ...]) -> BranchPath:
        if key not in self._paths:
            started = time.perf_counter()
            supers = self.tree.level(1)
            self._paths[key] = BranchPath(self.model, [supers[i] for i in key]).to(self._device())
            self.setup_seconds += time.perf_counter() - started
        return self._paths[key]

    def _routed(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.route is not None and self.route_top_k is not None
        n = features.shape[0]
        logits = torch.full((n, len(self.classes)), -math.inf, device=features.device, dtype=features.dtype)
        macs = torch.zeros(n, dtype=torch.float64)
        top = self.route(features).topk(self.route_top_k, dim=1).indices.sort(dim=1).values
        keys, groups = torch.unique(top.cpu(), dim=0, return_inverse=True)
        for g, key_row in enumerate(keys.tolist()):
            key = tuple(int(i) for i in key_row)
            rows = (groups == g).nonzero().squeeze(1)
            path = self._path(key)
            part = path(features.index_select(0, rows.to(features.device)))
            logits[rows.to(features.device)[:, None], path.columns[None, :]] = part.to(logits.dtype)
            macs[rows] = float(self.routed_macs(key))
        return logits, macs

    def run(self, x: torch.Tensor, thresholds: Sequence[float | None] | None = None) -> GatedOutput:
        """Gated inference on a batch: each sample stops at its exit; the rest runs on."""
        thresholds = self.spec.thresholds if thresholds is None else list(thresholds)
        n = x.shape[0]
        device = x.device
        logits: torch.Tensor | None = None
        exits = torch.full((n,), len(self.exits), dtype=torch.long)
        macs = torch.zeros(n, dtype=torch.float64)
        exit_macs = self.exit_macs(thresholds)
        index = torch.arange(n)
        gate_at = {s: g for g, s in enumerate(self.spec.stages)}
        h = x
        for s, stage in enumerate(self.staged.stages):
            h = stage(h)
            g = gate_at.get(s)
            if g is None or thresholds[g] is None:
                continue
            t = thresholds[g]
            out = self.exits[g](h)
            if logits is None:
                logits = torch.empty(n, out.shape[1], device=device, dtype=out.dtype)
            leave = (exit_scores(self.spec.loss, out) >= t).cpu()
            if not bool(leave.any()):
                continue
            rows = index[leave]
            logits[rows.to(device)] = out[leave.to(device)]
            exits[rows] = g
            macs[rows] = float(exit_macs[g])
            stay = ~leave
            index = index[stay]
            if index.numel() == 0:
                return GatedOutput(logits, exits, macs)
            h = h[stay.to(device)]
        if self.route_top_k is not None:
            final, final_macs = self._routed(h)
            macs[index] = final_macs + float(exit_macs[-1] - self.base_macs())
        else:
            final = self.staged.finish(h)
            macs[index] = float(exit_macs[-1])
        if logits is None:
            logits = torch.empty(n, final.shape[1], device=device, dtype=final.dtype)
        logits[index.to(device)] = final.to(logits.dtype)
        return GatedOutput(logits, exits, macs)

    def forward(self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        if attention:
            raise NhlError(
                "top-down attention and gates do not combine; evaluate the ungated model to attend"
            )
        return self.run(x).logits

    def gate_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every exit gate's outputs (nobody exits) and the last stage's output."""
        gate_at = {s: g for g, s in enumerate(self.spec.stages)}
        outs: list[torch.Tensor] = []
        h = x
        for s, stage in enumerate(self.staged.stages):
            h = stage(h)
            if s in gate_at:
                outs.append(self.exits[gate_at[s]](h))
        return outs, h

    @torch.no_grad()
    def all_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Every exit gate's outputs and the final logits for every sample (nobody exits), and the
        routing gate's outputs: what threshold tuning simulates exits from."""
        outs, h = self.gate_outputs(x)
        route = self.route(h) if self.route is not None else None
        if self.route_top_k is not None:
            final, _ = self._routed(h)
        else:
            final = self.staged.finish(h)
        return outs, final, route

    def exit_names(self) -> list[str]:
        return exit_names(self.spec.stages)
