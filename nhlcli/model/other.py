"""An expert's "none of my classes" answer: a linear test on features the expert computes anyway.

A cut-out expert's softmax runs over its own classes only, so a footwear expert shown a shirt
answers sandal, sneaker or ankle boot. The tree gives the expert what a plain pruned network
lacks: its branches are the paths from the root to its classes, and the upper nodes on those
paths were trained to carry what separates their classes' ancestors from every other subtree.
The "other" head reads those nodes: the globally pooled trunk output and the pooled output of
every branch node the expert keeps, plus the log-sum-exp and maximum of its logits, standardised
and weighed by one linear layer (fitted in :mod:`nhlcli.experts.other`). A score below the
threshold answers "other". The logits themselves are untouched: with the head present or not,
the expert's answers on its own classes are the full model's.

The file is the expert's file plus an ``other`` metadata section and ``other.*`` tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nhlcli.errors import NhlError

OTHER_PREFIX = "other."
OTHER = "other"  # what predictions and reports call the answer


@dataclass
class OtherSpec:
    """The ``other`` section: the head's input size, its threshold and how both were chosen."""

    dim: int
    threshold: float | None = None  # None: the head scores, but never answers "other"
    fit: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OtherSpec:
        try:
            threshold = data.get("threshold")
            return cls(
                dim=int(data["dim"]),
                threshold=None if threshold is None else float(threshold),
                fit=dict(data.get("fit", {})),
                calibration=dict(data.get("calibration", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NhlError(
                f"the file's other section is malformed ({exc}); cut the expert again with `other`"
            ) from exc


class OtherHead(nn.Module):
    """Standardise the pooled features, then one linear score: high means "one of mine"."""

    def __init__(self, spec: OtherSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.zeros(spec.dim))
        self.register_buffer("std", torch.ones(spec.dim))
        self.linear = nn.Linear(spec.dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features.float() - self.mean) / self.std).squeeze(1)

    def rejects(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Per image, whether it answers "other" (``None`` without a threshold)."""
        if self.spec.threshold is None:
            return None
        return scores < self.spec.threshold


def head_features(pooled: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """The head's input: every pooled map, then the logits' log-sum-exp and maximum."""
    logits = logits.float()
    extra = torch.stack([logits.logsumexp(dim=1), logits.amax(dim=1)], dim=1)
    return torch.cat([*(p.float() for p in pooled), extra], dim=1)
