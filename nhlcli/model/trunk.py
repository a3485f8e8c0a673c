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
from nhlcli.text import counted, one_line

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


def read_pretrained_header(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and header metadata of a ``pretrained_file``, read before any building: only
    safetensors (nhl never unpickles a file), checked whole by safetensors (a truncated file fails
    here); no tensor is read."""
    from timm.models import clean_state_dict

    path = Path(path)
    if path.suffix != ".safetensors":  # timm would hand any other file to torch.load
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
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise NhlError(
            f"{path} is not a readable safetensors file ({one_line(exc, 200)}); it may be truncated or "
            "another format",
            "pretrained_file",
        ) from exc
    return clean_state_dict(shapes), meta  # the names timm loads them under


def _cfg_names(model: nn.Module, key: str) -> tuple[str, ...]:
    """Module names timm's ``pretrained_cfg`` gives for ``key`` (``first_conv``, ``classifier``)."""
    named = model.pretrained_cfg.get(key) or ()
    return (named,) if isinstance(named, str) else tuple(named)


def _fitting(model: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The file's tensors that load into ``model`` by name and shape, as they are or as timm adapts
    them: the first convolution's input channels (grey: the sum over colours)."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stems = {f"{name}.weight" for name in _cfg_names(model, "first_conv")}

    def fits(k: str) -> bool:
        a, b = shapes[k], own[k]
        return a == b or (k in stems and len(a) == len(b) == 4 and a[:1] + a[2:] == b[:1] + b[2:])

    return [k for k in shapes if k in own and fits(k)]


def _check_fit(
    model: nn.Module, backbone: str, path: Path, shapes: Mapping[str, tuple[int, ...]]
) -> PretrainedLoad:
    """What the file will give ``model``, checked before timm loads it, since timm loads a headless
    model non-strictly and would leave the rest random behind a log line: no tensor with one of the
    model's names but another shape, at least ``MIN_PRETRAINED_SHARE`` of its weight tensors, and
    no tensor it does not have besides the classifier (weights of another model)."""
    own = model.state_dict()
    fitting = set(_fitting(model, shapes))
    wrong = [k for k in shapes if k in own and k not in fitting]
    if wrong:
        k = wrong[0]
        raise NhlError(
            f"{path}: {counted(len(wrong), 'tensor')} have {backbone}'s names but other "
            f"shapes (e.g. {k}: {shapes[k]} in the file, {tuple(own[k].shape)} in {backbone}); "
            "these are weights of another model",
            "pretrained_file",
        )
    compared = [k for k in own if not k.endswith("num_batches_tracked")]
    loaded = [k for k in compared if k in fitting]
    if len(loaded) < MIN_PRETRAINED_SHARE * len(compared):
        example = next(iter(shapes), None)
        named = f" (its tensors are named like {example!r})" if example and not loaded else ""
        raise NhlError(
            f"{path} does not fit {backbone}: only {len(loaded)} of {backbone}'s "
            f"{len(compared)} weight tensors are in the file by name and shape{named}; give timm weights "
            f"for {backbone}",
            "pretrained_file",
        )
    classifier = tuple(f"{name}." for name in _cfg_names(model, "classifier"))
    extra = [k for k in shapes if k not in own and not (classifier and k.startswith(classifier))]
    if extra:  # e.g. resnet34 weights: every resnet18 tensor is there, and layers it lacks
        raise NhlError(
            f"{path} holds {counted(len(extra), 'tensor')} that {backbone} does not have (e.g. "
            f"{sorted(extra)[0]}): these are weights of another, deeper or differently built model; "
            f"give timm weights for {backbone}",
            "pretrained_file",
        )
    return PretrainedLoad(str(path), len(loaded), len(compared), frozenset(loaded))


def _timm_from_file(backbone: str, in_chans: int, pretrained_file: str | Path) -> nn.Module:
    """A headless timm model whose weights timm's ``load_pretrained`` reads from ``pretrained_file``
    (adapting the stem to ``in_chans`` as for hub weights); what it loaded is on it as
    ``nhl_pretrained_load``."""
    import timm
    from timm.models import load_pretrained

    from nhlcli.model.files import METADATA_KEY

    path = Path(pretrained_file)
    shapes, meta = read_pretrained_header(path)  # a bad file fails before any building
    if METADATA_KEY in meta:
        raise NhlError(
            f"{path} is an nhl model file, not timm weights for the trunk; give "
            f"timm weights for {backbone} as .safetensors",
            "pretrained_file",
        )
    model = timm.create_model(backbone, num_classes=0, in_chans=in_chans)
    load = _check_fit(model, backbone, path, shapes)
    source = {**model.pretrained_cfg, "file": str(path), "custom_load": False}  # never a model's own loader
    try:
        load_pretrained(model, pretrained_cfg=source, num_classes=0, in_chans=in_chans)
    except (RuntimeError, SafetensorError, OSError, KeyError) as exc:  # a stem timm cannot adapt
        raise NhlError(f"{path} does not fit {backbone} ({one_line(exc, 200)})", "pretrained_file") from exc
    model.nhl_pretrained_load = load
    return model


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
    if pretrained_file is not None:
        return _timm_from_file(backbone, in_chans, pretrained_file)
    try:
        return timm.create_model(backbone, pretrained=pretrained, num_classes=0, in_chans=in_chans)
    except (OSError, RuntimeError, ValueError) as exc:
        raise NhlError(
            f"could not create {backbone} with pretrained weights from the hub (needs internet): "
            f"{one_line(exc, 200)}"
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
            why = f"its layers cannot take that size ({one_line(exc, 160)}); use a larger `input_size`"
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
        uncuttable = NhlError(
            f"backbone {config.backbone!r} cannot be cut: timm exposes no stages for it "
            f"(forward_intermediates/feature_info); a trunk needs {CUTTABLE}"
        )
        info = getattr(model, "feature_info", None)  # timm's list of stage outputs
        if not info:
            raise uncuttable
        stages = len(info)
        split = stages - 2 if config.split is None else config.split
        if split < 0:  # counted from the end: -1 is the last stage (lateSP)
            split += stages
        if not 0 <= split < stages:
            raise NhlError(f"split {split} is out of range: {config.backbone} has stages 0 to {stages - 1}")
        try:  # timm's intermediate-features API, with forward_intermediates: a model lacks both or neither
            model.prune_intermediate_layers(indices=[split], prune_norm=True, prune_head=True)
        except (AttributeError, NotImplementedError) as exc:
            raise uncuttable from exc
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
