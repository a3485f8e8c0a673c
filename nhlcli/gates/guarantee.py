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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nhlcli.errors import NhlError
from nhlcli.gates.tune import ExitRecord, simulate_answers, threshold_path
from nhlcli.risk import betting_p_value, binomial_p_value, check_delta, images_needed

PATH_SHARE = 0.5  # of the tuning images, the share that orders the candidates; the rest test them


def split_record(record: ExitRecord, share: float, seed: int) -> tuple[ExitRecord, ExitRecord]:
    """The record's images in two random parts, ``share`` of them in the first."""
    n = len(record.labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = round(n * share)
    return record.subset(order[:cut]), record.subset(order[cut:])


def image_losses(record: ExitRecord, thresholds: Sequence[float | None], risk: str) -> torch.Tensor:
    """Per image, what the gated answers with ``thresholds`` cost (:func:`answer_losses`)."""
    return answer_losses(simulate_answers(record, thresholds), record.final, record.labels, risk)


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


def guaranteed_thresholds(
    gated: Any,
    record: ExitRecord,
    budget: float,
    delta: float,
    risk: str = "drop",
    seed: int = 0,
    path_share: float = PATH_SHARE,
) -> dict[str, Any]:
    """The cheapest thresholds on the greedy path whose risk stays within ``budget`` (a fraction)
    with probability at least ``1 - delta``; every gate closed when none can be guaranteed."""
    check_delta(delta)
    ordering, testing = split_record(record, path_share, seed)
    if not len(ordering.labels) or not len(testing.labels):
        raise NhlError("too few images to tune with a guarantee: give at least 2")
    path = threshold_path(gated, ordering)
    chosen: list[float | None] = [None] * record.scores.shape[1]
    chosen_p, losses_at = None, 0
    for thresholds in path[1:]:  # path[0]: every gate closed, nothing to test
        losses = image_losses(testing, thresholds, risk)
        p = p_value(losses, budget, delta, risk, seed)
        if p > delta:
            break
        chosen, chosen_p, losses_at = list(thresholds), p, float(losses.sum())
    needed = images_needed(budget, delta)
    return {
        "thresholds": chosen,
        "guarantee": {
            "risk": risk,
            "budget": budget,
            "delta": delta,
            "method": "learn-then-test, fixed-sequence tests",
            "choice": "thresholds",
            "ordering_images": len(ordering.labels),
            "testing_images": len(testing.labels),
            "testing_losses": losses_at,
            "p_value": chosen_p,
            "candidates": len(path) - 1,
            "guaranteed_saving": any(t is not None for t in chosen),
            "images_needed": needed,
            "seed": seed,
        },
    }


def guarantee_sentence(guarantee: dict[str, Any]) -> str:
    """What was promised, in one sentence for people."""
    what = "accuracy lost" if guarantee["risk"] == "drop" else "error"
    bound = f"{what} at most {guarantee['budget']:.2%} with probability at least {1 - guarantee['delta']:.0%}"
    tested = guarantee["testing_images"]
    if not guarantee["guaranteed_saving"]:
        kept = "every gate stays closed"
        if guarantee["choice"] == "route_top_k":
            kept = "every image keeps every branch"
        reason = (
            f"{tested} test images are too few: even with no loss on them, "
            f"{guarantee['images_needed']} are needed"
            if tested < guarantee["images_needed"]
            else "every cheaper candidate lost too much on the test images"
        )
        return f"no saving can be guaranteed with {bound} ({reason}); {kept}"
    unseen = " the ordering never saw" if guarantee["ordering_images"] else ""
    losses = round(guarantee["testing_losses"])
    counted = f"net {losses:+d} right answers lost" if guarantee["risk"] == "drop" else f"{losses} wrong"
    return (
        f"guaranteed on new images from the same data: {bound} (tested on {tested} images{unseen}, "
        f"{counted}, p = {guarantee['p_value']:.3g})"
    )


def route_width(
    records: dict[int, ExitRecord], risk: str, budget: float, delta: float | None
) -> tuple[int, dict[str, Any] | None]:
    """The fewest super-categories (``route_top_k``) within ``budget``, from one record per width
    (gates closed). Widths are tested from the widest down, an order fixed before any image is
    seen, so every image tests (no ordering half). With ``delta``: the tests of :func:`p_value`,
    stopping at the first width not accepted; without: the budget met on these images only.

    The widest width is the whole network, the reference the loss is counted against."""
    widths = sorted(records, reverse=True)
    full = records[widths[0]]
    chosen, p_chosen, losses_chosen = widths[0], None, 0.0
    for width in widths[1:]:
        losses = answer_losses(records[width].final, full.final, full.labels, risk)
        if delta is None:
            p = None
            within = float(losses.mean()) <= budget + 1e-12
        else:
            p = p_value(losses, budget, delta, risk)
            within = p <= delta
        if not within:
            break
        chosen, p_chosen, losses_chosen = width, p, float(losses.sum())
    if delta is None:
        return chosen, None
    n = len(full.labels)
    return chosen, {
        "risk": risk,
        "budget": budget,
        "delta": delta,
        "method": "fixed-sequence tests over routing widths, widest first",
        "choice": "route_top_k",
        "ordering_images": 0,
        "testing_images": n,
        "testing_losses": losses_chosen,
        "p_value": p_chosen,
        "candidates": len(widths) - 1,
        "guaranteed_saving": chosen != widths[0],
        "images_needed": images_needed(budget, delta),
        "seed": None,
    }
