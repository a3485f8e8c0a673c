"""Gate thresholds, the gates' operating point and the attention scale, chosen on a hold-out of
the training images and then measured once on the test split (issue 36).

docs/results.md's gates figures tuned the thresholds on half of the Fashion-MNIST test set and
read "the most GMACs saved at <= 0.5 points lost" off a curve measured on the other half, and
the attention part read the scale of largest gain off the test curve. Here every choice is made
on a stratified 10% hold-out of the 60,000 training images that the models were trained without
(``nhl train --holdout 0.1``):

1. a seed-0 N2HL (``--variant nhl --hierarchy fashion-mnist-wordnet-l2``) and a seed-0 flat
   ResNet18 (``--flat``), the study's 2-epoch recipe, trained on the other 54,000 images;
2. hinge and cross-entropy gates fitted on those 54,000 (``nhl gates fit --split train
   --holdout 0.1``);
3. thresholds tuned on the hold-out for at most 0.25 points lost (``nhl gates tune --split val
   --holdout 0.1 --max-drop 0.25``), and separately the point of the hold-out's sweep (``nhl
   gates sweep``) that saves the most GMACs at <= 0.5 points lost;
4. both measured once on the 10,000 test images (``nhl eval GATED --holdout 0``): top-1 gated and
   ungated on the same images, the drop, GMACs saved, images/s gated and ungated;
5. the N2HL's oracle attention curve (``nhl eval --attend-truth ...``, levels ``last`` and
   ``path``) on the hold-out picks the scale of largest gain; the test top-1 at that scale is the
   figure, the whole test curve a description beside it.

    python benchmarks/holdout_choices.py --workdir holdout-work

Every step is an ``nhl`` command, printed as it runs; finished steps are cached as JSON under
``--workdir/runs`` (an interrupted run continues). The figures go to
``benchmarks/results/fm-gates-holdout.json`` and ``fm-attention-holdout.json``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from results_store import write_results  # noqa: E402
from results_study import ATTEND_SCALES, EPOCHS, Study, recipe_with  # noqa: E402

HOLDOUT = 0.1
SEED = 0
BUDGET = 0.25  # points: the study's tuning budget
SWEEP_BUDGET = 0.5  # points: the operating point read off the hold-out's sweep
LOSSES = ("hinge", "ce")
MODELS: dict[str, list[str]] = {  # name in the results -> nhl train options
    "n2hl": ["--variant", "nhl", "--hierarchy", "fashion-mnist-wordnet-l2"],
    "flat": ["--flat"],
}
WORKERS = "1"
DATA = ["--data", "fashion-mnist"]
COMMAND = "python benchmarks/holdout_choices.py --workdir holdout-work"


def most_saved_within(points: Sequence[dict[str, Any]], budget_points: float) -> dict[str, Any]:
    """The sweep point with the fewest GMACs among those losing at most ``budget_points`` of top-1
    against the full network on the images the sweep was measured on (ties: the more accurate)."""
    within = [p for p in points if 100 * (p["full_top1"] - p["top1"]) <= budget_points + 1e-9]
    if not within:
        raise ValueError(f"no point of the sweep loses at most {budget_points} points")
    return min(within, key=lambda p: (p["gmacs"], -p["top1"]))


def largest_gain(curve: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The point of an attention curve with the highest top-1 (ties: the scale nearest 1)."""
    return max(curve, key=lambda p: (p["top1"], -abs(p["scale"] - 1)))


def thresholds_arg(thresholds: Sequence[float | None]) -> str:
    return ",".join("inf" if t is None else repr(float(t)) for t in thresholds)


def pct(value: float) -> float:
    return round(100 * value, 2)


