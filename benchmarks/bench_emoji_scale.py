"""The pipeline at 1,861 classes: NHL against flat on the same budget, trained experts, routing gates.

``train`` trains one model on all of Unicode's emoji (its ``emoji-unicode-l3`` tree, ResNet18 trunk,
32 px, the demo's recipe at batch 64) for as many steps as fit ``--minutes`` of wall time at
``--threads`` torch threads, drawing images in the training process (no loader workers), so that
two runs side by side (``&``, one thread each) get one core each: the same CPU budget. Short
epochs (``--steps-per-epoch``) let the time budget fit whole epochs; each epoch validates on a
fixed part of the test split (``--val-part``), and the end evaluates the whole test split (7,444 images). It
prints one JSON line: test top-1, images/s, the peak training memory per image, and the model file.

``experts`` cuts experts out of a trained model (1, 10 and 100 random classes, one subgroup, the
Flags group) and checks that each answers exactly as the full model restricted to its classes on
their test images; it prints their parameters, GMACs, latency and file size beside the full model
and the flat base network.

``gates`` fits the routing gate over Unicode's 9 groups on training images and reports, on the
test split (``--part``, half by default), the GMACs saved and the accuracy lost at each route width
against the ungated model on the same images.

    python benchmarks/bench_emoji_scale.py train --variant nhl-lean --steps-per-epoch 20 -o lean.safetensors &
    python benchmarks/bench_emoji_scale.py train --variant flat -o flat.safetensors; wait
    python benchmarks/bench_emoji_scale.py experts --model lean.safetensors --base flat.safetensors
    python benchmarks/bench_emoji_scale.py gates --model lean.safetensors

``experts --results NAME`` and ``gates --results NAME`` store their tables as
``benchmarks/results/NAME.json`` for report.py (``train --results NAME`` adds one run).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_store import add_runs, invoked_command, write_results

from nhlcli.demo import RECIPE as DEMO_RECIPE

# the demo's recipe at batch 64 (its crop scale "0.8,1" as numbers)
RECIPE = {**{k: DEMO_RECIPE[k] for k in ("lr", "warmup_epochs", "label_smoothing")}, "batch_size": 64,
          "crop_scale": tuple(float(v) for v in DEMO_RECIPE["crop_scale"].split(","))}  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_one(args: argparse.Namespace) -> dict:
    from nhlcli.data import create_eval_loader, create_loaders
    from nhlcli.evaluation import evaluate_file
    from nhlcli.model.nhl import with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.profiling import count_macs
    from nhlcli.taxonomy import resolve_tree
    from nhlcli.training.loop import TrainConfig, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tree = resolve_tree("emoji-unicode-l3")
    keep: tuple[str, ...] = ()
    if getattr(args, "keep", None):  # train on these classes only (a file of class ids, one a line)
        keep = tuple(line.strip() for line in args.keep.read_text().splitlines() if line.strip())
        tree = tree.select(keep).subtree(tree)
    model = create_model(tree, args.variant, TrunkConfig("resnet18", None, 3))
    model.input_config = with_input_size(model.input_config, 32)
    inp = model.input_config
    common = dict(input_size=32, in_chans=3, mean=inp.mean, std=inp.std, interpolation=inp.interpolation,
                  crop_pct=inp.crop_pct, batch_size=RECIPE["batch_size"], workers=0,
                  subset=bool(keep))  # fmt: skip
    train_loader, _ = create_loaders(
        "emoji", tree, augment=None, scale=RECIPE["crop_scale"], seed=args.seed, **common
    )
    val_loader = create_eval_loader("emoji", tree, part=args.val_part, **common)
    config = TrainConfig(
        epochs=args.max_epochs, batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
        warmup_epochs=RECIPE["warmup_epochs"], label_smoothing=RECIPE["label_smoothing"], augment=None,
        crop_scale=RECIPE["crop_scale"], workers=0, seed=args.seed, time_budget_s=args.minutes * 60,
        max_steps_per_epoch=args.steps_per_epoch, classes=keep,
    )  # fmt: skip
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    result = train(model, "emoji", args.output, config, loaders=(train_loader, val_loader), overwrite=True)
    train_s = time.perf_counter() - started
    rss_train = peak_rss_mb()
    torch.set_num_threads(args.eval_threads)  # the side-by-side run may have finished by now
    report = evaluate_file(args.output, "emoji", workers=0)
    steps = min(args.steps_per_epoch or len(train_loader), len(train_loader))
    return {
        "variant": args.variant,
        "seed": args.seed,
        "threads": args.threads,
        "budget_minutes": args.minutes,
        "epochs": result.epochs_done,
        "steps_per_epoch": steps,
        "train_images": result.epochs_done * steps * RECIPE["batch_size"],
        "train_seconds": round(train_s, 1),
        "images_per_s": round(statistics.median(h.images_per_s for h in result.history), 1),
        "val_part": args.val_part,
        "val_top1_part": round(result.history[-1].val_top1, 4),
        "test_top1": round(report["top1"], 4),
        "test_top5": round(report["top5"], 4),
        "test_images": report["images"],
        "gmacs": round(count_macs(model) / 1e9, 4),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "peak_rss_mb_before_training": round(rss_before, 1),
        "peak_rss_mb_training": round(rss_train, 1),
        "peak_rss_mb_per_image": round((rss_train - rss_before) / RECIPE["batch_size"], 2),
        "model": str(args.output),
        "classes": tree.num_classes,
    }


def expert_sets(tree, seed: int) -> list[tuple[str, list[str]]]:  # noqa: ANN001
    rng = random.Random(seed)
    names = [tree.node(c).name for c in tree.classes]
    return [
        ("1 random class", rng.sample(names, 1)),
        ("10 random classes", rng.sample(names, 10)),
        ("100 random classes", rng.sample(names, 100)),
        ("subgroup `animal-marine`", ["animal-marine"]),
        ("group `Flags`", ["Flags"]),
    ]


def cost_row(report: dict) -> dict:
    latency = {f"batch{r['batch']}_ms": round(r["median_ms"], 2) for r in report.get("latency", [])}
    return {"classes": report["classes"], "params_m": round(report["params"]["total"] / 1e6, 2),
            "gmacs": round(report["gmacs"], 4), **latency}  # fmt: skip


@torch.no_grad()
def same_answers(full: torch.nn.Module, expert_file: Path) -> dict:
    """Run both on the expert's test images: the expert's logits against the full model's restricted
    to the expert's classes (eq. 3), answer by answer."""
    from nhlcli.data import model_loader
    from nhlcli.evaluation import ClassSubset
    from nhlcli.model.loading import open_model

    expert = open_model(expert_file)
    restricted = ClassSubset(full, full.tree.select(list(expert.tree.classes)).subtree(full.tree)).eval()
    expert.eval()
    loader = model_loader(expert, "emoji", "val", batch_size=64, workers=0)
    images = agree = 0
    worst = 0.0
    for x, _ in loader:
        a, b = restricted(x), expert(x)
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        worst = max(worst, float((a.log_softmax(1) - b.log_softmax(1)).abs().max()))
        images += x.shape[0]
    return {"test_images": images, "same_answers": agree, "max_log_prob_diff": worst}


