"""benchmarks/tune_recipe.py: a candidate replaces the shipped recipe only when it beats it seed by
seed beyond the seeds' noise, and each candidate is the recipe with only its swept knobs changed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import tune_recipe  # noqa: E402

from nhlcli.demo import RECIPE  # noqa: E402

SHIPPED = (RECIPE["lr"], RECIPE["label_smoothing"])


def runs(*top1: float) -> list[dict[str, float]]:
    return [{"holdout_top1": t, "wall_s": 1.0, "seed": seed} for seed, t in enumerate(top1)]


def test_a_candidate_ahead_on_every_seed_by_a_steady_margin_beats_the_recipe() -> None:
    found = {SHIPPED: runs(0.890, 0.895, 0.900), (0.001, 0.1): runs(0.900, 0.906, 0.909)}
    shipped, candidate = tune_recipe.candidate_rows(found)
    assert "against_recipe" not in shipped  # the recipe is not compared with itself
    assert candidate["against_recipe"]["verdict"] == "held"
    assert candidate["mean"] > shipped["mean"]


def test_a_lead_the_seeds_do_not_agree_on_leaves_the_recipe() -> None:
    found = {SHIPPED: runs(0.890, 0.900, 0.895), (0.001, 0.1): runs(0.905, 0.891, 0.898)}
    _, candidate = tune_recipe.candidate_rows(found)
    assert candidate["mean"] > 89.5  # ahead on average ...
    assert candidate["against_recipe"]["verdict"] == "no detectable difference"  # ... but not beyond noise


def test_a_candidate_stopped_early_is_paired_on_the_seeds_it_ran() -> None:
    found = {SHIPPED: runs(0.890, 0.895, 0.900), (0.01, 0.1): runs(0.900, 0.906)}
    _, candidate = tune_recipe.candidate_rows(found)
    assert candidate["against_recipe"]["n"] == (2, 2)
    assert candidate["against_recipe"]["diff"] == pytest.approx(1.05)


def test_a_candidate_changes_only_the_swept_knobs() -> None:
    args = tune_recipe.candidate_args(10, 0.001, 0.0, "flat", 2)

    def value(flag: str) -> str:
        assert args.count(flag) == 1, f"{flag} given {args.count(flag)} times"
        return args[args.index(flag) + 1]

    assert value("--lr") == "0.001" and value("--label-smoothing") == "0"
    assert value("--epochs") == "10" and value("--seed") == "2" and "--flat" in args
    assert value("--batch-size") == str(RECIPE["batch_size"])
    assert value("--crop-scale") == RECIPE["crop_scale"]
