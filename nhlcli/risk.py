"""Finite-sample risk control for the choices nhl makes on held-out images (gate thresholds,
routing widths, an expert's "other" threshold): the exact binomial tail as a p-value for a loss
that is 0 or 1 per image, and how many images a budget needs at all.

For a choice whose per-image loss is 0 or 1, "the risk on new images from the same data exceeds
``budget``" is rejected at level ``delta`` when ``P(Binomial(n, budget) <= losses) <= delta``:
exact, valid whatever the images are, as long as they are exchangeable with the new ones. A loss
that can also be negative (an image a gate harms counts 1, one it fixes -1) takes the betting test
of :func:`betting_p_value` instead.

Those guarantee the rate over all new images. A user who measures on one test set of ``m`` images
sees that rate plus the test set's own sampling error, so a choice just inside the budget reads
above it there about half the time. A guarantee "on a test set of ``m`` new images" splits
``delta`` in two: half bounds how far ``m`` images can stray from the rate, exactly (binomial for
0/1 losses, :func:`batch_budget`; a binomial mixture for net losses, :func:`net_batch_budget`),
half tests the rate against the budget tightened by that much.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import betabinom, binom

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


def check_test_images(test_images: int | None, delta: float | None) -> None:
    """A guarantee on a test set needs a risk level, and a test set at least one image."""
    if test_images is None:
        return
    if delta is None:
        raise NhlError("a guarantee on a test set needs a risk level; give --delta too", "test_images")
    if test_images < 1:
        raise NhlError(f"{test_images}: give the number of new images the guarantee is measured on, "
                       "at least 1", "test_images")  # fmt: skip


def batch_budget(budget: float, images: int, delta: float) -> float:
    """The highest rate of a 0/1 loss at which ``images`` new images still show at most ``budget``
    of losses with probability at least ``1 - delta``: the largest ``p`` with
    ``P(Binomial(images, p) > budget * images) <= delta`` (bisection; 0 when none)."""
    allowed = math.floor(budget * images + 1e-9)
    low, high = 0.0, budget
    if binom.sf(allowed, images, high) <= delta:
        return high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if binom.sf(allowed, images, middle) <= delta else (low, middle)
    return low


def net_tail(mean: float, changed: float, images: int, allowed: int) -> float:
    """P(harmed - fixed > ``allowed``) on ``images`` new images when a share ``changed`` of answers
    change, ``(changed + mean) / 2`` for the worse and the rest for the better: exact, as a mixture
    over how many change (binomial) of how many of those are harmed (binomial)."""
    if changed <= 0:
        return 0.0 if allowed >= 0 else 1.0
    spread = 12 * math.sqrt(images * changed * (1 - changed)) + 12
    low = max(0, math.floor(images * changed - spread))
    high = min(images, math.ceil(images * changed + spread))
    count = np.arange(low, high + 1)
    harmed_share = min(max((changed + mean) / (2 * changed), 0.0), 1.0)
    tail = binom.sf(np.floor((allowed + count) / 2), count, harmed_share)
    return float(np.sum(binom.pmf(count, images, changed) * tail))


def net_batch_budget(budget: float, images: int, changed: float, delta: float) -> float | None:
    """The highest net loss rate (harmed minus fixed, per image) at which ``images`` new images
    still show a net loss of at most ``budget`` with probability at least ``1 - delta``, whatever
    share up to ``changed`` of answers change (the tail is taken at its worst over that share);
    None when even a rate of ``-changed`` (every change a fix) cannot."""
    allowed = math.floor(budget * images + 1e-9)
    shares = np.linspace(0, 1, 6)

    def within(mean: float) -> bool:
        lowest = abs(mean)
        return all(
            net_tail(mean, lowest + (changed - lowest) * share, images, allowed) <= delta for share in shares
        )

    low, high = -changed, min(changed, budget)
    if not within(low):
        return None
    if within(high):
        return high
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if within(middle) else (low, middle)
    return low


def order_statistic_batch_p_value(below: int, images: int, budget: float, test_images: int) -> float:
    """For a threshold at the ``below + 1``-th smallest of ``images`` calibration scores: the chance
    that more than ``budget`` of ``test_images`` new scores fall below it. The share of new scores
    below that order statistic is Beta(below + 1, images - below) whatever the scores' law, so the
    count among ``test_images`` is beta-binomial (Angelopoulos and Bates 2021, section 3.2); exact
    for exchangeable scores without ties."""
    allowed = math.floor(budget * test_images + 1e-9)
    return float(betabinom.sf(allowed, test_images, below + 1, images - below))


def batch_images_needed(budget: float, delta: float, test_images: int) -> int | None:
    """The fewest calibration images with which even the lowest threshold (nothing below it) keeps
    more than ``budget`` of ``test_images`` new scores below it with chance at most ``delta``
    (doubling, then bisection; None beyond ten million)."""

    def passes(images: int) -> bool:
        return order_statistic_batch_p_value(0, images, budget, test_images) <= delta

    high = 1
    while not passes(high):
        if high > 10_000_000:
            return None
        high *= 2
    low = high // 2  # fails (or is 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if passes(middle) else (middle, high)
    return high


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
