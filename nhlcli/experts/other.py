"""Give a cut expert its "none of my classes" answer: fit the other head, then set its threshold
with a guarantee (``nhl cutout --other``; the head is described in :mod:`nhlcli.model.other`).

1. Fit: on images of the data the parent was trained on (``fit_split``, at most ``max_images``
   drawn at random), a class-balanced logistic regression (scikit-learn) separates the expert's
   classes from every other class, on standardised features the expert computes anyway.
2. Threshold: on images the fit never saw (``calibration_split``), the largest threshold whose
   share of the expert's own images sent to "other" stays within ``budget`` on new images with
   probability at least ``1 - delta``. Thresholds are tested from the lowest up, an order fixed
   before any image is seen, with the exact binomial tail (:mod:`nhlcli.risk`); without
   ``delta``, the ``budget`` quantile of the own images' scores (met on those images only).
   With ``test_images``, the share is guaranteed on a test set of that many new own images, not
   only as a rate: the count there is beta-binomial, exactly, so the threshold is set lower.

The calibration images must be new to the parent as well: the parent's own hold-out when it was
trained with one (``val`` then is that hold-out), otherwise a part of the test split that the
figures are then not reported on (``part``), as for gate thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from nhlcli.data.loaders import model_holdout, model_loader
from nhlcli.errors import NhlError
from nhlcli.evaluation import collect_other, own_classes
from nhlcli.metrics import separation
from nhlcli.model.contract import NhlModel
from nhlcli.model.other import OtherHead, OtherSpec
from nhlcli.risk import (
    batch_images_needed,
    binomial_p_value,
    check_delta,
    check_test_images,
    images_needed,
    order_statistic_batch_p_value,
)
from nhlcli.taxonomy.tree import Tree


@dataclass
class OtherRequest:
    """How to fit and calibrate an other head (``nhl cutout --other`` options)."""

    data: str | Path
    budget: float = 0.05  # share of the expert's own images allowed to answer "other"
    delta: float | None = 0.1  # None: no guarantee, the budget met on the calibration images only
    test_images: int | None = None  # guarantee the share on this many new own images, not the rate
    fit_split: str = "train"
    calibration_split: str = "val"
    part: str | None = None  # of the calibration split
    holdout: float | None = None
    max_images: int = 20000
    batch_size: int = 128
    workers: int = 2
    seed: int = 0

    def check(self) -> None:
        """Refuse what makes no sense before any image is read."""
        if not 0 < self.budget < 1:
            raise NhlError(f"{self.budget:g}: give the share of own images that may answer other, "
                           "between 0 and 1, e.g. 0.05", "other_budget")  # fmt: skip
        if self.delta is not None:
            check_delta(self.delta)
        check_test_images(self.test_images, self.delta)
        if self.max_images < 2:
            raise NhlError(f"{self.max_images}: give at least 2 images to fit on", "other_images")


def _fit_loader(model: NhlModel, parent: Tree, request: OtherRequest, held: float) -> DataLoader:
    """A random ``max_images`` of the fit split, labelled by the parent's tree."""
    full = model_loader(model, request.data, request.fit_split, request.batch_size, request.workers,
                        tree=parent, subset=True, holdout=held)  # fmt: skip
    count = len(full.dataset)
    if count > request.max_images:
        generator = torch.Generator().manual_seed(request.seed)
        rows = torch.randperm(count, generator=generator)[: request.max_images].sort().values.tolist()
        return DataLoader(Subset(full.dataset, rows), batch_size=request.batch_size,
                          num_workers=request.workers, collate_fn=full.collate_fn)  # fmt: skip
    return full


