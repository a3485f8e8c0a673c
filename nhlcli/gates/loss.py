"""The losses that train decision gates (paper 004, 2.1-2.2).

Hinge (the paper's): one-vs-all, each class a binary soft-margin classifier with label +1 for
its own images and -1 for the rest, ``max(0, 1 - y * d)`` per class; its sub-gradient with
respect to the weights is ``-y * x`` where ``y * d < 1`` and 0 elsewhere (eq. 2), which autograd
through ``relu`` gives exactly. A gate's outputs are then distances to the class boundaries, and
the largest one is the margin a sample exits on. Cross-entropy is paper 004's Experiment 1
control; its gates exit on the largest softmax probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nhlcli.model.gated import LOSSES, exit_scores

__all__ = ["LOSSES", "exit_scores", "gate_loss", "hinge_loss", "one_vs_all_targets"]


def one_vs_all_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[B, C]`` labels: +1 at each sample's class, -1 elsewhere."""
    return F.one_hot(targets, num_classes).to(torch.float32) * 2 - 1


def hinge_loss(distances: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One-vs-all hinge loss: mean over samples of the sum over classes of ``max(0, 1 - y d)``."""
    y = one_vs_all_targets(targets, distances.shape[1])
    return F.relu(1 - y * distances).sum(dim=1).mean()


def gate_loss(loss: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss of gates trained with ``loss`` (one of :data:`LOSSES`)."""
    if loss == "hinge":
        return hinge_loss(outputs, targets)
    return F.cross_entropy(outputs, targets)
