"""Experts: cut a trained NHL model down to some classes, and measure what that saves."""

from nhlcli.experts.cutout import (
    Cutout,
    cut_model,
    cutout_file,
    cutout_with_cost,
    save_expert,
)
from nhlcli.profiling import compare, cost_report, count_macs, measure_latency, peak_memory

__all__ = [
    "Cutout",
    "compare",
    "cost_report",
    "count_macs",
    "cut_model",
    "cutout_file",
    "cutout_with_cost",
    "measure_latency",
    "peak_memory",
    "save_expert",
]
