"""Thresholds, measured costs and the accuracy-GMACs curve of a gated model.

Tuning follows paper 004 (3.1) and MSDNet's adaptive inference: thresholds are chosen on held-out
data so that the gated network reaches a target accuracy at the lowest average MACs. One pass
records every gate's score and answer and the full network's answer for every image; exits are
then simulated exactly for any thresholds. The search is greedy and sequential: starting with
every gate closed, it repeatedly lowers the one threshold that saves the most MACs per accuracy
point lost (later gates see the samples earlier gates let go), while the target still holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nhlcli.errors import NhlError
from nhlcli.gates.loss import exit_scores
from nhlcli.model.gated import GatedModel

SWEEP_DROPS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)
CANDIDATES = 100  # thresholds tried per gate: quantiles of its scores on the tuning data
LOOKAHEAD = 5


@dataclass
class ExitRecord:
    """Per image: every gate's score and top-1, the full network's top-1 and MACs, the label."""

    scores: torch.Tensor  # [N, G]
    preds: torch.Tensor  # [N, G]
    final: torch.Tensor  # [N]
    final_macs: torch.Tensor  # [N], without exit gates
    labels: torch.Tensor  # [N]

    @property
    def full_accuracy(self) -> float:
        return float((self.final == self.labels).double().mean())

    def subset(self, rows: torch.Tensor) -> ExitRecord:
        """The record of some of its images (``rows``: their indices)."""
        return ExitRecord(
            self.scores[rows], self.preds[rows], self.final[rows], self.final_macs[rows], self.labels[rows]
        )


@torch.no_grad()
def collect_exits(
    gated: GatedModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    progress: Any = None,
) -> ExitRecord:
    """Run every image through every gate and the whole network once (nobody exits)."""
    gated.eval()
    scores, preds, finals, final_macs, labels = [], [], [], [], []
    for images, targets in batches:
        outs, final, route = gated.all_outputs(images.to(device))
        scores.append(torch.stack([exit_scores(gated.spec.loss, o) for o in outs], 1).cpu() if outs else None)
        preds.append(torch.stack([o.argmax(1) for o in outs], 1).cpu() if outs else None)
        finals.append(final.argmax(1).cpu())
        if gated.route_top_k is not None and route is not None:
            top = route.topk(gated.route_top_k, dim=1).indices.sort(dim=1).values.cpu()
            final_macs.append(torch.tensor([float(gated.routed_macs(tuple(r))) for r in top.tolist()]))
        else:
            final_macs.append(torch.full((len(targets),), float(gated.base_macs()), dtype=torch.float64))
        labels.append(targets.cpu())
        if progress is not None:
            progress(len(targets))
    if not labels:
        raise NhlError("the data holds no images; give a split with images of the model's classes")
    n, g = sum(len(t) for t in labels), len(gated.exits)
    return ExitRecord(
        torch.cat(scores) if g else torch.zeros(n, 0),
        torch.cat(preds) if g else torch.zeros(n, 0, dtype=torch.long),
        torch.cat(finals),
        torch.cat(final_macs).double(),
        torch.cat(labels),
    )


def exits_taken(record: ExitRecord, thresholds: Sequence[float | None]) -> torch.Tensor:
    """Per image, the exit it leaves at with ``thresholds`` (the number of gates: the end)."""
    n, gates = len(record.labels), record.scores.shape[1]
    exits = torch.full((n,), gates, dtype=torch.long)
    open_rows = torch.ones(n, dtype=torch.bool)
    for g, t in enumerate(thresholds):
        if t is None:
            continue
        leave = open_rows & (record.scores[:, g] >= t)
        exits[leave] = g
        open_rows &= ~leave
    return exits


def simulate_answers(record: ExitRecord, thresholds: Sequence[float | None]) -> torch.Tensor:
    """Per image, the class the gated model answers with ``thresholds``."""
    exits = exits_taken(record, thresholds)
    pred = record.final.clone()
    for g in range(record.scores.shape[1]):
        rows = exits == g
        pred[rows] = record.preds[rows, g]
    return pred


def simulate(gated: GatedModel, record: ExitRecord, thresholds: Sequence[float | None]) -> dict[str, Any]:
    """Accuracy, average GMACs and exit fractions the gated model gives with ``thresholds``."""
    gates = record.scores.shape[1]
    exit_macs = gated.exit_macs(thresholds)
    gate_overhead = exit_macs[-1] - gated.base_macs()
    exits = exits_taken(record, thresholds)
    pred = simulate_answers(record, thresholds)
    macs = record.final_macs + gate_overhead
    for g in range(gates):
        macs[exits == g] = float(exit_macs[g])
    correct = pred == record.labels
    return {
        "thresholds": list(thresholds),
        "top1": float(correct.double().mean()),
        "gmacs": float(macs.mean()) / 1e9,
        "full_gmacs": gated.base_macs() / 1e9,
        "full_top1": record.full_accuracy,
        "exit_fractions": [float((exits == g).double().mean()) for g in range(gates + 1)],
    }


def _candidates(scores: torch.Tensor) -> list[float]:
    """Thresholds from high (few exits) to the lowest score (everyone exits)."""
    q = torch.linspace(1.0, 0.0, CANDIDATES + 1, dtype=torch.float64)[1:]
    values = torch.quantile(scores.double(), q).tolist()
    out: list[float] = []
    for v in values:
        if not out or v < out[-1]:
            out.append(float(v))
    return out


def tune_thresholds(gated: GatedModel, record: ExitRecord, target: float) -> dict[str, Any]:
    """The thresholds reaching ``target`` top-1 (a fraction) at the lowest average MACs found."""
    full = record.full_accuracy
    if target > full + 1e-12:
        raise NhlError(
            f"a top-1 of {target:.2%} cannot be reached on this data: the full network (no exits) reaches "
            f"{full:.2%}; ask for at most that, or use `max_drop`"
        )
    current = simulate(gated, record, threshold_path(gated, record, target)[-1])
    current["target_top1"] = target
    current["full_top1"] = full
    return current


def threshold_path(
    gated: GatedModel, record: ExitRecord, target: float = float("-inf")
) -> list[list[float | None]]:
    """The greedy search's thresholds step by step, from every gate closed to the cheapest that
    still reaches ``target`` top-1 (no target: until no step saves MACs). Each step lowers the one
    threshold that saves the most MACs per accuracy point lost; risk grows along the path."""
    return [thresholds for _, thresholds in joint_path(gated, {0: record}, target)]


def joint_path(
    gated: GatedModel, records: Mapping[int, ExitRecord], target: float = float("-inf")
) -> list[tuple[int, list[float | None]]]:
    """:func:`threshold_path` over routing widths too: ``records`` holds one record per width
    (``route_top_k``; the same images in the same order), and a step either lowers one threshold
    or narrows the width by one, whichever saves the most MACs per accuracy point lost. Starts at
    the widest width with every gate closed; returns (width, thresholds) step by step."""
    widths = sorted(records, reverse=True)
    at = 0
    gates = records[widths[0]].scores.shape[1]
    cands = [_candidates(records[widths[0]].scores[:, g]) for g in range(gates)]
    pos = [-1] * gates
    thresholds: list[float | None] = [None] * gates
    path = [(widths[0], list(thresholds))]
    current = simulate(gated, records[widths[0]], thresholds)
    while True:
        best: tuple[float, float, int, int] | None = None
        trials = [(g, p) for g in range(gates) for p in range(pos[g] + 1, _lookahead_stop(cands[g], pos[g]))]
        if at + 1 < len(widths):
            trials.append((-1, at + 1))  # narrow the routing width
        for g, p in trials:
            trial = list(thresholds)
            if g >= 0:
                trial[g] = cands[g][p]
            result = simulate(gated, records[widths[p if g < 0 else at]], trial)
            saved = current["gmacs"] - result["gmacs"]
            if result["top1"] < target or saved <= 0:
                continue
            gain = saved / max(current["top1"] - result["top1"], 1e-9)
            if best is None or (gain, saved) > (best[0], best[1]):
                best = (gain, saved, g, p)
        if best is None:
            return path
        _, _, g, p = best
        if g < 0:
            at = p
        else:
            pos[g] = p
            thresholds[g] = cands[g][p]
        path.append((widths[at], list(thresholds)))
        current = simulate(gated, records[widths[at]], thresholds)


def _lookahead_stop(candidates: list[float], position: int) -> int:
    """How far past its current candidate a gate's threshold may step at once."""
    return len(candidates) if position < 0 else min(len(candidates), position + 1 + LOOKAHEAD)


