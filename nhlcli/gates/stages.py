"""A model as a chain of stages, so that inference can stop after any stage (early exits).

timm models run their stages one after another but offer no way to resume from a stage's
output. The modules are there, though: walking a model's children in order, expanding only the
containers that hold a stage (``stages`` for ``stages.0``), gives the chain timm itself runs;
each stage of ``feature_info`` closes one segment. The chain is checked against the model's own
forward on a random input before it is used, so a backbone whose forward is not that chain
fails loudly instead of giving other answers.

NHL models: the trunk's stages up to the split point, then all branches as the last segment.
Flat models: every stage, then the rest of the network (e.g. ConvNeXt's ``norm_pre``) and timm's
``forward_head``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nhlcli.errors import NhlError

# Children that belong to a timm classifier's head, run by ``forward_head`` instead of the chain.
HEAD_MODULES = frozenset(
    {"global_pool", "fc", "classifier", "head", "head_drop", "fc_norm", "pre_logits", "flatten"}
)


def _chain(
    model: nn.Module, stage_modules: Sequence[str], skip: frozenset[str]
) -> list[tuple[str, nn.Module]]:
    """The model's modules in execution order, stage containers expanded to their stages."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if not prefix and name in skip:
                continue
            if any(s.startswith(f"{full}.") for s in stage_modules):
                walk(f"{full}.", child)
            else:
                out.append((full, child))

    walk("", model)
    return out


def _segments(
    chain: list[tuple[str, nn.Module]], stage_modules: Sequence[str], last_stage: int, backbone: str
) -> tuple[list[nn.Sequential], list[nn.Module]]:
    """Split ``chain`` after each stage module up to ``last_stage``; the rest is returned too."""
    segments: list[nn.Sequential] = []
    current: list[nn.Module] = []
    rest = list(chain)
    for index in range(last_stage + 1):
        target = stage_modules[index]
        while rest:
            name, module = rest.pop(0)
            current.append(module)
            if name == target:
                break
        else:
            raise NhlError(
                f"backbone {backbone!r}: stage module {target!r} was not found in its module chain; "
                "gates need a timm CNN whose stages run one after another (ResNet, ConvNeXt, EfficientNet)"
            )
        segments.append(nn.Sequential(*current))
        current = []
    return segments, [m for _, m in rest]


def _stage_modules(timm_model: nn.Module, backbone: str) -> list[str]:
    info = getattr(timm_model, "feature_info", None)
    if not info:
        raise NhlError(f"backbone {backbone!r} exposes no stages (timm feature_info); gates cannot be placed")
    return [str(entry["module"]) for entry in info]


class StagedNetwork(nn.Module):
    """``stages[i]`` maps stage ``i - 1``'s output (the image for ``i = 0``) to stage ``i``'s
    output; ``finish`` maps the last stage's output to the logits. Shares the model's weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        kind = getattr(model, "kind", None)
        if kind == "nhl":
            timm_model = model.trunk.model
            backbone = model.trunk.config.backbone
            names = _stage_modules(timm_model, backbone)
            last = model.trunk.config.split
            stages, _ = _segments(_chain(timm_model, names, frozenset()), names, last, backbone)
            self.finish: nn.Module = _Branches(model)
        elif kind == "flat":
            timm_model = model.model
            backbone = model.trunk_config.backbone
            names = _stage_modules(timm_model, backbone)
            last = len(names) - 1
            stages, rest = _segments(_chain(timm_model, names, HEAD_MODULES), names, last, backbone)
            self.finish = _Head(timm_model, rest)
        else:
            raise NhlError(f"gates need an NHL or flat model, not {type(model).__name__}")
        info = timm_model.feature_info
        self.stages = nn.ModuleList(stages)
        self.channels = [int(info[i]["num_chs"]) for i in range(len(stages))]
        self.backbone = backbone

    @property
    def split(self) -> int:
        """The index of the last stage (NHL: the split point; flat: the last stage)."""
        return len(self.stages) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.finish(x)


class _Branches(nn.Module):
    """An NHL model's branches and leaf heads: trunk output -> logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_branches(features)


class _Head(nn.Module):
    """What follows a flat model's last stage: leftover modules, then timm's ``forward_head``."""

    def __init__(self, timm_model: nn.Module, rest: Sequence[nn.Module]) -> None:
        super().__init__()
        self.rest = nn.Sequential(*rest)
        self.timm_model = timm_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.timm_model.forward_head(self.rest(x))


@torch.no_grad()
def check_staging(staged: StagedNetwork, model: nn.Module, batch: int = 2) -> float:
    """Max abs difference between the chain and the model's own forward; raises when they differ."""
    size = tuple(int(v) for v in model.input_config.size)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *size, generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        expected = model(x)
        got = staged(x)
    finally:
        model.train(was_training)
    diff = float((expected - got).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if diff > 1e-4 * max(scale, 1.0):
        raise NhlError(
            f"backbone {staged.backbone!r} does not run as a chain of its stages (max difference "
            f"{diff:.3g} from its own forward); gates support timm CNNs such as ResNet and ConvNeXt"
        )
    return diff
