"""benchmarks/evidence.py: the intervals and verdicts docs/results.md states."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("evidence", REPO / "benchmarks" / "evidence.py")
evidence = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evidence)


def test_paired_interval_is_the_textbook_t_interval():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2 df) = 4.3027
    result = evidence.difference([0, 0, 0], [1, 2, 3], paired=True)
    low, high = result["interval"]
    assert result["diff"] == pytest.approx(2.0)
    assert low == pytest.approx(2 - 4.3027 / 3**0.5, abs=1e-3)
    assert high == pytest.approx(2 + 4.3027 / 3**0.5, abs=1e-3)


def test_welch_interval_with_equal_spreads_uses_the_pooled_degrees_of_freedom():
    # equal variances and counts: Welch's df is 2n - 2 = 4, t(0.975, 4) = 2.7764
    result = evidence.difference([1, 2, 3], [2, 3, 4])
    low, high = result["interval"]
    se = (1 / 3 + 1 / 3) ** 0.5
    assert (low, high) == pytest.approx((1 - 2.7764 * se, 1 + 2.7764 * se), abs=1e-3)


def test_verdicts_follow_the_interval():
    assert evidence.verdict((0.1, 0.9), "better") == "held"
    assert evidence.verdict((-0.9, -0.1), "better") == "did not hold"
    assert evidence.verdict((-0.2, 0.9), "better") == "no detectable difference"
    assert evidence.verdict((-0.2, 0.3), "equal", margin=0.5) == "held"
    assert evidence.verdict((-0.4, 0.8), "equal", margin=0.5) == "no detectable difference"
    assert evidence.verdict((0.6, 1.2), "equal", margin=0.5) == "did not hold"
    assert evidence.verdict((-0.2, 0.4), "not-worse", margin=0.3) == "held"
    assert evidence.verdict((-0.5, 0.4), "not-worse", margin=0.3) == "no detectable difference"
    assert evidence.verdict((-0.9, -0.4), "not-worse", margin=0.3) == "did not hold"
    assert evidence.verdict(None, "better") == "no verdict (one run)"


def test_one_run_a_side_gives_no_interval():
    result = evidence.difference([89.0], [89.5])
    assert result["interval"] is None and result["diff"] == pytest.approx(0.5)


def test_paired_runs_must_pair_up():
    with pytest.raises(ValueError, match="equal counts"):
        evidence.difference([1, 2], [1, 2, 3], paired=True)
