"""The shared trunk: any timm model with stages, cut before its last stage (the split point)."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nhlcli.errors import NhlError


@dataclass(frozen=True)
class TrunkConfig:
    """What rebuilds a trunk: the timm backbone, where it is cut, and its input channels.

    ``split`` indexes timm's ``feature_info`` (the stage outputs; negative counts from the end);
    the default ``None`` cuts before the last stage (ResNet: stem + layer1..3; ConvNeXtV2:
    stages 0..2). The paper's lateSP moves the split one stage later (``-1``).
    """

    backbone: str = "resnet50"
    split: int | None = None
    in_chans: int = 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def create_timm_model(
    backbone: str, in_chans: int, pretrained: bool, pretrained_file: str | Path | None
) -> nn.Module:
    import timm

    known = timm.list_models()
    if backbone not in known and backbone.split(".")[0] not in known:
        close = difflib.get_close_matches(backbone, known, n=4, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else "; see timm.list_models()"
        raise NhlError(f"unknown timm backbone {backbone!r}{hint}")
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans}
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if path.suffix != ".safetensors":
            raise NhlError(
                f"--pretrained-file {path}: only .safetensors weights are read (nhl never unpickles "
                "a file); convert it with safetensors.torch.save_file"
            )
        if not path.is_file():
            raise NhlError(f"--pretrained-file {path} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        return timm.create_model(backbone, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        where = f"from {pretrained_file}" if pretrained_file else "from the hub (needs internet)"
        first = " ".join(str(exc).split())[:200]
        raise NhlError(f"could not create {backbone} with pretrained weights {where}: {first}") from exc


class Trunk(nn.Module):
    """A timm model cut after stage ``split``: returns that stage's feature map (NCHW)."""

    def __init__(
        self,
        config: TrunkConfig,
        pretrained: bool = False,
        pretrained_file: str | Path | None = None,
    ) -> None:
        super().__init__()
        model = create_timm_model(config.backbone, config.in_chans, pretrained, pretrained_file)
        info = getattr(model, "feature_info", None)
        if not hasattr(model, "forward_intermediates") or not info:
            raise NhlError(
                f"backbone {config.backbone!r} cannot be cut: timm exposes no stages for it "
                "(forward_intermediates/feature_info); pick a CNN such as resnet50 or convnextv2_tiny"
            )
        stages = len(info)
        split = stages - 2 if config.split is None else config.split
        if split < 0:  # counted from the end: -1 is the last stage (lateSP)
            split += stages
        if not 0 <= split < stages:
            raise NhlError(f"split {split} is out of range: {config.backbone} has stages 0 to {stages - 1}")
        model.prune_intermediate_layers(indices=[split], prune_norm=True, prune_head=True)
        self.model = model
        self.config = TrunkConfig(config.backbone, split, config.in_chans)
        self.out_channels = int(info[split]["num_chs"])
        self.reduction = int(info[split]["reduction"])
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_intermediates(x, indices=[self.config.split], intermediates_only=True)[0]

    def freeze(self) -> None:
        """Freeze the weights and keep normalisation statistics fixed (paper: frozen pretrained trunk)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self._frozen = True

    def train(self, mode: bool = True) -> Trunk:
        super().train(mode)
        if getattr(self, "_frozen", False):
            self.model.eval()
        return self
