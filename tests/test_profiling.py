"""Latency timing: what the report's numbers are over, and on how many threads."""

from __future__ import annotations

import torch

from nhlcli.profiling import latency_row, timed_runs


def test_timing_runs_on_the_threads_the_report_states_and_counts_its_calls():
    seen_threads: list[int] = []

    def run() -> None:
        seen_threads.append(torch.get_num_threads())
        torch.mm(torch.ones(64, 64), torch.ones(64, 64))

    threads = torch.get_num_threads()
    timing = timed_runs(run, repeats=3, budget_s=1.0)
    assert set(seen_threads) == {threads}  # torch's Timer alone would time on 1 thread
    assert 1 <= timing["runs"] < len(seen_threads)  # the warm-up calls are not among the timed ones
    row = latency_row(4, timing)
    assert row["median_ms"] > 0 and row["iqr_ms"] >= 0 and row["runs"] == timing["runs"]
    assert row["images_per_s"] == round(4 / timing["median_s"], 1)
