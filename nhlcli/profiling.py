"""The cost report (DESIGN §5): parameters, GMACs, latency and peak memory of a model.

GMACs come from ``torch.utils.flop_counter.FlopCounterMode`` (it counts FLOPs = 2 x MACs). The
branches' inference path uses fused oneDNN kernels the counter has no formula for, so MACs are
counted on the autograd path (same arithmetic) in eval mode. Latency is the median and spread of
timed runs by ``torch.utils.benchmark.Timer`` under ``torch.inference_mode`` at batch 1 and a
larger batch, with the thread count stated. Peak memory is the most tensor memory alive at once
during one forward pass (weights plus activations), tracked op by op on CPU and by the CUDA
allocator on GPU.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from nhlcli.errors import NhlError
from nhlcli.model.contract import forward_macs, module_device


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` the model was built for (its file's input section)."""
    return tuple(int(v) for v in model.input_config.size)  # type: ignore[return-value]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters: total, trunk and branches (a flat model's classifier counts as its branches)."""
    return dict(model.parameter_groups())


def count_macs(model: nn.Module, size: Sequence[int] | None = None) -> int:
    """Multiply-accumulates of one image's forward pass."""
    x = torch.zeros(1, *(size or input_shape(model)), device=module_device(model))
    was_training = model.training
    model.eval()
    try:
        return forward_macs(model, x)[0]
    finally:
        model.train(was_training)


class _LiveTensorBytes(TorchDispatchMode):
    """The most bytes of tensor storage alive at once among the tensors ops create."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, list[int]] = {}  # storage address -> [bytes, live tensors]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            entry = self.refs.setdefault(key, [0, 0])
            if entry[1] == 0:  # a new allocation
                entry[0] = storage.nbytes()
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def peak_memory(model: nn.Module, batch: int, size: Sequence[int] | None = None) -> int:
    """Peak bytes of one inference forward at ``batch``: weights plus the activations alive at once."""
    device = module_device(model)
    x = torch.randn(batch, *(size or input_shape(model)), device=device)
    model.eval()
    with torch.inference_mode():
        model(x)  # warm caches (folded BatchNorm) first; they are weights, not activations
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            model(x)
            torch.cuda.synchronize(device)
            return weight_bytes(model) + torch.cuda.max_memory_allocated(device) - base
        tracker = _LiveTensorBytes()
        with tracker:
            out = model(x)
        del out
    return weight_bytes(model) + tracker.peak


def _torch_benchmark() -> Any:
    """``torch.utils.benchmark``, imported without the warning its C++-extension helpers log on a
    machine with a CUDA toolkit but no CUDA runtime (it would be a second line under any error)."""
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        quiet.setLevel(level)
    return benchmark


def timed_runs(run: Callable[[], object], repeats: int = 20, budget_s: float = 5.0) -> dict[str, Any]:
    """Median wall time of one ``run()`` by ``torch.utils.benchmark.Timer``, on this process's
    torch threads: after warm-up it times blocks of calls until their spread (interquartile range)
    is within 10% of the median, or until about ``repeats`` calls' worth of time, and never much
    past ``budget_s``, so profiling a large model stays bounded. The result says how many timed
    calls the median is over and their spread.
    """
    benchmark = _torch_benchmark()
    timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
    one_call = timer.timeit(number=1).median  # after two warm-up calls: allocator, oneDNN, folded BatchNorm
    measured = timer.adaptive_autorange(threshold=0.1, max_run_time=min(budget_s, repeats * one_call))
    return {
        "median_s": measured.median,
        "iqr_s": measured.iqr,
        "runs": len(measured.raw_times) * measured.number_per_run,
    }


def measure_latency(
    model: nn.Module,
    batch: int,
    size: Sequence[int] | None = None,
    repeats: int = 20,
    budget_s: float = 5.0,
) -> dict[str, Any]:
    """Median wall time of a forward pass at ``batch`` (see :func:`timed_runs`)."""
    device = module_device(model)
    x = torch.randn(batch, *(size or input_shape(model)), device=device)
    model.eval()

    def forward() -> None:
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        timing = timed_runs(forward, repeats, budget_s)
    return latency_row(batch, timing)


def latency_row(batch: int, timing: Mapping[str, Any]) -> dict[str, Any]:
    """A report row: median and spread (interquartile range) in ms, images/s and the timed calls."""
    median = timing["median_s"]
    return {
        "batch": batch,
        "median_ms": round(median * 1e3, 3),
        "iqr_ms": round(timing["iqr_s"] * 1e3, 3),
        "images_per_s": round(batch / median, 1),
        "runs": timing["runs"],
    }


def cost_report(
    model: nn.Module,
    batch_sizes: Sequence[int] = (1, 16),
    latency: bool = True,
    repeats: int = 20,
    threads: int | None = None,
) -> dict[str, Any]:
    """Params, GMACs and (optionally) latency and peak memory per batch size, as one dict."""
    if any(b < 1 for b in batch_sizes):
        raise NhlError("batch sizes must be at least 1")
    if threads is not None:
        if threads < 1:
            raise NhlError(f"must be at least 1, got {threads}", "threads")
        torch.set_num_threads(threads)
    device = module_device(model)
    report: dict[str, Any] = {
        "params": parameter_counts(model),
        "gmacs": round(count_macs(model) / 1e9, 6),
        "input_size": list(input_shape(model)),
        "classes": len(model.tree.classes),
    }
    if latency:
        report["device"] = str(device) if device.type == "cuda" else "cpu"
        report["threads"] = torch.get_num_threads()
        runs = []
        for batch in batch_sizes:
            row = measure_latency(model, batch, repeats=repeats)
            row["peak_memory_mb"] = round(peak_memory(model, batch) / 2**20, 2)
            runs.append(row)
        report["latency"] = runs
    return report


def reduction(parent: float, expert: float) -> float | None:
    """How much smaller the expert is, in percent of the parent."""
    return round(100.0 * (1.0 - expert / parent), 2) if parent else None


def compare(parent: Mapping[str, Any], expert: Mapping[str, Any]) -> dict[str, Any]:
    """Reductions in percent (params by group, GMACs, latency and peak memory per batch)."""
    out: dict[str, Any] = {
        "params": {k: reduction(parent["params"][k], expert["params"][k]) for k in expert["params"]},
        "gmacs": reduction(parent["gmacs"], expert["gmacs"]),
    }
    p_runs = {r["batch"]: r for r in parent.get("latency", [])}
    rows = []
    for run in expert.get("latency", []):
        other = p_runs.get(run["batch"])
        if other:
            rows.append(
                {
                    "batch": run["batch"],
                    "median_ms": reduction(other["median_ms"], run["median_ms"]),
                    "peak_memory_mb": reduction(other["peak_memory_mb"], run["peak_memory_mb"]),
                }
            )
    if rows:
        out["latency"] = rows
    return out
