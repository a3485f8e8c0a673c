"""``open_model``: a model file back as a module, with whatever sections its metadata holds.

``files.py`` reads and writes tensors and metadata and knows no model kinds; the registry
rebuilds the base model by its ``kind``; a section registry (:data:`FILE_SECTIONS`) then wraps
it with what else the file carries. A new section is one entry here: a key of the metadata, the
tensor-name prefix its weights are saved under, and a function that wraps the base model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nhlcli.errors import NhlError
from nhlcli.model.files import ModelFileContents, read_model_file
from nhlcli.model.gated import GATE_PREFIX, GatedModel, GateSpec
from nhlcli.model.other import OTHER_PREFIX, OtherHead, OtherSpec
from nhlcli.model.registry import model_from_config
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.text import one_line


@dataclass(frozen=True)
class FileSection:
    """Something a model file may hold beside the base model's weights."""

    prefix: str  # its tensors' names start with this
    wrap: Callable[[nn.Module, Any, dict[str, torch.Tensor]], nn.Module]  # (model, section, tensors)
    cut_problem: str  # why a file with this section is not cut as it is, and what to do instead


def _with_gates(model: nn.Module, section: Any, tensors: dict[str, torch.Tensor]) -> nn.Module:
    gated = GatedModel(model, GateSpec.from_dict(section))
    gated.load_gate_state(tensors)
    return gated


def _with_other(model: nn.Module, section: Any, tensors: dict[str, torch.Tensor]) -> nn.Module:
    head = OtherHead(OtherSpec.from_dict(section))
    try:
        head.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise NhlError(
            f"the file's other head does not match its section ({one_line(str(exc))[:200]}); cut the "
            "expert again with `other`"
        ) from exc
    model.attach_other(head)
    return model


# Sections by metadata key, applied in this order on top of the base model.
FILE_SECTIONS: dict[str, FileSection] = {
    "other": FileSection(
        OTHER_PREFIX,
        _with_other,
        "is an expert with an other head; cut from the model it was cut from (an expert of an expert is "
        "that model's expert for fewer classes)",
    ),
    "gates": FileSection(
        GATE_PREFIX,
        _with_gates,
        "is a gated file; cut the expert from the ungated model, then fit gates on the expert with "
        "'nhl gates fit EXPERT -o gated.safetensors'",
    )
}


def _rebuild(path: str | Path, meta: Mapping[str, Any]) -> nn.Module:
    try:
        return model_from_config(meta, skeleton=True, path=path)
    except NhlError as exc:  # e.g. a damaged tree, or a backbone this timm does not have
        if str(exc).startswith(str(path)):
            raise
        raise NhlError(f"{path}: cannot rebuild the model its metadata describes: {exc}") from exc
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise NhlError(
            f"{path}: the nhl metadata is damaged ({type(exc).__name__}: {exc}); use an intact copy "
            "of the model file"
        ) from exc


def open_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a file describes, load its weights strictly, wrap it with the file's
    sections (gates), and return it in eval mode with ``metadata`` set.

    The file is opened once and its metadata and tensors are checked against the digests recorded
    at save time, so a file replaced during the load is wholly the old or the new one, and a
    damaged one is refused rather than answering wrongly."""
    return model_from_contents(read_model_file(path), device)


def model_from_contents(contents: ModelFileContents, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a file read by :func:`~nhlcli.model.files.read_model_file` (what
    :func:`open_model` does after reading); ``file_sha256`` is set when the read hashed the file."""
    path, meta = contents.header.path, contents.meta
    model = _rebuild(path, meta)
    state = contents.tensors
    sections = {
        key: {k[len(spec.prefix) :]: state.pop(k) for k in [k for k in state if k.startswith(spec.prefix)]}
        for key, spec in FILE_SECTIONS.items()
    }
    try:
        model.load_state_dict(state, strict=True, assign=True)
        model.metadata = meta
        for key, spec in FILE_SECTIONS.items():
            if key in meta:
                model = spec.wrap(model, meta[key], sections[key])
            elif sections[key]:
                raise RuntimeError(f"unexpected {key} tensors {sorted(sections[key])[:3]}")
    except RuntimeError as exc:
        first = one_line(exc, 300)
        raise NhlError(f"{path}: the weights do not fit the model its metadata describes ({first})") from exc
    model.metadata = meta
    model.file_sha256 = contents.file_sha256
    model.tensor_sha256 = contents.header.tensor_digest
    return model.to(device).eval()


def classifier_weights(model_file: str | Path) -> tuple[np.ndarray, list[ClassEntry]]:
    """A flat model's class weight rows ``[num_classes, features]`` and its classes: what the
    induced tree source clusters (``build_tree("induced", entries, class_weights=...)``)."""
    model = open_model(model_file)
    rows = model.class_weight_rows()
    if rows is None:
        raise NhlError(
            f"{model_file} is an {model.kind} model; induced trees need a flat model "
            "(train one with 'nhl train' and `flat`)"
        )
    weight = rows.detach().float().cpu().numpy()
    tree = model.tree
    entries = [
        ClassEntry(c, tree.node(c).name, tree.node(c).wnid, tree.node(c).aliases) for c in tree.classes
    ]
    return weight.reshape(weight.shape[0], -1), entries