def check_target(target_accuracy: float | None, max_drop: float | None) -> None:
    """Refuse a target that cannot be met (out of range, NaN), before any image is scored."""
    if (target_accuracy is None) == (max_drop is None):
        raise NhlError("give exactly one of `target_accuracy`, `max_drop` or `thresholds`")
    if max_drop is not None and not 0 <= max_drop <= 100:  # NaN compares False: refused too
        raise NhlError(f"{max_drop}: give percentage points between 0 and 100, e.g. 0.5", "max_drop")
    if target_accuracy is not None and not 0 < target_accuracy <= 100:
        raise NhlError(f"{target_accuracy}: give a top-1 in percent, e.g. 91.5", "target_accuracy")


def target_from(record: ExitRecord, target_accuracy: float | None, max_drop: float | None) -> float:
    """The target top-1 (fraction) from ``--target-accuracy`` or ``--max-drop`` (both in percent)."""
    check_target(target_accuracy, max_drop)
    if max_drop is not None:
        return record.full_accuracy - max_drop / 100
    assert target_accuracy is not None
    return target_accuracy / 100


def sweep(
    gated: GatedModel, record: ExitRecord, drops: Sequence[float] = SWEEP_DROPS
) -> list[dict[str, Any]]:
    """The accuracy-GMACs curve: thresholds tuned for each allowed drop (percentage points)."""
    points: list[dict[str, Any]] = []
    for drop in sorted(drops):
        point = tune_thresholds(gated, record, record.full_accuracy - drop / 100)
        if points and points[-1]["gmacs"] < point["gmacs"]:
            # the greedy search is not monotone; a tighter target's thresholds also meet this one
            point = {**points[-1], "target_top1": point["target_top1"]}
        point["max_drop"] = drop
        points.append(point)
    return points


def plot_sweeps(curves: dict[str, list[dict[str, Any]]], output: str | Path, title: str = "") -> Path:
    """Accuracy against average GMACs, one line per curve, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nhlcli.atomic import atomic_write

    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    for i, (name, points) in enumerate(curves.items()):
        xs = [p["gmacs"] * 1e3 for p in points]
        ys = [p["top1"] * 100 for p in points]
        (line,) = ax.plot(xs, ys, marker="o", ms=4, label=name)
        full = points[0]  # the same network without exits: a star in the curve's colour
        ax.scatter(
            [full["full_gmacs"] * 1e3],
            [full["full_top1"] * 100],
            marker="*",
            s=150,
            color=line.get_color(),
            edgecolors="k",
            zorder=5,
            label="full network (no exits)" if i == 0 else None,
        )
    ax.set_xlabel("average MMACs per image")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title or "decision gates: accuracy against cost", fontsize=10, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = atomic_write(output, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
