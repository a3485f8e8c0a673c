"""The shared trunk: any timm model with stages, cut before its last stage (the split point)."""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from nhlcli.errors import NhlError
from nhlcli.text import counted

# Which backbones a trunk can be cut from: what this module needs of a timm model.
CUTTABLE = (
    "timm models with stages (forward_intermediates and feature_info), such as the CNNs resnet18, "
    "convnextv2_atto or efficientnet_b0, which take any input size"
)
# --pretrained-file: the least share of the backbone's weight tensors the file must hold, by
# name and shape, to count as weights for it (a file for the backbone holds all of them; the
# rest would silently stay random)
MIN_PRETRAINED_SHARE = 0.5


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

    def __post_init__(self) -> None:
        chans = self.in_chans
        if not isinstance(chans, numbers.Integral) or isinstance(chans, bool) or chans < 1:
            raise NhlError(f"must be at least 1 (1 for grey, 3 for colour images), got {chans}", "in_chans")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PretrainedLoad:
    """What a ``--pretrained-file`` gave a backbone: how many of its weight tensors it loaded.

    ``total`` counts the backbone's weights and normalisation statistics (not BatchNorm's step
    counters, which weight files often leave out); ``names`` are the loaded ones.
    """

    file: str
    loaded: int
    total: int
    names: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def within(self, keys: Iterable[str]) -> PretrainedLoad:
        """The same load counted over ``keys`` only (a trunk keeps part of the backbone)."""
        own = [k for k in keys if not k.endswith("num_batches_tracked")]
        names = self.names.intersection(own)
        return PretrainedLoad(self.file, len(names), len(own), frozenset(names))

    def describe(self) -> str:
        return f"loaded {self.loaded} of {self.total} trunk weight tensors from {Path(self.file).name}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "loaded": self.loaded, "total": self.total}


