"""Thresholds whose accuracy budget holds on new images: Learn-then-Test (Angelopoulos, Bates,
Candès, Jordan and Lei, 2021) with fixed-sequence testing.

Tuning on some images and trusting the result on others loses more than the budget: thresholds
picked where the budget is just met sit, on new images, above it about half the time. Here the
tuning images are split in two. The first part only orders candidate thresholds, from every gate
closed to the cheapest: the greedy path of :func:`nhlcli.gates.tune.threshold_path`. The second
part tests them in that order. For each candidate the null hypothesis is "on new images from the
same data its risk exceeds the budget". Testing in a fixed order and stopping at the first p-value
above ``delta`` controls the family-wise error at ``delta`` (no correction for the number of
candidates), so with probability at least ``1 - delta`` over the draw of the tuning images, the
candidate taken keeps its risk within the budget.

Two risks:
- ``drop`` (``max_drop``): the accuracy lost against the full network, per image 1 where a gate
  turns a right answer wrong, -1 where it turns a wrong one right, 0 elsewhere. Gates do both
  (on Fashion-MNIST about 2% each way at half the MACs), so testing the harm alone would promise
  little; the net loss is tested with the betting p-value of :func:`nhlcli.risk.betting_p_value`.
- ``error`` (``target_accuracy``): the gated network is wrong (0 or 1), tested with the exact
  binomial tail; its accuracy is then at least ``1 - budget``.

With ``test_images``, the promise is for the loss a user measures on a test set of that many new
images, which strays from the rate by its own sampling error (:mod:`nhlcli.risk`). Half of
``delta`` covers that straying, the other half tests the rate against the budget tightened by it.
For ``error`` the tightened budget is exact (binomial). For ``drop`` it is exact too, at the worst
share of changed answers up to a bound taken from the ordering images; that bound is itself
tested, and the p-value is the larger of the two tests', valid whichever of "the rate is too high"
and "more answers change than bounded" is the case.
"""

from __future__ import annotations

from typing import Any

import torch
from scipy.stats import beta

from nhlcli.errors import NhlError
from nhlcli.gates.tune import ExitRecord, joint_path, simulate_answers
from nhlcli.risk import (
    batch_budget,
    betting_p_value,
    binomial_p_value,
    check_delta,
    check_test_images,
    images_needed,
    net_batch_budget,
)

PATH_SHARE = 0.5  # of the tuning images, the share that orders the candidates; the rest test them


