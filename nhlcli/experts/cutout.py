"""Cutouts (paper 003, 3.3): an expert for some classes, sliced out of a trained NHL model.

An expert keeps the trunk and only the branch nodes on the paths from the root to the kept
classes. Every branch tensor has the node dimension first, so cutting is row selection: no
weights are recomputed and the expert's logits are exactly the parent's logits for the kept
classes (its softmax then runs over those classes only, eq. 3).

Two entry points share one :class:`~nhlcli.model.slicing.SlicePlan`: :func:`cut_model` for a
model in memory, and :func:`cutout_file`, which reads only the rows it keeps from the parent's
safetensors file, so cutting a 1000-class model never holds the full branch weights in memory.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensor_bytes

from nhlcli.errors import NhlError
from nhlcli.experts.other import OtherRequest
from nhlcli.model.contract import NhlModel
from nhlcli.model.files import OpenModelFile, check_digest, open_model_file, save_model
from nhlcli.model.loading import FILE_SECTIONS
from nhlcli.model.registry import model_from_config, model_kind
from nhlcli.model.slicing import SlicePlan, read_sliced_state, slice_state
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import one_line


def _expert_model(meta: Mapping[str, Any], expert_tree: Tree, state: dict[str, torch.Tensor]) -> NhlModel:
    model = model_kind(meta).from_config({**meta, "tree": expert_tree.to_dict()}, skeleton=True)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _check_nhl(meta: Mapping[str, Any], source: str) -> None:
    """Refuse what cannot be cut, in the words of the model kind or file section at fault."""
    for key, section in FILE_SECTIONS.items():
        if key in meta:
            raise NhlError(f"{source} {section.cut_problem}")
    problem = model_kind(meta).cut_problem
    if problem:
        raise NhlError(f"{source} {problem}")


def cut_model(model: NhlModel, labels: Sequence[str]) -> NhlModel:
    """The expert of an NHL model in memory for ``labels`` (shares no storage with ``model``)."""
    meta = model.config()
    _check_nhl(meta, "this model")
    expert_tree = model.tree.select(labels).subtree(model.tree)
    plan = model_kind(meta).cut_plan(meta, model.tree, expert_tree)
    state = slice_state(model.state_dict(), plan)
    return _expert_model(meta, expert_tree, state).to(next(model.parameters()).device)


@dataclass
class Cutout:
    """An expert and where it came from (``lineage`` is the file's ``expert`` section)."""

    model: NhlModel
    lineage: dict[str, Any]
    seconds: float
    training: dict[str, Any] | None = None  # how the parent was trained, carried along
    notes: tuple[str, ...] = ()  # how the names resolved, where a person should know (overlaps, senses)
    parent_meta: dict[str, Any] | None = None  # the parent's metadata, from the same read as the rows
    other: dict[str, Any] | None = None  # how the other head was fitted and calibrated (``--other``)


def _sliced_tensors(source: OpenModelFile, plan: SlicePlan) -> dict[str, torch.Tensor]:
    """The kept rows of each tensor, read from the open file ``source`` (rows only where the
    system can name the open file by path, otherwise from its bytes)."""
    same = source.same_file_path()
    if same is None:
        return slice_state(load_tensor_bytes(source.read_all()), plan)
    try:
        return read_sliced_state(same, plan)
    except NhlError as exc:  # name the user's file, not the descriptor's path
        raise NhlError(str(exc).replace(same, str(source.path))) from exc


def cutout_file(parent: str | Path, labels: Sequence[str]) -> Cutout:
    """Cut an expert for ``labels`` from the model file ``parent``, reading only what it keeps.

    The parent is opened once: its metadata, the rows read and the digests all come from the same
    file, even if ``parent`` is replaced meanwhile. Its tensor data is checked against the digest
    recorded when it was saved, so a damaged parent never passes its damage on to an expert.
    """
    started = time.perf_counter()
    parent = Path(parent)
    with open_model_file(parent) as source:
        meta = source.meta
        _check_nhl(meta, str(parent))
        try:
            parent_tree = Tree.from_dict(meta["tree"])
        except NhlError as exc:
            raise NhlError(f"{parent}: cannot rebuild the model its metadata describes: {exc}") from exc
        selection = parent_tree.select(labels)
        expert_tree = selection.subtree(parent_tree)
        plan = model_kind(meta).cut_plan(meta, parent_tree, expert_tree)
        # hashing the parent (its identity in the lineage, and its data against the recorded
        # digest) overlaps reading and rebuilding: sha256 and file reads release the GIL
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashing = pool.submit(source.digests)
            try:
                model = _expert_model(meta, expert_tree, _sliced_tensors(source, plan))
            except RuntimeError as exc:
                first = one_line(exc, 300)
                raise NhlError(
                    f"{parent}: the weights do not fit the model its metadata describes ({first})"
                ) from exc
            digest, data_digest = hashing.result()
        check_digest(parent, source.header.tensor_digest, data_digest)
    lineage = {
        "parent_file": parent.name,
        "parent_sha256": digest,
        "parent_classes": len(parent_tree.classes),
        # the full model at the start of the chain (differs from the parent for a re-cut)
        "root_sha256": (meta.get("expert") or {}).get("root_sha256", digest),
        "selection": selection.to_dict(),  # what each name resolved to
        "classes": list(expert_tree.classes),
        "parent_cost": meta.get("cost"),
        "parent_tree": meta["tree"],  # to draw the kept paths inside it (nhl hierarchy show)
    }
    notes = tuple(selection.notes(parent_tree))
    return Cutout(model, lineage, time.perf_counter() - started, meta.get("training"), notes, meta)


def save_expert(cutout: Cutout, output: str | Path, cost: Mapping[str, Any] | None = None) -> Path:
    """Write the expert file: the model, its lineage (``expert``) and its own cost at cut time."""
    return save_model(
        cutout.model,
        output,
        cost=dict(cost) if cost else None,
        expert=cutout.lineage,
        training=cutout.training,
    )


def _fit_other(cut: Cutout, request: OtherRequest) -> dict[str, Any]:
    """Fit and calibrate the cut expert's other head, and count what it adds per image."""
    from nhlcli.experts.other import add_other_head

    model = cut.model
    model.metadata = {"training": cut.training or {}, "expert": cut.lineage}  # its hold-out, its parent
    parent = Tree.from_dict(cut.lineage["parent_tree"])
    calibration = add_other_head(model, parent, request, torch.device("cpu"))
    shape = tuple(model.input_config.size)
    plain, with_other = model.macs_per_image(shape), model.other_macs_per_image(shape)
    return {
        "calibration": calibration,
        "fit": model.other.spec.fit,
        "threshold": model.other.spec.threshold,
        "extra_macs": with_other - plain,
        "extra_macs_percent": 100 * (with_other - plain) / plain,
    }


def cutout_with_cost(
    parent: str | Path,
    labels: Sequence[str],
    batch_sizes: Sequence[int] = (1, 16),
    latency: bool = True,
    threads: int | None = None,
    other: OtherRequest | None = None,
) -> tuple[Cutout, dict[str, Any], dict[str, Any]]:
    """Cut an expert and measure parent and expert side by side (what ``nhl cutout`` reports).

    Only the expert's rows of the parent file are read; the parent is costed as a skeleton.
    ``other``: also fit the expert's "none of my classes" head (:mod:`nhlcli.experts.other`).

    The parent's report goes into the expert's lineage, so ``save_expert`` records both.
    """
    from nhlcli.profiling import cost_report

    if other is not None:
        other.check()
    cut = cutout_file(parent, labels)
    if other is not None:
        cut.other = _fit_other(cut, other)
    # the parent's cost from a skeleton of the same shape (fresh weights): params, MACs and
    # latency do not depend on the values, and the parent's weights are never read whole
    full = model_from_config(cut.parent_meta or {}, path=parent).eval()
    parent_cost = cost_report(full, batch_sizes, latency=latency, threads=threads)
    del full
    expert_cost = cost_report(cut.model, batch_sizes, latency=latency, threads=threads)
    cut.lineage["parent_cost"] = parent_cost
    return cut, parent_cost, expert_cost
