"""Experts that answer "none of mine" (issue 38): the other head against the baselines computed
on the same expert, and whether its threshold's guarantee holds on held-out images.

For each case (an NHL model and the classes of an expert): cut the expert, fit its other head on
``--fit-images`` training images of the parent's data, score every test image once, then:

- AUROC, own classes against the rest, on the whole test split: the other head against the
  maximum softmax probability over the expert's restricted softmax, its maximum logit and its
  energy (log-sum-exp);
- over ``--splits`` random halvings of the test split: the threshold set on one half (budget
  ``--budget`` of own images sent to "other", guaranteed with probability ``1 - delta``), and on
  the other half the share of own images sent to "other" (the guarantee: above the budget in at
  most about ``delta`` of the halvings) and of other classes' images caught; once guaranteed for
  the rate over new images, once for a test set of the evaluation half's own images
  (``--test-images``, the share measured there);
- the MACs the head adds per image, against the plain expert's.

    python benchmarks/bench_other.py --model nhl.safetensors --classes footwear --results
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from nhlcli.data.loaders import model_loader
from nhlcli.evaluation import collect_other, own_classes
from nhlcli.experts.cutout import cutout_file
from nhlcli.experts.other import OtherRequest, add_other_head, threshold_for
from nhlcli.memory import keep_freed_cpu_memory
from nhlcli.metrics import separation
from nhlcli.taxonomy.tree import Tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the parent NHL model")
    parser.add_argument("--classes", required=True, help="the expert's classes or group, comma-separated")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--case", default=None, help="the case's name in the results (default: --classes)")
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--splits", type=int, default=40)
    parser.add_argument("--fit-images", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--name", default="other-experts-fm")
    parser.add_argument("--results", action="store_true", help="add the case to benchmarks/results/NAME.json")
    args = parser.parse_args()
    keep_freed_cpu_memory()
    device = torch.device("cpu")
    cut = cutout_file(args.model, [c.strip() for c in args.classes.split(",")])
    expert = cut.model
    expert.metadata = {"training": cut.training or {}, "expert": cut.lineage}
    parent = Tree.from_dict(cut.lineage["parent_tree"])
    started = time.perf_counter()
    request = OtherRequest(args.data, args.budget, args.delta, max_images=args.fit_images,
                           workers=args.workers, part="1/2")  # fmt: skip
    add_other_head(expert, parent, request, device)
    fit_s = time.perf_counter() - started
    mine = own_classes(expert.tree, parent)
    loader = model_loader(expert, args.data, "val", 256, args.workers, tree=parent, subset=True)
    seen = collect_other(expert, loader, mine, device)
    with torch.no_grad():
        scores = expert.other(seen["features"]).cpu()
    own = seen["mine"]
    auroc = separation(own, {"other head": scores, "max softmax": seen["msp"], "max logit": seen["max_logit"],
                             "energy": seen["energy"]})  # fmt: skip
    rows = []
    for seed in range(args.splits):
        order = torch.randperm(len(own), generator=torch.Generator().manual_seed(seed))
        half = len(own) // 2
        calibrate, measure = order[:half], order[half:]
        row = {"seed": seed}
        calibration_own = scores[calibrate][own[calibrate]]
        for method, test_images in (("rate", None), ("test set", int(own[measure].sum()))):
            threshold, _ = threshold_for(calibration_own, args.budget, args.delta, test_images)
            rejected = scores[measure] < (threshold if threshold is not None else -math.inf)
            row[method] = {
                "threshold": threshold,
                "rejected_own": float(rejected[own[measure]].double().mean()),
                "rejected_other": float(rejected[~own[measure]].double().mean()),
            }
        rows.append(row)
    shape = tuple(expert.input_config.size)
    plain, with_other = expert.macs_per_image(shape), expert.other_macs_per_image(shape)
    own_rejected = [r["rate"]["rejected_own"] for r in rows]
    own_rejected_test_set = [r["test set"]["rejected_own"] for r in rows]
    run = {
        "model": args.case or args.classes,
        "classes": len(expert.tree.classes),
        "test_images_own": int(own.sum()),
        "test_images_other": int((~own).sum()),
        "auroc_other_head": auroc["other head"],
        "auroc_max_softmax": auroc["max softmax"],
        "auroc_max_logit": auroc["max logit"],
        "auroc_energy": auroc["energy"],
        "budget": args.budget,
        "delta": args.delta,
        "splits": args.splits,
        "exceeded_share": sum(r > args.budget for r in own_rejected) / len(rows),
        "rejected_own_mean": statistics.mean(own_rejected),
        "rejected_other_mean": statistics.mean(r["rate"]["rejected_other"] for r in rows),
        "exceeded_share_test_set": sum(r > args.budget for r in own_rejected_test_set) / len(rows),
        "rejected_own_mean_test_set": statistics.mean(own_rejected_test_set),
        "rejected_other_mean_test_set": statistics.mean(r["test set"]["rejected_other"] for r in rows),
        "extra_macs_percent": 100 * (with_other - plain) / plain,
        "fit_seconds": round(fit_s, 1),
    }
    for key, value in run.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if args.results:
        from results_store import add_runs, invoked_command

        setup = {
            "data": args.data,
            "table": {"columns": [
                ["expert", "model", "{}"], ["classes", "classes", "{}"],
                ["AUROC other head", "auroc_other_head", "**{:.3f}**"],
                ["max softmax", "auroc_max_softmax", "{:.3f}"],
                ["max logit", "auroc_max_logit", "{:.3f}"], ["energy", "auroc_energy", "{:.3f}"],
                ["budget", "budget", "{:.0%}"], ["halvings over budget", "exceeded_share", "**{:.0%}**"],
                ["own sent to other (mean)", "rejected_own_mean", "{:.2%}"],
                ["others caught (mean)", "rejected_other_mean", "{:.2%}"],
                ["test-set guarantee: halvings over budget", "exceeded_share_test_set", "**{:.0%}**"],
                ["own sent to other", "rejected_own_mean_test_set", "{:.2%}"],
                ["others caught", "rejected_other_mean_test_set", "{:.2%}"],
                ["extra MACs", "extra_macs_percent", "{:.3f}%"],
            ]},  # fmt: skip
            f"per_split {run['model']}": rows,
            "fit": "head fitted on training images; threshold on a random half of the test split, "
            "measured on the other half (guaranteed for the rate, and for a test set of that half's "
            "own images)",
        }
        add_runs(args.name, [run], title="Experts with an other answer: AUROC and the threshold's guarantee",
                 command=invoked_command(), setup=setup)  # fmt: skip


if __name__ == "__main__":
    main()
