"""Finite-sample risk control for the choices nhl makes on held-out images (gate thresholds,
routing widths, an expert's "other" threshold): the exact binomial tail as a p-value for a loss
that is 0 or 1 per image, and how many images a budget needs at all.

For a choice whose per-image loss is 0 or 1, "the risk on new images from the same data exceeds
``budget``" is rejected at level ``delta`` when ``P(Binomial(n, budget) <= losses) <= delta``:
exact, valid whatever the images are, as long as they are exchangeable with the new ones.
"""

from __future__ import annotations

import math

from scipy.stats import binom

from nhlcli.errors import NhlError


def check_delta(delta: float) -> None:
    """A risk level is a probability strictly between 0 and 1 (NaN refused too)."""
    if not 0 < delta < 1:
        raise NhlError(f"{delta}: give the chance of missing the budget, between 0 and 1, e.g. 0.1", "delta")


def budget_of(target_accuracy: float | None, max_drop: float | None) -> tuple[str, float]:
    """The risk and its budget (a fraction) from ``max_drop`` or ``target_accuracy`` (percent)."""
    if max_drop is not None:
        return "drop", max_drop / 100
    assert target_accuracy is not None
    return "error", 1 - target_accuracy / 100


def binomial_p_value(losses: int, images: int, budget: float) -> float:
    """P(Binomial(images, budget) <= losses): how likely so few losses are if the risk were the
    budget; small values reject "the risk exceeds the budget"."""
    return float(binom.cdf(losses, images, budget))


def images_needed(budget: float, delta: float) -> int:
    """The fewest test images on which even zero losses reject at ``delta``: below this, no saving
    can be guaranteed at this budget, whatever is chosen."""
    if budget <= 0:
        return math.inf  # type: ignore[return-value]
    if budget >= 1:
        return 1
    return math.ceil(math.log(delta) / math.log1p(-budget))


