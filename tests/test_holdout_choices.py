"""benchmarks/holdout_choices.py: the operating point and the attention scale are read off the
hold-out's curves, and the test split only measures what was chosen there."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import holdout_choices as hc  # noqa: E402


def point(drop: float, top1: float, gmacs: float, full_top1: float = 0.9) -> dict:
    return {"max_drop": drop, "top1": top1, "full_top1": full_top1, "gmacs": gmacs, "full_gmacs": 0.03,
            "thresholds": [drop, None]}  # fmt: skip


def test_the_operating_point_is_the_cheapest_within_the_budget_on_the_curve_it_is_given():
    sweep = [point(0, 0.9, 0.03), point(0.25, 0.898, 0.02), point(0.5, 0.8955, 0.012), point(1, 0.89, 0.008)]
    assert hc.most_saved_within(sweep, 0.5)["max_drop"] == 0.5
    assert hc.most_saved_within(sweep, 0.25)["max_drop"] == 0.25
    with pytest.raises(ValueError, match="no point"):
        hc.most_saved_within([point(1, 0.85, 0.01)], 0.5)
    assert hc.thresholds_arg([0.5, None]) == "0.5,inf"


def test_attention_picks_the_scale_on_the_holdout_and_reports_the_test_top1_there():
    def curve(top1_by_scale: dict[float, float], images: int) -> dict:
        return {
            "curve": [
                {"scale": s, "top1": t, "top5": 1.0, "images": images} for s, t in top1_by_scale.items()
            ]
        }

    found = {
        "curves": {
            "last": {
                "holdout": curve({1.0: 0.90, 2.0: 0.95, 5.0: 0.94}, 6000),
                "test": curve({1.0: 0.89, 2.0: 0.93, 5.0: 0.96}, 10000),  # test's best (x5) is not chosen
            }
        }
    }
    records = hc.attention_records(found)
    choice = next(r for r in records if r["kind"] == "choice")
    assert choice["scale"] == 2.0 and choice["chosen_on"] == "holdout"
    assert choice["top1"] == 93.0 and choice["gain_points"] == 4.0 and choice["test_curve_best_scale"] == 5.0
    assert len([r for r in records if r["kind"] == "curve"]) == 6


def test_gate_records_carry_both_splits_in_percent():
    held = {"thresholds": [1.0, None], "images": 6000, "full_top1": 0.9, "top1": 0.8975, "gmacs": 0.015,
            "full_gmacs": 0.03, "exit_fractions": [0.5, 0.5]}  # fmt: skip
    test = {"images": 10000, "ungated_top1": 0.89, "top1": 0.886, "gmacs": 0.016, "full_gmacs": 0.03,
            "gmacs_reduction_percent": 46.67, "images_per_s": 3000.0, "ungated_images_per_s": 2000.0,
            "speedup": 1.5, "exits": [{"fraction": 0.48}, {"fraction": 0.52}], "threads": 2}  # fmt: skip
    found = {"tuned": held, "test_tuned": test, "chosen": held, "test_swept": test}
    records = hc.gate_records("n2hl", "hinge", found)
    assert [(r["budget_points"], r["split"]) for r in records] == [
        (0.25, "holdout"), (0.25, "test"), (0.5, "holdout"), (0.5, "test"),
    ]  # fmt: skip
    test_row = records[1]
    assert (
        test_row["top1_gated"] == 88.6
        and test_row["drop_points"] == 0.4
        and test_row["gmacs_saved_pct"] == 46.67
    )
    assert test_row["images_per_s_gated"] == 3000.0 and test_row["chosen_on"] == "holdout"
    assert records[0]["gmacs_saved_pct"] == 50.0