def split_record(record: ExitRecord, share: float, seed: int) -> tuple[ExitRecord, ExitRecord]:
    """The record's images in two random parts, ``share`` of them in the first."""
    n = len(record.labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = round(n * share)
    return record.subset(order[:cut]), record.subset(order[cut:])


def answer_losses(answers: torch.Tensor, full: torch.Tensor, labels: torch.Tensor, risk: str) -> torch.Tensor:
    """Per image, what an answer costs against the full network's (see the module docstring): for
    ``error`` 1 where it is wrong; for ``drop`` 1 where it turns the full network's right answer
    wrong, -1 where it turns a wrong one right."""
    right = answers == labels
    if risk == "error":
        return (~right).double()
    full_right = full == labels
    return (full_right & ~right).double() - (~full_right & right).double()


def p_value(losses: torch.Tensor, budget: float, delta: float, risk: str, seed: int = 0) -> float:
    """The p-value of "the risk on new images exceeds ``budget``": exact binomial for 0/1 losses
    (``error``), the betting test for the net change in accuracy (``drop``)."""
    if risk == "error":
        return binomial_p_value(int(losses.sum()), len(losses), budget)
    return betting_p_value(losses, budget, delta, seed=seed)


def needed_for(budget: float, delta: float, risk: str, test_images: int | None) -> int | None:
    """The fewest testing images on which a choice with no loss at all is accepted: for a test set
    of ``test_images``, at half of ``delta`` and (``error``) against the budget tightened for that
    test set's sampling error; None when that error alone exceeds the budget."""
    if test_images is None:
        return images_needed(budget, delta)
    tightened = batch_budget(budget, test_images, delta / 2) if risk == "error" else budget
    return images_needed(tightened, delta / 2) if tightened > 0 else None


def changed_bound(changed: int, images: int) -> float:
    """An upper bound on the share of answers a choice changes, fixed before the testing images
    are seen: the one-sided 99.9% Clopper-Pearson bound from ``changed`` of ``images`` ordering
    images. Generous, so that the testing images rarely contradict it."""
    return 1.0 if changed >= images else float(beta.ppf(0.999, changed + 1, images - changed))


def batch_p_value(
    losses: torch.Tensor, budget: float, delta: float, risk: str, test_images: int, changed: float = 1.0,
    seed: int = 0,
) -> float:  # fmt: skip
    """The p-value, to compare with ``delta / 2``, of "the loss on ``test_images`` new images
    exceeds ``budget`` with chance above ``delta``" (see the module docstring); ``changed`` bounds
    the share of answers changed (``drop`` only)."""
    if risk == "error":
        return p_value(losses, batch_budget(budget, test_images, delta / 2), delta / 2, risk, seed)
    tightened = net_batch_budget(budget, test_images, changed, delta / 2)
    if tightened is None:
        rate = 1.0
    elif tightened >= changed:  # the net rate is at most the share changed: no rate needs testing
        rate = 0.0
    else:
        rate = p_value(losses, tightened, delta / 2, risk, seed)
    more_changed = binomial_p_value(int(losses.abs().sum()), len(losses), changed) if changed < 1 else 0.0
    return max(rate, more_changed)


def guaranteed_thresholds(
    gated: Any,
    record: ExitRecord,
    budget: float,
    delta: float,
    risk: str = "drop",
    seed: int = 0,
    path_share: float = PATH_SHARE,
    test_images: int | None = None,
) -> dict[str, Any]:
    """The cheapest thresholds on the greedy path whose risk stays within ``budget`` (a fraction)
    with probability at least ``1 - delta`` (on a test set of ``test_images`` new images, when
    given); every gate closed when none can be guaranteed."""
    chosen = guaranteed_route_and_thresholds(gated, {0: record}, budget, delta, risk, seed, path_share,
                                             test_images)  # fmt: skip
    del chosen["route_top_k"], chosen["guarantee"]["route_top_k"]
    chosen["guarantee"]["choice"] = "thresholds"
    return chosen


def guaranteed_route_and_thresholds(
    gated: Any,
    records: dict[int, ExitRecord],
    budget: float,
    delta: float,
    risk: str = "drop",
    seed: int = 0,
    path_share: float = PATH_SHARE,
    test_images: int | None = None,
) -> dict[str, Any]:
    """The routing width and thresholds, chosen together under one budget: the cheapest step of
    the joint greedy path (:func:`nhlcli.gates.tune.joint_path`, ordered on ``path_share`` of the
    images) that the fixed-sequence tests accept on the rest. ``records`` holds one record per
    width, the same images in the same order; the loss is counted against the widest with every
    gate closed, the whole network. Guaranteed as :func:`guaranteed_thresholds` is."""
    check_delta(delta)
    check_test_images(test_images, delta)
    halves = {width: split_record(record, path_share, seed) for width, record in records.items()}
    ordering = {width: parts[0] for width, parts in halves.items()}
    testing = {width: parts[1] for width, parts in halves.items()}
    widest = max(records)
    if not len(ordering[widest].labels) or not len(testing[widest].labels):
        raise NhlError("too few images to tune with a guarantee: give at least 2")

    def losses_of(part: dict[int, ExitRecord], width: int, thresholds: list[float | None]) -> torch.Tensor:
        answers = simulate_answers(part[width], thresholds)
        return answer_losses(answers, part[widest].final, part[widest].labels, risk)

    path = joint_path(gated, ordering)
    chosen_width, chosen = path[0]
    chosen_p, losses_at = None, 0
    level = delta if test_images is None else delta / 2
    for width, thresholds in path[1:]:  # path[0]: the whole network, nothing to test
        losses = losses_of(testing, width, thresholds)
        if test_images is None:
            p = p_value(losses, budget, delta, risk, seed)
        else:
            changes = int(losses_of(ordering, width, thresholds).abs().sum())
            changed = changed_bound(changes, len(ordering[widest].labels))
            p = batch_p_value(losses, budget, delta, risk, test_images, changed, seed)
        if p > level:
            break
        chosen_width, chosen, chosen_p, losses_at = width, list(thresholds), p, float(losses.sum())
    return {
        "route_top_k": chosen_width,
        "thresholds": chosen,
        "guarantee": {
            "risk": risk,
            "budget": budget,
            "delta": delta,
            "test_images": test_images,
            "method": "learn-then-test, fixed-sequence tests",
            "choice": "route_top_k and thresholds",
            "route_top_k": chosen_width,
            "ordering_images": len(ordering[widest].labels),
            "testing_images": len(testing[widest].labels),
            "testing_losses": losses_at,
            "p_value": chosen_p,
            "candidates": len(path) - 1,
            "guaranteed_saving": chosen_width != widest or any(t is not None for t in chosen),
            "images_needed": needed_for(budget, delta, risk, test_images),
            "seed": seed,
        },
    }


def guarantee_sentence(guarantee: dict[str, Any]) -> str:
    """What was promised, in one sentence for people."""
    what = "accuracy lost" if guarantee["risk"] == "drop" else "error"
    bound = f"{what} at most {guarantee['budget']:.2%} with probability at least {1 - guarantee['delta']:.0%}"
    tested = guarantee["testing_images"]
    if not guarantee["guaranteed_saving"]:
        kept = {
            "thresholds": "every gate stays closed",
            "route_top_k": "every image keeps every branch",
            "route_top_k and thresholds": "every image keeps every branch and every gate stays closed",
        }[guarantee["choice"]]
        needed, test_images = guarantee["images_needed"], guarantee.get("test_images")
        if needed is None:
            reason = f"on a test set of {test_images} images, sampling alone can exceed the budget"
        elif tested < needed:
            reason = f"{tested} test images are too few: even with no loss on them, {needed} are needed"
        else:
            reason = "every cheaper candidate lost too much on the test images"
        return f"no saving can be guaranteed with {bound} ({reason}); {kept}"
    unseen = " the ordering never saw" if guarantee["ordering_images"] else ""
    losses = round(guarantee["testing_losses"])
    counted = f"net {losses:+d} right answers lost" if guarantee["risk"] == "drop" else f"{losses} wrong"
    where = "new images from the same data"
    if guarantee.get("test_images") is not None:
        where = f"a test set of {guarantee['test_images']} new images from the same data"
    return (
        f"guaranteed on {where}: {bound} (tested on {tested} images{unseen}, "
        f"{counted}, p = {guarantee['p_value']:.3g})"
    )


def route_width(
    records: dict[int, ExitRecord], risk: str, budget: float, delta: float | None,
    test_images: int | None = None,
) -> tuple[int, dict[str, Any] | None]:  # fmt: skip
    """The fewest super-categories (``route_top_k``) within ``budget``, from one record per width
    (gates closed). Widths are tested from the widest down, an order fixed before any image is
    seen, so every image tests (no ordering half). With ``delta``: the tests of :func:`p_value`,
    stopping at the first width not accepted; without: the budget met on these images only.
    With ``test_images`` (and ``delta``), the loss on a test set of that many new images is
    guaranteed (:func:`batch_p_value`); for ``drop``, half the images then bound the share of
    answers each width changes and the other half test.

    The widest width is the whole network, the reference the loss is counted against."""
    check_test_images(test_images, delta)
    widths = sorted(records, reverse=True)
    full = records[widths[0]]
    n = len(full.labels)
    testing = ordering = torch.arange(n)
    if test_images is not None and risk == "drop":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        ordering, testing = order[: round(n * PATH_SHARE)], order[round(n * PATH_SHARE) :]
        if not len(ordering) or not len(testing):
            raise NhlError("too few images to tune with a guarantee: give at least 2")
    level = delta if test_images is None or delta is None else delta / 2
    chosen, p_chosen, losses_chosen = widths[0], None, 0.0
    for width in widths[1:]:
        every = answer_losses(records[width].final, full.final, full.labels, risk)
        losses = every[testing]
        if delta is None:
            p = None
            within = float(losses.mean()) <= budget + 1e-12
        elif test_images is None:
            p = p_value(losses, budget, delta, risk)
            within = p <= delta
        else:
            changed = changed_bound(int(every[ordering].abs().sum()), len(ordering))
            p = batch_p_value(losses, budget, delta, risk, test_images, changed)
            within = p <= level
        if not within:
            break
        chosen, p_chosen, losses_chosen = width, p, float(losses.sum())
    if delta is None:
        return chosen, None
    return chosen, {
        "risk": risk,
        "budget": budget,
        "delta": delta,
        "test_images": test_images,
        "method": "fixed-sequence tests over routing widths, widest first",
        "choice": "route_top_k",
        "ordering_images": 0 if testing is ordering else len(ordering),
        "testing_images": len(testing),
        "testing_losses": losses_chosen,
        "p_value": p_chosen,
        "candidates": len(widths) - 1,
        "guaranteed_saving": chosen != widths[0],
        "images_needed": needed_for(budget, delta, risk, test_images),
        "seed": None,
    }
