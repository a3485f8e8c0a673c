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

from nhlcli.errors import NhlError
from nhlcli.model.contract import Inference, NhlModel, forward_macs, module_device
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
    route_top_k: int | None = None  # the routing width tuned into the file (None: every super-category)

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
                route_top_k=None if data.get("route_top_k") is None else int(data["route_top_k"]),
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
        tree: Tree = model.tree
        sub = tree.subtree(list(nodes))
        self.levels, self.heads = model.sliced_branches(sub)
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


# Logits (a gate's outputs for samples that left there), the exit of each sample (gate index, or
# the number of gates for the full network) and the MACs each sample cost.
GatedOutput = Inference


class GatedModel(NhlModel):
    """An NHL or flat model with exit gates after chosen stages and an optional routing gate.

    It keeps the contract of the model it wraps (``kind``, classes, config), so a gated file is
    opened, evaluated, predicted with and exported like any other; what differs is its exits."""

    gating_problem = "already has gates; fit gates on the ungated model it was made from"
    graft_problem = (
        "is a gated file: its gates were fitted to the old classes. Graft onto the ungated model, then fit "
        "gates on the grown one with 'nhl gates fit GROWN -o gated.safetensors'"
    )
    attention_problem = "top-down attention and gates do not combine; evaluate the ungated model to attend"
    whole_only_problem = (
        "a gated file is evaluated whole: `attend`, `attend_truth` and `classes` need the ungated "
        "model (or cut an expert first and fit gates on it)"
    )

    def __init__(self, model: NhlModel, spec: GateSpec, check: bool = False) -> None:
        super().__init__()
        self.model = model
        self.chain: StagedNetwork = model.staged()
        if check:
            check_staging(self.chain, model)
        last = self.chain.last_exit
        for s in spec.stages:
            if not 0 <= s <= last:
                raise NhlError(
                    f"gate stage {s} is out of range: this model has gate-able stages 0 to {last} "
                    f"({self.chain.last_exit_name})"
                )
        if len(set(spec.stages)) != len(spec.stages) or list(spec.stages) != sorted(spec.stages):
            raise NhlError(f"gate stages must be distinct and increasing, got {spec.stages}")
        if spec.route and self.chain.route_problem:
            raise NhlError(self.chain.route_problem)
        self.spec = spec
        classes = len(model.tree.classes)
        self.exits = nn.ModuleList(Gate(self.chain.channels[s], classes) for s in spec.stages)
        self.route: Gate | None = None
        if spec.route:
            self.route = Gate(self.chain.channels[self.chain.split], len(model.tree.level(1)))
        self.route_top_k: int | None = None
        if spec.route_top_k is not None:
            self.set_route_top_k(spec.route_top_k)
        self._paths: dict[tuple[int, ...], BranchPath] = {}
        self._path_macs: dict[tuple[int, ...], int] = {}
        self._stage_macs: list[int] | None = None
        self._trunk_shape: tuple[int, ...] = ()
        # one-time work inside forward passes (building a routed branch set, counting its MACs),
        # which throughput measurements leave out
        self.setup_seconds = 0.0
        self.metadata: dict[str, Any] = {}

    # -- the contract, as the wrapped model has it ------------------------------------------------
    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.model.kind

    @property
    def tree(self) -> Tree:  # type: ignore[override]
        return self.model.tree

    @property
    def input_config(self) -> Any:
        return self.model.input_config

    @property
    def base_network(self) -> NhlModel:
        return self.model

    @property
    def cut_problem(self) -> str | None:  # type: ignore[override]
        return "is a gated file; cut the expert from the ungated model, then fit gates on the expert"

    @property
    def route_problem(self) -> str | None:  # type: ignore[override]
        if self.route is not None:
            return None
        return (
            "needs a gated file with a routing gate; make one with 'nhl gates fit' on an NHL model "
            "(a flat model or a file fitted with `no_route` has none)"
        )

    @classmethod
    def from_config(cls, meta: Mapping[str, Any], skeleton: bool = False) -> GatedModel:
        """A gated file is opened as its base model plus the ``gates`` section (``open_model``)."""
        from nhlcli.model.registry import model_from_config

        return cls(model_from_config(meta, skeleton=skeleton), GateSpec.from_dict(meta["gates"]))

    def staged(self) -> StagedNetwork:
        return self.chain

    def freeze_trunk(self, split: int | None = None) -> list[str]:
        return self.model.freeze_trunk(split)

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
        if self.route_problem:
            raise NhlError(self.route_problem, "route_top_k")
        supers = len(self.tree.level(1))
        if not 1 <= k <= supers:
            raise NhlError(f"{k}: choose 1 to {supers} (the tree's super-categories)", "route_top_k")
        self.route_top_k = k

    # -- cost ----------------------------------------------------------------------------------
    @torch.no_grad()
    def stage_macs(self) -> list[int]:
        """MACs of each stage for one image, then of the rest of the network (last entry)."""
        if self._stage_macs is None:
            was = self.training
            self.eval()
            x = torch.zeros(1, *self.input_config.size, device=module_device(self.model))
            macs = []
            for stage in self.chain.stages:
                m, x = forward_macs(stage, x)
                macs.append(m)
            self._trunk_shape = tuple(x.shape)
            macs.append(forward_macs(self.chain.finish, x)[0])
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
            x = torch.zeros(self._trunk_shape, device=module_device(self.model))
            branch = forward_macs(self._path(key), x)[0]
            self._path_macs[key] = sum(stages[:-1]) + self.route_macs() + branch
            self.setup_seconds += time.perf_counter() - started
        return self._path_macs[key]

    # -- inference -----------------------------------------------------------------------------
    def _path(self, key: tuple[int, ...]) -> BranchPath:
        if key not in self._paths:
            started = time.perf_counter()
            supers = self.tree.level(1)
            self._paths[key] = BranchPath(self.model, [supers[i] for i in key]).to(module_device(self.model))
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
        for s, stage in enumerate(self.chain.stages):
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
            final = self.chain.finish(h)
            macs[index] = float(exit_macs[-1])
        if logits is None:
            logits = torch.empty(n, final.shape[1], device=device, dtype=final.dtype)
        logits[index.to(device)] = final.to(logits.dtype)
        return GatedOutput(logits, exits, macs)

    def forward(self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        return self.infer(x, attention).logits

    def infer(
        self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None, count_macs: bool = True
    ) -> Inference:
        """Gated inference (:meth:`run` at the file's thresholds): the contract's one entry."""
        if attention:
            raise NhlError(self.attention_problem)
        return self.run(x)

    def gate_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every exit gate's outputs (nobody exits) and the last stage's output."""
        gate_at = {s: g for g, s in enumerate(self.spec.stages)}
        outs: list[torch.Tensor] = []
        h = x
        for s, stage in enumerate(self.chain.stages):
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
            final = self.chain.finish(h)
        return outs, final, route

    def exit_names(self) -> list[str]:
        return exit_names(self.spec.stages)

    def exit_report(self) -> dict[str, Any]:
        """The gates' loss, parameters, thresholds, the GMACs of leaving at each exit (every gate
        on) and the operating point they were tuned to."""
        every_gate_on = self.exit_macs([0.0] * len(self.exits))
        return {
            "loss": self.spec.loss,
            "params": self.parameter_groups()["gates"],
            "thresholds": self.thresholds,
            "exits": [
                {"name": name, "gmacs": macs / 1e9}
                for name, macs in zip(self.exit_names(), every_gate_on, strict=True)
            ],
            "tuned": self.spec.tune,
        }

    # -- export ----------------------------------------------------------------------------------
    def export_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The full network's logits, then every exit gate's outputs (the runtime applies the rule)."""
        outs, h = self.gate_outputs(x)
        return (self.chain.finish(h), *outs)

    def export_output_names(self) -> list[str]:
        return ["logits", *[f"gate_{g + 1}" for g in range(len(self.exits))]]

    def export_metadata(self) -> dict[str, Any]:
        rule = "output (margin)" if self.spec.loss == "hinge" else "softmax probability"
        return {
            "gates": {
                "outputs": self.export_output_names()[1:],
                "stages": self.spec.stages,
                "loss": self.spec.loss,
                "thresholds": self.thresholds,
                "rule": "exit at the first gate whose score reaches its threshold (null: never); score = max "
                + rule,
            }
        }