def fit_head(features: torch.Tensor, mine: torch.Tensor, seed: int = 0) -> tuple[OtherHead, dict[str, Any]]:
    """A class-balanced logistic regression of "mine" on standardised ``features``, as a head."""
    from sklearn.linear_model import LogisticRegression

    if mine.all() or not mine.any():
        raise NhlError(
            "the fitting images are all of the expert's classes or none of them; give the data the parent "
            "was trained on, which holds both"
        )
    mean = features.double().mean(0)
    std = features.double().std(0).clamp_min(1e-6)
    scaled = ((features.double() - mean) / std).numpy()
    fitted = LogisticRegression(class_weight="balanced", max_iter=1000, C=1.0, random_state=seed)
    fitted.fit(scaled, mine.numpy().astype(int))
    head = OtherHead(OtherSpec(dim=features.shape[1]))
    with torch.no_grad():
        head.mean.copy_(mean.float())
        head.std.copy_(std.float())
        head.linear.weight.copy_(torch.from_numpy(fitted.coef_).float())
        head.linear.bias.copy_(torch.from_numpy(fitted.intercept_).float())
    solver = "scikit-learn LogisticRegression, class-balanced"
    return head, {"images": len(mine), "mine": int(mine.sum()), "solver": solver}


def threshold_for(
    scores: torch.Tensor, budget: float, delta: float | None, test_images: int | None = None
) -> tuple[float | None, dict[str, Any]]:
    """The threshold on the own images' ``scores`` (see the module docstring), and its record."""
    ordered = scores.double().sort().values
    n = len(ordered)
    record: dict[str, Any] = {"budget": budget, "delta": delta, "images_mine": n, "test_images": test_images}
    if delta is None:
        at = min(int(budget * n), n - 1)
        record.update({"rejected": at, "guaranteed": False})
        return float(ordered[at]), record
    if test_images is None:
        record["images_needed"] = images_needed(budget, delta)
        method = "fixed-sequence binomial tests, lowest threshold first"
    else:
        record["images_needed"] = batch_images_needed(budget, delta, test_images)
        method = f"beta-binomial tail on {test_images} new own images, lowest threshold first"
    threshold, rejected, p_chosen = None, 0, None
    for k in range(n):  # threshold at the k-th smallest score: the k below it answer "other"
        if k and ordered[k] == ordered[k - 1]:
            continue
        if test_images is None:
            p_value = binomial_p_value(k, n, budget)
        else:
            p_value = order_statistic_batch_p_value(k, n, budget, test_images)
        if p_value > delta:
            break
        threshold, rejected, p_chosen = float(ordered[k]), k, p_value
    record.update({"rejected": rejected, "p_value": p_chosen, "guaranteed": threshold is not None,
                   "method": method})  # fmt: skip
    return threshold, record


def add_other_head(
    expert: NhlModel, parent: Tree, request: OtherRequest, device: torch.device
) -> dict[str, Any]:
    """Fit the expert's other head and set its threshold; returns what was measured doing so."""
    request.check()
    mine = own_classes(expert.tree, parent)
    fit_held = model_holdout(expert, request.fit_split, request.holdout)
    with torch.random.fork_rng(devices=[]):  # data drawn on the fly (emoji) draws from torch's state
        torch.manual_seed(request.seed)
        fit = collect_other(expert, _fit_loader(expert, parent, request, fit_held), mine, device)
    head, fit_record = fit_head(fit["features"], fit["mine"], request.seed)
    expert.attach_other(head.to(device))
    held = model_holdout(expert, request.calibration_split, request.holdout)
    loader = model_loader(
        expert, request.data, request.calibration_split, request.batch_size, request.workers, tree=parent,
        subset=True, part=request.part, holdout=held,
    )  # fmt: skip
    calibration = collect_other(expert, loader, mine, device)
    scores = head(calibration["features"].to(device)).detach().cpu()
    own = calibration["mine"]
    if not own.any():
        raise NhlError(f"the {request.calibration_split} split holds no image of the expert's classes")
    threshold, record = threshold_for(scores[own], request.budget, request.delta, request.test_images)
    head.spec.threshold = threshold
    head.spec.fit = {**fit_record, "data": str(request.data), "split": request.fit_split, "holdout": fit_held}
    record.update({"data": str(request.data), "split": request.calibration_split, "part": request.part,
                   "holdout": held, "images_other": int((~own).sum())})  # fmt: skip
    if (~own).any():
        record["auroc"] = separation(own, {"other head": scores, "max softmax": calibration["msp"],
                                           "max logit": calibration["max_logit"],
                                           "energy": calibration["energy"]})  # fmt: skip
        if threshold is not None:
            record["rejected_other_share"] = float((scores[~own] < threshold).double().mean())
    head.spec.calibration = record
    return record
