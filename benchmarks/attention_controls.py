"""Top-down attention's controls (paper 003, 4.4): how much of the oracle gain is logit scaling,
and what a cue that is not the answer buys.

At the last level an NHL class's branch feeds only its own pooled linear head, so scaling its
maps by ``s`` turns its logit ``z`` into ``s * (z - b) + b`` (``b`` the head's bias): the oracle
curve is a logit transform, and any classifier can apply it. This script measures, on one test
set, each cue against the same transform applied to a flat network's logits:

- ``truth``: each image's own class scaled (the paper's oracle; the NHL's last level).
- ``group``: the class's level-1 group scaled (the cue names the kind of thing, as "meow" names
  a cat, not the breed: the NHL scales the group's level-1 branch, which feeds every class below
  it; the flat control scales those classes' logits).
- ``group-80``: the same cue, wrong for 20% of the images (a random other group, seeded): a
  cue from another modality is not always right.

The NHL's own logit transform at the last level is measured too, as a check that it equals its
branch attention (the row pair ``nhl branches`` / ``nhl logits``).

    python benchmarks/attention_controls.py --nhl models/n2hl.safetensors --flat models/flat.safetensors
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nhlcli.data.loaders import model_loader
from nhlcli.model.attention import TruthAttention, ancestor_table
from nhlcli.model.loading import open_model

SCALES = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 20.0)
CUE_RIGHT = 0.8  # how often the group-80 cue names the right group


def class_bias(model: torch.nn.Module) -> torch.Tensor:
    """Each class logit's bias, in class order: what scaling a class's features leaves alone."""
    if model.kind == "nhl":
        return model.heads.bias.detach().index_select(0, model.class_to_leaf)
    return model.classifier().bias.detach()


def noisy_cues(targets: torch.Tensor, group: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A class standing for each image's cued group: its own class (right group) with probability
    CUE_RIGHT, else a random class of another group."""
    cues = targets.clone()
    wrong = torch.rand(len(targets), generator=generator) >= CUE_RIGHT
    for i in torch.nonzero(wrong).flatten().tolist():
        others = torch.nonzero(group != group[targets[i]]).flatten()
        cues[i] = others[torch.randint(len(others), (1,), generator=generator)].item()
    return cues


def scaled_logits(
    logits: torch.Tensor, bias: torch.Tensor, chosen: torch.Tensor, scale: float
) -> torch.Tensor:
    """``s * (z - b) + b`` on the chosen (boolean ``[B, C]``) logits, the rest unchanged."""
    return torch.where(chosen, scale * (logits - bias) + bias, logits)


@torch.no_grad()
def measure(
    nhl_file: Path, flat_file: Path, data: str, workers: int, scales: Sequence[float]
) -> dict[str, Any]:
    nhl, flat = open_model(nhl_file).eval(), open_model(flat_file).eval()
    if nhl.kind != "nhl" or flat.kind != "flat":
        raise SystemExit("--nhl takes an NHL model file and --flat a flat one")
    if nhl.classes != flat.classes:
        raise SystemExit("the two models must classify the same classes in the same order")
    group = ancestor_table(nhl.tree, 1)  # class index -> its level-1 group
    truth_attention = [TruthAttention(nhl, s) for s in scales]
    group_attention = [TruthAttention(nhl, s, 1) for s in scales]
    biases = {"nhl": class_bias(nhl), "flat": class_bias(flat)}
    generator = torch.Generator().manual_seed(0)
    cues = ("truth", "group", "group-80")
    rows = ("nhl branches", "nhl logits", "flat logits")
    correct = {(cue, row): torch.zeros(len(scales)) for cue in cues for row in rows}
    images = 0
    nhl_loader = model_loader(nhl, data, "val", 256, workers)
    flat_loader = model_loader(flat, data, "val", 256, workers)
    for (x_nhl, targets), (x_flat, flat_targets) in zip(nhl_loader, flat_loader, strict=True):
        if not torch.equal(targets, flat_targets):
            raise SystemExit("the two models' loaders disagree on the labels")
        features = nhl.trunk(x_nhl)
        logits = {"nhl": nhl.forward_branches(features), "flat": flat(x_flat)}
        cue_class = {"truth": targets, "group": targets, "group-80": noisy_cues(targets, group, generator)}
        for cue in cues:
            if cue == "truth":
                chosen = torch.nn.functional.one_hot(targets, len(group)).bool()
            else:
                chosen = group[None, :] == group[cue_class[cue]][:, None]
            for k, scale in enumerate(scales):
                attention = (truth_attention if cue == "truth" else group_attention)[k](cue_class[cue])
                outputs = {
                    "nhl branches": nhl.forward_branches(features, attention),
                    "nhl logits": scaled_logits(logits["nhl"], biases["nhl"], chosen, scale),
                    "flat logits": scaled_logits(logits["flat"], biases["flat"], chosen, scale),
                }
                for row, out in outputs.items():
                    correct[(cue, row)][k] += (out.argmax(1) == targets).sum()
        images += len(targets)
    return {
        "nhl": str(nhl_file),
        "flat": str(flat_file),
        "images": images,
        "scales": list(scales),
        "cue_right": CUE_RIGHT,
        "top1": {f"{cue} | {row}": (correct[(cue, row)] / images).tolist() for cue, row in correct},
    }


def table(result: dict[str, Any]) -> list[str]:
    """Markdown: top-1 per cue, model and scale (points over the same model at x1 in brackets)."""
    scales = result["scales"]
    base = scales.index(1.0)
    lines = [
        "| cue | attention on | " + " | ".join(f"x{s:g}" for s in scales) + " |",
        "|---|---|" + "---|" * len(scales),
    ]
    for key, top1 in result["top1"].items():
        cue, row = key.split(" | ")
        cells = [f"{100 * t:.2f} ({100 * (t - top1[base]):+.1f})" for t in top1]
        lines.append(f"| {cue} | {row} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nhl", type=Path, required=True, help="an NHL model file")
    parser.add_argument("--flat", type=Path, required=True, help="a flat model over the same classes")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.nhl, args.flat, args.data, args.workers, SCALES)
    print(json.dumps(result) if args.json else "\n".join(table(result)))


if __name__ == "__main__":
    main()