class HoldoutStudy(Study):
    """The results study's plumbing (commands echoed, steps cached), its choices on the hold-out."""

    def train_held(self, name: str) -> dict[str, Any]:
        out = f"models/{name}-h{round(100 * HOLDOUT)}-s{SEED}.safetensors"
        args = ["train", *DATA, *recipe_with(self.epochs, [*MODELS[name], "--holdout", str(HOLDOUT)])]
        args += ["--seed", str(SEED), "-o", out]

        def make() -> dict[str, Any]:
            summary = self.nhl(*args)
            return {"command": "nhl " + shlex.join(args), "model": out, "holdout_top1": summary["val_top1"]}

        return self.cached(f"train-{name}-h{round(100 * HOLDOUT)}-s{SEED}", make)

    def gates(self, name: str, model: str, loss: str) -> dict[str, Any]:
        gated = f"models/{name}-h{round(100 * HOLDOUT)}-s{SEED}-{loss}.safetensors"
        swept = f"models/{name}-h{round(100 * HOLDOUT)}-s{SEED}-{loss}-p{SWEEP_BUDGET:g}.safetensors"
        held = ["--holdout", str(HOLDOUT), "--workers", WORKERS]

        def make() -> dict[str, Any]:
            fit = self.nhl(
                "gates", "fit", model, "-o", gated, *DATA, "--split", "train", *held, "--loss", loss
            )
            sweep = self.nhl("gates", "sweep", gated, *DATA, "--split", "val", *held)
            tuned = self.nhl(
                "gates", "tune", gated, *DATA, "--split", "val", *held, "--max-drop", f"{BUDGET:g}"
            )
            test_tuned = self.nhl("eval", gated, *DATA, "--holdout", "0", "--workers", WORKERS)
            point = most_saved_within(sweep["points"], SWEEP_BUDGET)
            chosen = self.nhl(
                "gates", "tune", gated, "-o", swept, *DATA, "--split", "val", *held,
                "--thresholds", thresholds_arg(point["thresholds"]),
            )  # fmt: skip
            test_swept = self.nhl("eval", swept, *DATA, "--holdout", "0", "--workers", WORKERS)
            return {
                "fit": {k: fit[k] for k in ("images", "split", "holdout", "loss")},
                "sweep": sweep,
                "tuned": tuned,
                "test_tuned": test_tuned,
                "point": point,
                "chosen": chosen,
                "test_swept": test_swept,
            }

        return self.cached(f"gates-{name}-{loss}", make)

    def attention(self, model: str) -> dict[str, Any]:
        scales = ",".join(f"{s:g}" for s in ATTEND_SCALES)

        def make() -> dict[str, Any]:
            curves: dict[str, dict[str, Any]] = {}
            for level in ("last", "path"):
                where = ["--attend-level", "path"] if level == "path" else []
                for split, fraction in (("holdout", str(HOLDOUT)), ("test", "0")):
                    curves.setdefault(level, {})[split] = self.nhl(
                        "eval", model, *DATA, "--attend-truth", scales, *where, "--holdout", fraction,
                        "--workers", WORKERS,
                    )  # fmt: skip
            return {"model": model, "curves": curves}

        return self.cached("attention-n2hl", make)


def gate_records(name: str, loss: str, found: dict[str, Any]) -> list[dict[str, Any]]:
    """Per operating point: what the hold-out said (where it was chosen) and the test's one look."""
    records = []
    plans = (
        (
            BUDGET,
            f"tuned on the hold-out for at most {BUDGET:g} points lost",
            found["tuned"],
            found["test_tuned"],
        ),
        (
            SWEEP_BUDGET,
            f"the hold-out sweep's point with the most GMACs saved at <= {SWEEP_BUDGET:g} points lost",
            found["chosen"],
            found["test_swept"],
        ),
    )
    for budget, rule, held, test in plans:
        common = {"model": name, "seed": SEED, "loss": loss, "budget_points": budget, "rule": rule,
                  "chosen_on": "holdout", "thresholds": held["thresholds"]}  # fmt: skip
        records.append(
            {
                **common,
                "split": "holdout",
                "images": held["images"],
                "top1_full": pct(held["full_top1"]),
                "top1_gated": pct(held["top1"]),
                "drop_points": pct(held["full_top1"] - held["top1"]),
                "gmacs_gated": round(held["gmacs"], 6),
                "gmacs_full": round(held["full_gmacs"], 6),
                "gmacs_saved_pct": round(100 * (1 - held["gmacs"] / held["full_gmacs"]), 2),
                "exit_fractions": [round(f, 4) for f in held["exit_fractions"]],
            }
        )
        records.append(
            {
                **common,
                "split": "test",
                "images": test["images"],
                "top1_full": pct(test["ungated_top1"]),
                "top1_gated": pct(test["top1"]),
                "drop_points": pct(test["ungated_top1"] - test["top1"]),
                "gmacs_gated": round(test["gmacs"], 6),
                "gmacs_full": round(test["full_gmacs"], 6),
                "gmacs_saved_pct": test["gmacs_reduction_percent"],
                "images_per_s_gated": round(test["images_per_s"], 1),
                "images_per_s_full": round(test["ungated_images_per_s"], 1),
                "speedup": round(test["speedup"], 3),
                "exit_fractions": [round(e["fraction"], 4) for e in test["exits"]],
                "threads": test["threads"],
            }
        )
    return records