def experts(args: argparse.Namespace) -> dict:
    from nhlcli.experts import cutout_with_cost, save_expert
    from nhlcli.model.loading import open_model

    torch.set_num_threads(args.threads)
    full = open_model(args.model)
    rows = []
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, names in expert_sets(full.tree, args.seed):
            start = time.perf_counter()
            cut, full_cost, expert_cost = cutout_with_cost(args.model, names, (1, 64), threads=args.threads)
            out = Path(tmp) / "expert.safetensors"
            save_expert(cut, out, cost=expert_cost)
            seconds = time.perf_counter() - start
            row = {"kept": label, **cost_row(expert_cost), "file_mb": round(out.stat().st_size / 1e6, 1),
                   "cut_and_cost_s": round(seconds, 1), **same_answers(full, out)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.base:
        from nhlcli.profiling import count_macs, measure_latency

        base_model = open_model(args.base)
        base = {"classes": len(base_model.classes),
                "params_m": round(sum(p.numel() for p in base_model.parameters()) / 1e6, 2),
                "gmacs": round(count_macs(base_model) / 1e9, 4),
                "file_mb": round(Path(args.base).stat().st_size / 1e6, 1),
                **{f"batch{b}_ms": measure_latency(base_model, b)["median_ms"] for b in (1, 64)}}  # fmt: skip
    full_row = {**cost_row(full_cost), "file_mb": round(Path(args.model).stat().st_size / 1e6, 1)}
    return {"full": full_row, "base": base, "experts": rows, "threads": args.threads}


def gates(args: argparse.Namespace) -> dict:
    from nhlcli.evaluation import evaluate_file
    from nhlcli.gates.workflow import fit_file

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gated = Path(tmp) / "gated.safetensors"
        start = time.perf_counter()
        fit_file(args.model, gated, "emoji", workers=args.workers)
        fit_s = time.perf_counter() - start
        for k in args.top_k:
            report = evaluate_file(gated, "emoji", route_top_k=k, workers=args.workers, part=args.part)
            rows.append(
                {"route_top_k": k, **{key: value for key, value in report.items() if key != "per_class"}}
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"fit_seconds": round(fit_s, 1), "routes": rows}


EXPERT_COLUMNS = [
    ["model", "model", "{}"], ["kept", "which", "{}"], ["classes", "classes", "{:,}"],
    ["params", "params_m", "{:.2f}M"], ["GMACs", "gmacs", "{:.4f}"],
    ["latency batch 1 (ms)", "ms_b1", "{:,.1f}"], ["latency batch 64 (ms)", "ms_b64", "{:,.1f}"],
    ["file", "file_mb", "{:.1f} MB"], ["same answers", "same_answers", "{:,}"],
    ["test images", "answers", "{:,}"],
]  # fmt: skip
ROUTE_COLUMNS = [
    ["route top-K", "route_top_k", "{}"], ["top-1 routed", "top1_routed", "{:.2f}%"],
    ["top-1 ungated", "top1_ungated", "{:.2f}%"], ["avg GMACs", "gmacs", "{:.4f}"],
    ["fewer GMACs", "fewer_gmacs_pct", "{:.1f}%"], ["img/s routed", "images_per_s_routed", "{:.0f}"],
    ["img/s ungated", "images_per_s_ungated", "{:.0f}"], ["speed-up", "speedup", "x{:.2f}"],
]  # fmt: skip


def _figures(row: dict) -> dict:
    """A cost row's figures under the results files' keys."""
    return {"classes": row["classes"], "params_m": row["params_m"], "gmacs": row["gmacs"],
            "ms_b1": row["batch1_ms"], "ms_b64": row["batch64_ms"], "file_mb": row["file_mb"]}  # fmt: skip


def store_experts(name: str, report: dict, args: argparse.Namespace) -> None:
    """The experts table as ``benchmarks/results/<name>.json`` for report.py: the base network,
    the full model, then each expert with how many of its test images it answered as the full
    model restricted to its classes did."""
    runs = [{"model": "flat", **_figures(report["base"])}] if report["base"] else []
    runs.append({"model": "full", **_figures(report["full"])})
    runs += [
        {"model": "expert", "which": r["kept"], **_figures(r), "same_answers": r["same_answers"],
         "answers": r["test_images"], "max_logprob_diff": r["max_log_prob_diff"],
         "cut_and_cost_s": r["cut_and_cost_s"]}
        for r in report["experts"]
    ]  # fmt: skip
    labels = {"flat": "flat ResNet18 (base network)", "full": f"full NHL ({args.model.name})"}
    write_results(
        name,
        title=f"Experts cut from the trained 1,861-class model {args.model.name}",
        command=invoked_command(),
        setup={"data": "emoji", "tree": "emoji-unicode-l3", "test_images_per_class": 4,
               "experts_seed": args.seed, "latency": f"median, {args.threads} threads",
               "arms": {m: {"label": labels.get(m, m)} for m in dict.fromkeys(r["model"] for r in runs)},
               "table": {"columns": EXPERT_COLUMNS}},
        runs=runs,
    )  # fmt: skip


def store_gates(name: str, report: dict, args: argparse.Namespace) -> None:
    """The routing table as ``benchmarks/results/<name>.json`` for report.py: each route width
    against the ungated model on the same images."""
    runs = [
        {"model": "routed", "route_top_k": r["route_top_k"], "top1_routed": round(100 * r["top1"], 2),
         "top1_ungated": round(100 * r["ungated_top1"], 2), "gmacs": round(r["gmacs"], 4),
         "fewer_gmacs_pct": r["gmacs_reduction_percent"], "images_per_s_routed": round(r["images_per_s"], 1),
         "images_per_s_ungated": round(r["ungated_images_per_s"], 1), "speedup": round(r["speedup"], 3),
         "images": r["images"]}
        for r in report["routes"]
    ]  # fmt: skip
    write_results(
        name,
        title=f"Routing the 1,861-class model {args.model.name} to its top-K groups, exits closed",
        command=invoked_command(),
        setup={"data": "emoji", "tree": "emoji-unicode-l3", "gate": "routing over the 9 groups",
               "fit_on": "train", "fit_seconds": report["fit_seconds"],
               "measured_on": f"test part {args.part}", "threads": args.threads,
               "table": {"columns": ROUTE_COLUMNS}},
        runs=runs,
    )  # fmt: skip


def store_train_run(name: str, report: dict) -> None:
    """One equal-budget run as a record of ``benchmarks/results/<name>.json``, for report.py."""
    run = {
        "model": report["variant"],
        "seed": report["seed"],
        "top1": round(100 * report["test_top1"], 2),
        "top5": round(100 * report["test_top5"], 2),
        "epochs": report["epochs"],
        "images_seen": report["train_images"],
        "images_per_s": report["images_per_s"],
        "peak_mb_per_image": report["peak_rss_mb_per_image"],
        "params_m": report["params_m"],
        "gmacs": report["gmacs"],
    }
    labels = {"flat": "flat ResNet18"}
    add_runs(
        name,
        [run],
        title="All 1,861 emoji classes at an equal training budget",
        command=invoked_command(),
        setup={
            "data": "emoji",
            "classes": "all (1,861)",
            "tree": "emoji-unicode-l3",
            "test_images": report["test_images"],
            "evaluated_on": "test",
            "input_px": 32,
            "budget_minutes": report["budget_minutes"],
            "batch": RECIPE["batch_size"],
            "arms": {report["variant"]: {"label": labels.get(report["variant"], f"`{report['variant']}`")}},
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("--variant", default="nhl-lean", help="nhl, nhl-lean or flat")
    t.add_argument("--minutes", type=float, default=40.0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps-per-epoch", type=int, default=None, help="short epochs for slow models")
    t.add_argument("--max-epochs", type=int, default=200)
    t.add_argument("--val-part", default="1/32", help="the part of the test split each epoch validates on")
    t.add_argument("--eval-threads", type=int, default=2, help="threads for the final whole-test evaluation")
    t.add_argument("--keep", type=Path, help="train on the classes this file lists (ids, one a line) only")
    t.add_argument("-o", "--output", type=Path, required=True)
    t.add_argument("--results", help="add the run to benchmarks/results/NAME.json (replacing its own seed's)")
    e = sub.add_parser("experts")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--base", type=Path, help="the flat model on the same trunk, for the base network's cost")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--results", help="store the table as benchmarks/results/NAME.json")
    g = sub.add_parser("gates")
    g.add_argument("--model", type=Path, required=True)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--top-k", type=int, nargs="+", default=[1, 3])
    g.add_argument("--part", default="1/2", help="the part of the test split to measure on (i/k)")
    g.add_argument("--results", help="store the table as benchmarks/results/NAME.json")
    args = parser.parse_args()
    report = {"train": train_one, "experts": experts, "gates": gates}[args.what](args)
    if args.what == "train" and args.results:
        store_train_run(args.results, report)
    elif args.results:
        {"experts": store_experts, "gates": store_gates}[args.what](args.results, report, args)
    print(json.dumps({"torch": torch.__version__, "argv": sys.argv[1:], **report}), flush=True)


if __name__ == "__main__":
    main()
