"""Hierarchical metrics and calibration: how bad a model's mistakes are, not only how many.

Every classifier here has a tree (a flat model keeps the tree it was trained with), and every
class sits at the same depth ``L``. For a prediction ``p`` and a truth ``t`` let ``d`` be the depth
of their lowest common ancestor (0: only the root; ``L``: ``p == t``). The metrics, defined in
docs/metrics.md with their sources, all follow from ``d``:

- per-level top-1 at level ``l`` (the predicted leaf's ancestor at depth ``l`` is the truth's):
  the share of images with ``d >= l``; level ``L`` is top-1;
- LCA height ``L - d`` (Bertinetto et al., "Making Better Mistakes", CVPR 2020): 0 for a correct
  answer, ``L`` for two classes that share only the root;
- mistake severity: the mean LCA height over the images whose top-1 is wrong;
- average hierarchical distance @k: the mean LCA height of the top ``k`` answers, over images;
- hierarchical precision, recall and F1 (Kiritchenko et al. 2005): each label extended with its
  ancestors, the root left out, counts summed over images. With one predicted leaf and every leaf
  at depth ``L`` both sets hold ``L`` nodes, so the three are equal: the mean of ``d / L``;
- expected calibration error (Guo et al. 2017): over 15 equal-width bins of top-1 confidence, the
  image-weighted mean gap between accuracy and mean confidence.

Depths are counted without any ``L x L`` table: a class's ancestors form one row of ``L`` node
indices, and ``d`` is the number of positions where two rows agree (paths share a prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nhlcli.errors import NhlError
from nhlcli.taxonomy.tree import Tree

ECE_BINS = 15


def ancestor_rows(tree: Tree, classes: Sequence[str]) -> torch.Tensor:
    """``[len(classes), L]``: row ``i`` holds the ids of ``classes[i]``'s ancestors at depths
    1..L in ``tree`` (the class itself last), so two rows agree exactly on their common path."""
    known = set(tree.classes)
    missing = [c for c in classes if c not in known]
    if missing:
        raise NhlError(
            f"the tree {tree.name or ''} lacks {len(missing)} of the model's classes "
            f"(first: {missing[0]!r}); measure with the tree the model was trained with, or one over "
            "the same classes"
        )
    numbering: dict[str, int] = {}
    rows = []
    for c in classes:
        path = tree.path(c)[1:]  # the root is every class's ancestor: it tells nothing
        rows.append([numbering.setdefault(node, len(numbering)) for node in path])
    return torch.tensor(rows, dtype=torch.long)


def lca_depths(rows: torch.Tensor, predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Depth of the lowest common ancestor of each predicted class and its truth.

    ``predicted`` is ``[N]`` or ``[N, k]`` class indices, ``truth`` ``[N]``; the result has
    ``predicted``'s shape."""
    truth_rows = rows[truth]
    if predicted.dim() == 2:
        truth_rows = truth_rows[:, None, :]
    return (rows[predicted] == truth_rows).sum(-1)


class HierarchyTally:
    """Running sums for the hierarchical metrics and the calibration error of one evaluation.

    Everything kept is a count or a sum, so batches (and DDP ranks) add up: a histogram of the
    top-1 LCA depth, the summed LCA height of the top ``k``, and 15 calibration bins.
    ``per_image`` also keeps each image's top-1 LCA depth, for paired comparisons."""

    def __init__(self, tree: Tree, classes: Sequence[str], k: int = 5, per_image: bool = False) -> None:
        self.rows = ancestor_rows(tree, classes)
        self.per_image: list[torch.Tensor] | None = [] if per_image else None
        self.levels = self.rows.shape[1]
        self.k = min(k, len(classes))
        self.depth_counts = torch.zeros(self.levels + 1, dtype=torch.float64)
        self.topk_height_sum = 0.0
        self.bin_count = torch.zeros(ECE_BINS, dtype=torch.float64)
        self.bin_confidence = torch.zeros(ECE_BINS, dtype=torch.float64)
        self.bin_correct = torch.zeros(ECE_BINS, dtype=torch.float64)

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits, targets = logits.float().cpu(), targets.cpu()
        top = logits.topk(self.k, dim=1).indices
        depths = lca_depths(self.rows, top, targets)  # [N, k]
        self.depth_counts += torch.bincount(depths[:, 0], minlength=self.levels + 1).double()
        if self.per_image is not None:
            self.per_image.append(depths[:, 0])
        self.topk_height_sum += float((self.levels - depths).double().mean(dim=1).sum())
        confidence = logits.softmax(dim=1).amax(dim=1).double()
        correct = (top[:, 0] == targets).double()
        bins = (confidence * ECE_BINS).long().clamp(max=ECE_BINS - 1)  # confidence 1.0: the last bin
        self.bin_count.index_add_(0, bins, torch.ones_like(confidence))
        self.bin_confidence.index_add_(0, bins, confidence)
        self.bin_correct.index_add_(0, bins, correct)

    def counts(self) -> list[float]:
        """Everything summed, flat (for :func:`nhlcli.distributed.all_sum`)."""
        return [
            *self.depth_counts.tolist(),
            self.topk_height_sum,
            *self.bin_count.tolist(),
            *self.bin_confidence.tolist(),
            *self.bin_correct.tolist(),
        ]

    def report(self, counts: Sequence[float] | None = None) -> dict[str, Any]:
        """The metrics from :meth:`counts` (this process's own when ``None``)."""
        values = torch.tensor(list(self.counts() if counts is None else counts), dtype=torch.float64)
        depth_counts, rest = values[: self.levels + 1], values[self.levels + 1 :]
        topk_height_sum, bins = float(rest[0]), rest[1:].view(3, ECE_BINS)
        return hierarchy_report(depth_counts, topk_height_sum, self.k, bins)


