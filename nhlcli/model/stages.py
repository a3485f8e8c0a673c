"""A model as a chain of stages, so that inference can stop after any stage (early exits).

timm models run their stages one after another but offer no way to resume from a stage's
output. The modules are there, though: walking a model's children in order, expanding only the
containers that hold a stage (``stages`` for ``stages.0``), gives the chain timm itself runs;
each stage of ``feature_info`` closes one segment. The chain is checked against the model's own
forward on a random input before it is used, so a backbone whose forward is not that chain
fails loudly instead of giving other answers.

Each model kind assembles its own chain from these pieces (``NHLModel.staged``: the trunk's
stages up to the split point, then all branches; ``FlatModel.staged``: every stage, then the
rest of the network, e.g. ConvNeXt's ``norm_pre``, and timm's ``forward_head``).
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


def stage_segments(
    timm_model: nn.Module, backbone: str, last_stage: int | None = None, skip: frozenset[str] = frozenset()
) -> tuple[list[nn.Sequential], list[nn.Module]]:
    """A timm model cut after each of its stages up to ``last_stage`` (default: the last one), and
    the modules that follow (``skip``: top-level children left out, e.g. the classifier head)."""
    names = _stage_modules(timm_model, backbone)
    last = len(names) - 1 if last_stage is None else last_stage
    return _segments(_chain(timm_model, names, skip), names, last, backbone)


class StagedNetwork(nn.Module):
    """``stages[i]`` maps stage ``i - 1``'s output (the image for ``i = 0``) to stage ``i``'s
    output; ``finish`` maps the last stage's output to the logits. Shares the model's weights.

    Each model kind builds its own (``model.staged()``) and says where exits may go:
    ``last_exit`` is the last stage an exit gate may follow (``last_exit_name`` says which stage
    that is, for messages) and ``route_problem`` why the model cannot route (``None``: it can).
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        finish: nn.Module,
        channels: Sequence[int],
        backbone: str,
        last_exit: int,
        last_exit_name: str,
        route_problem: str | None = None,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.finish = finish
        self.channels = list(channels)
        self.backbone = backbone
        self.last_exit = last_exit
        self.last_exit_name = last_exit_name
        self.route_problem = route_problem

    @property
    def split(self) -> int:
        """The index of the last stage (NHL: the split point; flat: the last stage)."""
        return len(self.stages) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.finish(x)


def stage_channels(timm_model: nn.Module, stages: int) -> list[int]:
    """Output channels of a timm model's first ``stages`` stages (from its ``feature_info``)."""
    return [int(timm_model.feature_info[i]["num_chs"]) for i in range(stages)]


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