def attention_records(found: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point of both curves, and per level the scale the hold-out chose with its test top-1."""
    records = []
    for level, by_split in found["curves"].items():
        unattended = {
            split: next(p["top1"] for p in report["curve"] if p["scale"] == 1)
            for split, report in by_split.items()
        }
        for split, report in by_split.items():
            for p in report["curve"]:
                records.append(
                    {
                        "model": "n2hl", "seed": SEED, "kind": "curve", "level": level, "scale": p["scale"],
                        "split": split, "images": p["images"], "top1": pct(p["top1"]), "top5": pct(p["top5"]),
                        "gain_points": pct(p["top1"] - unattended[split]),
                    }
                )  # fmt: skip
        chosen = largest_gain(by_split["holdout"]["curve"])
        at_test = next(p for p in by_split["test"]["curve"] if p["scale"] == chosen["scale"])
        records.append(
            {
                "model": "n2hl", "seed": SEED, "kind": "choice", "level": level, "split": "test",
                "chosen_on": "holdout", "scale": chosen["scale"],
                "holdout_top1": pct(chosen["top1"]),
                "holdout_gain_points": pct(chosen["top1"] - unattended["holdout"]),
                "top1": pct(at_test["top1"]), "top1_unattended": pct(unattended["test"]),
                "gain_points": pct(at_test["top1"] - unattended["test"]),
                # a description of the test curve, not a choice: the figure is the row above
                "test_curve_best_scale": largest_gain(by_split["test"]["curve"])["scale"],
            }
        )  # fmt: skip
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("holdout-work"))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    study = HoldoutStudy(args.workdir.resolve(), args.epochs)
    trained = {name: study.train_held(name) for name in MODELS}
    gate_runs, counts, sweeps = [], {}, {}
    for name, run in trained.items():
        for loss in LOSSES:
            found = study.gates(name, run["model"], loss)
            sweeps[f"{name}/{loss}"] = [
                {k: p[k] for k in ("max_drop", "top1", "full_top1", "gmacs", "full_gmacs", "thresholds")}
                for p in found["sweep"]["points"]
            ]
            counts = {
                "fit_images": found["fit"]["images"],
                "holdout_images": found["tuned"]["images"],
                "test_images": found["test_tuned"]["images"],
            }
            gate_runs += gate_records(name, loss, found)
    attention = study.attention(trained["n2hl"]["model"])
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    counts = {"train_images": 60000, **counts}
    if counts != {"train_images": 60000, "fit_images": 54000, "holdout_images": 6000, "test_images": 10000}:
        raise SystemExit(f"unexpected image counts {counts}")
    recipe = "nhl train " + shlex.join([*DATA, *recipe_with(args.epochs, [])])
    setup = {
        "data": "fashion-mnist",
        **counts,
        "holdout": HOLDOUT,
        "split_seed": 0,
        "recipe": recipe,
        "epochs": args.epochs,
        "models": {
            name: {
                "options": MODELS[name],
                "holdout_top1": pct(r["holdout_top1"]),
                "train_command": r["command"],
            }
            for name, r in trained.items()
        },  # fmt: skip
        "arms": {"n2hl": {"label": "N2HL (WordNet)"}, "flat": {"label": "flat ResNet18"}},
        "chosen_on": "a stratified 10% hold-out of the training images (6,000), which the models, the gates "
        "and the thresholds never trained on; the test split (10,000) was measured once per choice",
    }
    gate_setup = {
        **setup,
        "losses": list(LOSSES),
        "budgets_points": {"tuned": BUDGET, "sweep": SWEEP_BUDGET},
        "holdout_sweeps": sweeps,
    }
    write_results(
        "fm-gates-holdout",
        title="Fashion-MNIST decision gates, seed 0, 2 epochs: thresholds and operating points chosen on a "
        "hold-out of the training images, measured once on the test split",
        command=COMMAND,
        setup=gate_setup,
        runs=gate_runs,
        date=date,
        notes="top-1 in percent; drop_points = top1_full - top1_gated on the same images; throughput is "
        "gated against ungated on the same batches in one run (nhl eval on the gated file).",
    )
    write_results(
        "fm-attention-holdout",
        title="Fashion-MNIST N2HL (seed 0, 2 epochs) oracle attention: the scale chosen on a hold-out of the "
        "training images, its test top-1, and both curves",
        command=COMMAND,
        setup={**setup, "scales": list(ATTEND_SCALES), "levels": ["last", "path"]},
        runs=attention_records(attention),
        date=date,
        notes="kind 'choice': the scale of largest hold-out top-1 and the test top-1 there (the figure); "
        "kind 'curve': every scale on both splits (a description; test_curve_best_scale is not a choice).",
    )


if __name__ == "__main__":
    main()
