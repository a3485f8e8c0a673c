"""The evidence behind a verdict: mean and spread over seeds, a 95% t interval for a difference,
and the verdict that interval supports, in the words docs/results.md uses.

A claim of improvement ("A beats B") holds when the whole interval lies above zero and fails
when it lies below; a claim of equality ("A matches B") holds when the interval lies inside
the stated margin, and one of non-inferiority ("A is not worse than B by more than the margin")
when it lies above minus the margin. Anything else is "no detectable difference": the runs
cannot tell. One run a side gives no interval and no verdict.

    python benchmarks/evidence.py --a 88.89,88.94,88.69 --b 89.19,89.13,89.14 --claim better
    python benchmarks/evidence.py --a 61.35,60.53,62.17 --b 62.99,62.50,64.31 --paired --claim better
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from typing import Any

from scipy import stats

CLAIMS = ("better", "equal", "not-worse")


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single run)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def difference(
    a: Sequence[float], b: Sequence[float], paired: bool = False, level: float = 0.95
) -> dict[str, Any]:
    """``b - a``: its mean and a two-sided t interval. Paired (same seeds, so each seed's shared
    noise cancels) or Welch's (unequal variances) when the runs are independent."""
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired runs need equal counts, got {len(a)} and {len(b)}")
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        mean, sd = mean_sd(diffs)
        if sd is None:
            return {"diff": mean, "sd": None, "interval": None, "test": "paired t", "n": (1, 1)}
        half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * sd / len(diffs) ** 0.5
        return {"diff": mean, "sd": sd, "interval": (mean - half, mean + half), "test": "paired t",
                "n": (len(a), len(b))}  # fmt: skip
    mean = statistics.mean(b) - statistics.mean(a)
    if len(a) < 2 or len(b) < 2:
        return {"diff": mean, "sd": None, "interval": None, "test": "Welch t", "n": (len(a), len(b))}
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = (var_a + var_b) ** 0.5
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return {"diff": mean, "sd": se, "interval": (mean - half, mean + half), "test": "Welch t",
            "n": (len(a), len(b))}  # fmt: skip


def welch_from_summaries(
    a: tuple[float, float, int], b: tuple[float, float, int], level: float = 0.95
) -> dict[str, Any]:
    """``b - a`` from (mean, sd, runs) summaries, where only those were kept: Welch's interval."""
    (mean_a, sd_a, n_a), (mean_b, sd_b, n_b) = a, b
    var_a, var_b = sd_a**2 / n_a, sd_b**2 / n_b
    se = (var_a + var_b) ** 0.5
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    diff = mean_b - mean_a
    return {"diff": diff, "sd": se, "interval": (diff - half, diff + half), "test": "Welch t",
            "n": (n_a, n_b)}  # fmt: skip


def test_set_error(top1_a: float, top1_b: float, images: int) -> float:
    """Standard error, in points, of the difference of two top-1 figures (in %) measured on the
    same ``images`` test images, treating their errors as independent: an upper bound (models
    evaluated on the same images err on many of the same ones), so intervals built from it are
    conservative. It is the sampling error of the test set, which the seed spread does not see
    because every seed is scored on the same images."""
    p_a, p_b = top1_a / 100, top1_b / 100
    return 100 * ((p_a * (1 - p_a) + p_b * (1 - p_b)) / images) ** 0.5


def widen(result: dict[str, Any], error: float, level: float = 0.95) -> dict[str, Any]:
    """``result`` with the test set's sampling error (``error``, points) added to its seed
    interval: the two half-widths combine in quadrature."""
    z = stats.norm.ppf(0.5 + level / 2)
    if result["interval"] is None:
        half = z * error
    else:
        low, high = result["interval"]
        half = (((high - low) / 2) ** 2 + (z * error) ** 2) ** 0.5
    return {**result, "interval": (result["diff"] - half, result["diff"] + half), "test_error": error}


def verdict(interval: tuple[float, float] | None, claim: str, margin: float = 0.0) -> str:
    """What an interval for ``b - a`` says about a claim: "better" (b beats a), "equal" (b
    matches a within ``margin``) or "not-worse" (b trails a by less than ``margin``)."""
    if claim not in CLAIMS:
        raise ValueError(f"claim must be one of {CLAIMS}, got {claim!r}")
    if interval is None:
        return "no verdict (one run)"
    low, high = interval
    if claim == "better":
        if low > 0:
            return "held"
        return "did not hold" if high < 0 else "no detectable difference"
    if claim == "not-worse":
        if low > -margin:
            return "held"
        return "did not hold" if high < -margin else "no detectable difference"
    if -margin <= low and high <= margin:
        return "held"
    if high < -margin or low > margin:
        return "did not hold"
    return "no detectable difference"


def describe(result: dict[str, Any]) -> str:
    """One line: the difference, its interval and the test."""
    if result["interval"] is None:
        return f"{result['diff']:+.2f} points (one run a side, no interval)"
    low, high = result["interval"]
    n_a, n_b = result["n"]
    where = f"({result['test']}, n={n_a}/{n_b})"
    return f"{result['diff']:+.2f} points, 95% interval {low:+.2f} to {high:+.2f} {where}"


def judge(
    a: Sequence[float], b: Sequence[float], claim: str, margin: float = 0.0, paired: bool = False
) -> dict[str, Any]:
    """``difference(a, b)`` with the verdict on ``claim`` and its one-line description: what a
    results table shows for a comparison."""
    result = difference(a, b, paired)
    return {**result, "verdict": verdict(result["interval"], claim, margin), "line": describe(result)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", required=True, help="the baseline's runs, comma-separated (top-1 in %%)")
    parser.add_argument("--b", required=True, help="the claimant's runs, comma-separated")
    parser.add_argument("--paired", action="store_true", help="run i of a and b share seed i")
    parser.add_argument("--claim", choices=CLAIMS, default="better")
    parser.add_argument("--margin", type=float, default=0.0, help="points, for --claim equal and not-worse")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    a = [float(v) for v in args.a.split(",")]
    b = [float(v) for v in args.b.split(",")]
    result = difference(a, b, args.paired)
    result["verdict"] = verdict(result["interval"], args.claim, args.margin)
    print(json.dumps(result) if args.json else f"{describe(result)}: {result['verdict']}")


if __name__ == "__main__":
    main()