def hierarchy_report(
    depth_counts: torch.Tensor, topk_height_sum: float, k: int, bins: torch.Tensor
) -> dict[str, Any]:
    """The report of :class:`HierarchyTally` from its sums: ``depth_counts[d]`` images whose top-1
    has its LCA with the truth at depth ``d``; ``bins`` rows: count, summed confidence, hits."""
    levels = len(depth_counts) - 1
    n = float(depth_counts.sum())
    if n == 0:
        raise NhlError("the evaluation data holds no images")
    depths = torch.arange(levels + 1, dtype=torch.float64)
    heights = levels - depths
    mistakes = float(depth_counts[:levels].sum())
    mean_depth = float((depth_counts * depths).sum()) / n
    count, confidence, hits = bins
    filled = count > 0
    gaps = (hits[filled] / count[filled] - confidence[filled] / count[filled]).abs()
    return {
        "levels": [
            {"level": level, "top1": float(depth_counts[level:].sum()) / n} for level in range(1, levels + 1)
        ],
        "mistakes": int(mistakes),
        "mistake_severity": float((depth_counts * heights).sum()) / mistakes if mistakes else None,
        "hdist_at_1": float((depth_counts * heights).sum()) / n,
        "hdist_at_k": topk_height_sum / n,
        "hdist_k": k,
        "hprecision": mean_depth / levels,
        "hrecall": mean_depth / levels,
        "hf1": mean_depth / levels,
        "ece": float((count[filled] / n * gaps).sum()),
        "ece_bins": ECE_BINS,
    }


def paired_differences(
    depths_a: torch.Tensor, depths_b: torch.Tensor, levels: int, resamples: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """B minus A on the same images, with 95% paired-bootstrap intervals (images resampled with
    replacement, both models' answers kept together): top-1, hierarchical distance @1 and mistake
    severity, from each image's top-1 LCA depth under either model."""
    if depths_a.shape != depths_b.shape or not len(depths_a):
        raise NhlError("the two models were not measured on the same images")
    generator = torch.Generator().manual_seed(seed)
    pairs = torch.stack([depths_a, depths_b]).double()  # [2, N]
    draws: dict[str, list[torch.Tensor]] = {"top1": [], "hdist_at_1": [], "mistake_severity": []}
    for start in range(0, resamples, 100):
        size = min(100, resamples - start)
        picks = torch.randint(len(depths_a), (size, len(depths_a)), generator=generator)
        for name, values in _depth_statistics(pairs[:, picks], levels).items():
            draws[name].append(values[1] - values[0])
    observed = _depth_statistics(pairs[:, None, :], levels)
    out: dict[str, dict[str, Any]] = {}
    for name, chunks in draws.items():
        values = torch.cat(chunks)
        values = values[~values.isnan()]
        point = float(observed[name][1, 0] - observed[name][0, 0])
        if point != point or not len(values):  # NaN: a model without mistakes has no severity
            out[name] = {"b_minus_a": None, "ci95": None, "detectable": None}
            continue
        low, high = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        out[name] = {"b_minus_a": point, "ci95": [low, high], "detectable": not low <= 0 <= high}
    return out


def _depth_statistics(depths: torch.Tensor, levels: int) -> dict[str, torch.Tensor]:
    """Top-1, hdist@1 and mistake severity over the last axis of ``depths`` (LCA depths)."""
    heights = levels - depths
    wrong = (depths < levels).double()
    return {
        "top1": 1 - wrong.mean(-1),
        "hdist_at_1": heights.mean(-1),
        "mistake_severity": (heights * wrong).sum(-1) / wrong.sum(-1),  # NaN: no mistakes
    }


def separation(mine: torch.Tensor, scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """AUROC of each score at telling an expert's own images (``mine``) from the rest: the chance
    that a random own image scores above a random other one (1: perfect, 0.5: chance)."""
    from sklearn.metrics import roc_auc_score

    labels = mine.numpy().astype(int)
    return {name: float(roc_auc_score(labels, v.detach().double().numpy())) for name, v in scores.items()}
