"""The model contract: what every model kind offers the rest of nhl.

Evaluation, prediction, gates, experts, export and the CLI talk to models only through
:class:`NhlModel`; none of them asks which kind a model is. A capability a kind lacks is a
``*_problem`` string (why it cannot, and what to do instead; ``None``: it can), so a caller
refuses in one line without naming a kind. A new kind subclasses :class:`NhlModel`, implements
the abstract members (instantiating it fails until it does), and registers itself in
``model/registry.py``; ``tests/test_model_contract.py`` then runs it through every use.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nhlcli.errors import NhlError
from nhlcli.model.stages import StagedNetwork
from nhlcli.taxonomy.tree import Tree


@dataclass
class Inference:
    """What one inference pass gives: the logits, the exit each sample left at (an index into
    :meth:`NhlModel.exit_names`, whose last entry is the end of the network; ``0`` for a model
    without gates) and the multiply-accumulates each sample cost."""

    logits: torch.Tensor
    exits: torch.Tensor
    macs: torch.Tensor | None  # None where the caller did not ask (``count_macs=False``)
    other: torch.Tensor | None = None  # per sample, True: "none of my classes" (an expert's other head)


def module_device(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def forward_macs(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Multiply-accumulates of ``module(x)`` and its output. ``FlopCounterMode`` counts FLOPs (2 x
    MACs); the branches' inference path uses fused oneDNN kernels it has no formula for, so the
    count runs on the autograd path (the same arithmetic)."""
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        out = module(x)
    return counter.get_total_flops() // 2, out.detach()


