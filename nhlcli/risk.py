"""Finite-sample risk control for the choices nhl makes on held-out images (gate thresholds,
routing widths, an expert's "other" threshold): the exact binomial tail as a p-value for a loss
that is 0 or 1 per image, and how many images a budget needs at all.

For a choice whose per-image loss is 0 or 1, "the risk on new images from the same data exceeds
``budget``" is rejected at level ``delta`` when ``P(Binomial(n, budget) <= losses) <= delta``:
exact, valid whatever the images are, as long as they are exchangeable with the new ones. A loss
that can also be negative (an image a gate harms counts 1, one it fixes -1) takes the betting test
of :func:`betting_p_value` instead.
"""

from __future__ import annotations

import math

import torch
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




def betting_p_value(
    losses: torch.Tensor, budget: float, delta: float, low: float = -1.0, high: float = 1.0, seed: int = 0
) -> float:
    """A p-value for "the mean loss on new images exceeds ``budget``", for losses bounded in
    [``low``, ``high``] that are not just 0 or 1: the betting test of Waudby-Smith and Ramdas
    ("Estimating means of bounded random variables by betting", 2020), the WSR bound Learn-then-Test
    recommends.

    A gambler starts with 1 and, image by image (in a random order), bets a predictable fraction
    ``lam`` that the loss falls below the budget: wealth ``K = prod(1 - lam (x - m))`` on the
    losses rescaled to [0, 1]. Were the mean at or above the budget, ``K`` would be a nonnegative
    supermartingale, so ``P(max K >= 1/delta) <= delta`` (Ville's inequality) and ``1 / max K`` is a
    valid p-value. The bets grow as the running variance shrinks, so a loss that is mostly 0, as a
    gate's net effect on accuracy is, needs far fewer images than Hoeffding's bound would."""
    x = (losses.double().flatten() - low) / (high - low)
    m = (budget - low) / (high - low)
    if not len(x) or m >= 1:
        return 1.0 if not len(x) else 0.0
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
    n = len(x)
    seen = torch.arange(1, n + 1, dtype=torch.float64)
    mean = (0.5 + torch.cumsum(x, 0)) / (seen + 1)
    variance = (0.25 + torch.cumsum((x - mean) ** 2, 0)) / (seen + 1)
    before = torch.cat([torch.tensor([0.25], dtype=torch.float64), variance[:-1]])  # predictable
    bets = torch.sqrt(2 * math.log(1 / delta) / (n * before)).clamp(max=0.5 / (1 - m))
    wealth = torch.cumsum(torch.log1p(-bets * (x - m)), 0)
    return float(min(1.0, math.exp(-float(wealth.max()))))