def read_pretrained_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a ``--pretrained-file`` (safetensors only, never unpickled)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise NhlError(
            f"{path}: only .safetensors weights are read (nhl never unpickles "
            "a file); convert it with safetensors.torch.save_file",
            "pretrained_file",
        )
    if not path.exists():
        raise NhlError(f"{path} does not exist", "pretrained_file")
    if not path.is_file():
        raise NhlError(f"{path} is not a file; give a .safetensors file of timm weights", "pretrained_file")
    if path.stat().st_size == 0:
        raise NhlError(
            f"{path} is empty (0 bytes); give a .safetensors file of timm weights",
            "pretrained_file",
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise NhlError(
            f"{path} is not a readable safetensors file ({reason}); it may be truncated or another format",
            "pretrained_file",
        ) from exc
    return tensors, meta


def _adapt_input_conv(model: nn.Module, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Fit the first convolution of 3-channel weights to the model's input channels, as timm does
    (grey: the sum over colours)."""
    from timm.models import adapt_input_conv

    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv") or ()
    for name in (first,) if isinstance(first, str) else first:
        key = f"{name}.weight"
        weight, target = state.get(key), own.get(key)
        if weight is None or target is None or weight.ndim != 4 or target.ndim != 4:
            continue
        if weight.shape[1] != target.shape[1]:
            try:
                state[key] = adapt_input_conv(int(target.shape[1]), weight, base_chans=int(weight.shape[1]))
            except (NotImplementedError, ValueError, AssertionError):
                continue  # left to the shape check below


def _is_classifier(model: nn.Module, key: str) -> bool:
    """Whether ``key`` belongs to the backbone's classifier, which timm weight files carry and a
    headless trunk leaves out (timm's ``pretrained_cfg['classifier']`` names it)."""
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return any(key.startswith(f"{name}.") for name in ((named,) if isinstance(named, str) else named))


def load_pretrained_tensors(
    model: nn.Module,
    backbone: str,
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    meta: Mapping[str, str],
) -> PretrainedLoad:
    """Load the tensors of a ``--pretrained-file`` (from :func:`read_pretrained_file`) into
    ``model``; refuse a file that does not fit instead of training from scratch behind a warning.

    The file must hold weights in timm's names for this backbone: at least ``MIN_PRETRAINED_SHARE``
    of the model's weight tensors by name and shape, no tensor with one of its names but another
    shape, and no tensor it does not have besides the classifier (weights of another model).
    """
    from nhlcli.model.files import METADATA_KEY

    if METADATA_KEY in meta:
        raise NhlError(
            f"{path} is an nhl model file, not timm weights for the trunk; give "
            f"timm weights for {backbone} as .safetensors",
            "pretrained_file",
        )
    own = model.state_dict()
    _adapt_input_conv(model, tensors, own)
    compared = [k for k in own if not k.endswith("num_batches_tracked")]
    wrong = [k for k in tensors if k in own and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise NhlError(
            f"{path}: {counted(len(wrong), 'tensor')} have {backbone}'s names but other "
            f"shapes (e.g. {k}: {tuple(tensors[k].shape)} in the file, {tuple(own[k].shape)} in {backbone}); "
            "these are weights of another model",
            "pretrained_file",
        )
    fits = {k: v for k, v in tensors.items() if k in own}
    loaded = [k for k in compared if k in fits]
    if len(loaded) < MIN_PRETRAINED_SHARE * len(compared):
        example = next(iter(tensors), None)
        named = f" (its tensors are named like {example!r})" if example and not loaded else ""
        raise NhlError(
            f"{path} does not fit {backbone}: only {len(loaded)} of {backbone}'s "
            f"{len(compared)} weight tensors are in the file by name and shape{named}; give timm weights "
            f"for {backbone}",
            "pretrained_file",
        )
    extra = [k for k in tensors if k not in own and not _is_classifier(model, k)]
    if extra:  # e.g. resnet34 weights: every resnet18 tensor is there, and layers it lacks
        raise NhlError(
            f"{path} holds {counted(len(extra), 'tensor')} that {backbone} does not have (e.g. "
            f"{sorted(extra)[0]}): these are weights of another, deeper or differently built model; "
            f"give timm weights for {backbone}",
            "pretrained_file",
        )
    model.load_state_dict(fits, strict=False)
    return PretrainedLoad(str(path), len(loaded), len(compared), frozenset(loaded))


def create_timm_model(
    backbone: str, in_chans: int, pretrained: bool, pretrained_file: str | Path | None
) -> nn.Module:
    """A headless timm model; with ``pretrained_file`` its weights come from that file and the
    count loaded is on the model as ``nhl_pretrained_load``."""
    import timm

    known = timm.list_models()
    if backbone not in known and backbone.split(".")[0] not in known:
        close = difflib.get_close_matches(backbone, known, n=4, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else "; see timm.list_models()"
        raise NhlError(f"unknown timm backbone {backbone!r}{hint}")
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans}
    if pretrained_file is not None:
        tensors, meta = read_pretrained_file(pretrained_file)  # a bad file fails before any building
        model = timm.create_model(backbone, pretrained=False, **kwargs)
        model.nhl_pretrained_load = load_pretrained_tensors(model, backbone, pretrained_file, tensors, meta)
        return model
    try:
        return timm.create_model(backbone, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise NhlError(
            f"could not create {backbone} with pretrained weights from the hub (needs internet): {first}"
        ) from exc


def probe_input_size(net: nn.Module, backbone: str, size: Sequence[int]) -> None:
    """Run one blank image of ``size`` (C, H, W) through ``net``, so that a backbone that cannot
    take it fails in one line now, not with a timm assertion in the first training step."""
    param = next(iter(net.parameters()), None)
    if param is not None and param.device.type == "meta":
        return
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, *(int(v) for v in size), device=device, dtype=dtype))
    except torch.cuda.OutOfMemoryError:
        raise  # not a matter of the size's shape
    except (AssertionError, RuntimeError, ValueError, IndexError) as exc:
        h, w = int(size[1]), int(size[2])
        patch = getattr(getattr(net, "model", net), "patch_embed", None)
        fixed = getattr(patch, "img_size", None) if getattr(patch, "strict_img_size", False) else None
        if fixed:
            why = (
                f"it is a transformer with a fixed patch grid that takes {fixed[0]}x{fixed[1]} images only; "
                f"use `input_size` {fixed[0]}"
            )
        else:
            first = " ".join(str(exc).split())[:160]
            why = f"its layers cannot take that size ({first}); use a larger `input_size`"
        raise NhlError(
            f"backbone {backbone!r} cannot run on {h}x{w} images: {why}, or another backbone: a trunk "
            f"is cut from {CUTTABLE}"
        ) from exc
    finally:
        net.train(was_training)


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
                f"(forward_intermediates/feature_info); a trunk needs {CUTTABLE}"
            )
        stages = len(info)
        split = stages - 2 if config.split is None else config.split
        if split < 0:  # counted from the end: -1 is the last stage (lateSP)
            split += stages
        if not 0 <= split < stages:
            raise NhlError(f"split {split} is out of range: {config.backbone} has stages 0 to {stages - 1}")
        model.prune_intermediate_layers(indices=[split], prune_norm=True, prune_head=True)
        load = getattr(model, "nhl_pretrained_load", None)
        self.pretrained_load = load.within(model.state_dict()) if load is not None else None
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