class NhlModel(nn.Module, metaclass=ABCMeta):
    """A classifier over a tree's classes that nhl can save, open, cut, gate, profile and export."""

    kind: ClassVar[str]  # the file's ``kind``, the key of ``MODEL_KINDS``
    # takes branch widths and blocks, and is trained on a real hierarchy (a flat model on a flat tree)
    branch_shaped: ClassVar[bool] = False
    # a split point cuts nothing: the network keeps every stage (a split only says what to freeze)
    keeps_every_stage: ClassVar[bool] = False
    tree: Tree

    # -- what the file records and data loaders need -----------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.tree.classes

    @property
    @abstractmethod
    def input_config(self) -> Any:
        """Input size and normalisation (``model.nhl.InputConfig``)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The JSON metadata that rebuilds this module with :meth:`from_config`."""

    @classmethod
    @abstractmethod
    def from_config(cls, meta: Mapping[str, Any], skeleton: bool = False) -> NhlModel:
        """The model a file's metadata describes; ``skeleton`` may leave large weights
        unallocated (the caller then loads every weight with ``assign=True``)."""

    @classmethod
    def from_variant(
        cls,
        name: str,
        preset: Mapping[str, Any],
        tree: Tree,
        trunk: Any = None,
        branches: Any = None,
        **kwargs: Any,
    ) -> NhlModel:
        """A new model of this kind for ``tree`` as the registered variant ``name`` presets it
        (``model.registry.create_model``); ``kwargs`` reach the constructor (pretrained weights).
        Kinds without branches refuse a branch shape rather than ignore it."""
        if branches is not None:
            raise NhlError(
                f"a branch shape (`widths`, `blocks`) shapes NHL branches; a {name} model has none"
            )
        return cls(tree, trunk, **kwargs)

    @staticmethod
    def config_problem(meta: Mapping[str, Any]) -> str | None:
        """What is wrong with this kind's own part of a file's metadata (``None``: nothing)."""
        return None

    def file_state(self) -> dict[str, torch.Tensor]:
        """The tensors the model file holds, by name."""
        return dict(self.state_dict())

    # -- structure and cost --------------------------------------------------------------------
    @abstractmethod
    def staged(self) -> StagedNetwork:
        """The network as a chain of stages: where exit gates may go, and whether routing can."""

    @abstractmethod
    def parameter_groups(self) -> dict[str, int]:
        """Parameter counts: ``total``, ``trunk``, ``branches`` (and ``gates`` where there are)."""

    @abstractmethod
    def freeze_trunk(self, split: int | None = None) -> list[str]:
        """Freeze what an NHL trunk cut at ``split`` holds; returns the frozen parameter names."""

    @property
    def pretrained_load(self) -> Any:
        """What a pretrained file gave the network (``None`` without one)."""
        return None

    @property
    def base_network(self) -> NhlModel:
        """The network without what a file wraps around it (gates): what costs are measured on."""
        return self

    # -- capabilities: why not (None: it can) ---------------------------------------------------
    cut_problem: str | None = None  # cutting experts
    attention_problem: str | None = None  # top-down attention
    gating_problem: str | None = None  # fitting exit gates on it
    # growing it by new classes (nhl graft): only per-class branches can be added to
    graft_problem: str | None = (
        "has no per-class branches to add new classes to; grafting needs an NHL model (train one with "
        "'nhl train')"
    )
    # early exits and routing (a model without gates has neither)
    route_problem: str | None = (
        "needs a gated file with a routing gate; make one with 'nhl gates fit MODEL -o gated.safetensors'"
    )
    # what needs the whole network's logits for a subset of classes or under attention
    whole_only_problem: str | None = None

    @classmethod
    def cut_plan(cls, meta: Mapping[str, Any], parent: Tree, expert: Tree) -> Any:
        """Which rows of each tensor an expert for ``expert``'s classes keeps, from the parent
        file's metadata alone (``model.slicing.SlicePlan``), so a cut reads only those rows.
        Kinds that cannot be cut (``cut_problem``) do not override this."""
        raise NhlError(f"this {meta.get('kind')} model {cls.cut_problem or 'cannot be cut'}")

    def set_route_top_k(self, k: int | None) -> None:
        """Route each sample through its ``k`` best super-categories' branches (``None``: all)."""
        if k is not None and self.route_problem:
            raise NhlError(self.route_problem, "route_top_k")

    def class_weight_rows(self) -> torch.Tensor | None:
        """The rows ``[classes, features]`` of a single linear classifier (what an induced tree
        clusters); ``None`` where the classes have no such layer."""
        return None

    # -- inference -------------------------------------------------------------------------------
    def exit_names(self) -> list[str]:
        """The names of a gated model's exits, the end of the network last; empty without gates."""
        return []

    @torch.no_grad()
    def infer(
        self, x: torch.Tensor, attention: Mapping[int, torch.Tensor] | None = None, count_macs: bool = True
    ) -> Inference:
        """Logits, exits and per-sample MACs of a batch: one entry for every kind. Without gates
        every sample costs the same, counted once per input shape; ``count_macs=False`` skips
        that count (a gated model knows its costs anyway)."""
        logits = self(x, attention)
        n = x.shape[0]
        macs = None
        if count_macs:
            macs = torch.full((n,), float(self.macs_per_image(tuple(x.shape[1:]))), dtype=torch.float64)
        return Inference(logits, torch.zeros(n, dtype=torch.long), macs)

    def macs_per_image(self, shape: tuple[int, ...]) -> int:
        """MACs of one image of ``shape`` through the whole network, counted once per shape."""
        cache: dict[tuple[int, ...], int] = self.__dict__.setdefault("_macs_per_shape", {})
        if shape not in cache:
            was = self.training
            self.eval()
            try:
                cache[shape] = forward_macs(self, torch.zeros(1, *shape, device=module_device(self)))[0]
            finally:
                self.train(was)
        return cache[shape]

    def exit_report(self) -> dict[str, Any] | None:
        """What a profile says of the exits (gates, thresholds, GMACs at each); ``None`` without."""
        return None

    @property
    def has_other(self) -> bool:
        """Whether it can answer "none of my classes" (an expert cut with an other head)."""
        return False

    def attach_other(self, head: Any) -> None:
        """Give an expert its "none of my classes" head (model/other.py): NHL experts only."""
        raise NhlError(f"a {self.kind} model takes no other head; cut an expert from an NHL model")

    # -- export ----------------------------------------------------------------------------------
    def export_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What an exported graph returns: the logits, then anything a runtime decides with."""
        return (self(x),)

    def export_output_names(self) -> list[str]:
        return ["logits"]

    def export_metadata(self) -> dict[str, Any]:
        """Metadata a runtime needs to use :meth:`export_outputs` beyond the logits."""
        return {}
