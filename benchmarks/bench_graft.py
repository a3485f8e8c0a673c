"""Grafting new classes onto a trained NHL against training on all of them (issue 39).

``emoji``: the default NHL (``nhl-scale``) trained for ``--minutes`` on the 1,861 emoji classes
minus a held-out set (one whole subgroup, ``--subgroup``, plus ``--random`` classes drawn with
``--seed``), then ``nhl graft`` of the held-out set (placed by Unicode's tree), against the same
model trained on all classes for the same minutes (``bench_emoji_scale.py train``: the demo's
recipe at batch 64, 2 threads, images drawn in the training process). On the whole test split:
top-1 of the grafted classes and of the old ones (before the graft, after it, and in the full
retrain), the training times side by side, and how many test images' old logits differ from the
parent's (0: bit-identical).

``emoji-holdout``: the graft's learning rate and epochs chosen on a hold-out of the training
images (``--holdout``), grafting onto the same parent: the test split is never looked at.

``fm``: per seed, ``nhl train`` (the demo's recipe, ``--epochs``) of the default NHL on the 7
Fashion-MNIST classes that are not footwear, of the same NHL on all 10, and of flat ResNet18 on
the 7; then ``nhl graft`` of the footwear classes onto the 7-class NHL, and, for the same steps
on the same images, the flat network fine-tuned whole with a new 10-class head (its 7 old rows
kept). On the test split: top-1 of new and old classes, and the share of old-class images whose
answer changed (to anything, and to another old class).

    python benchmarks/bench_graft.py emoji --minutes 10 --results emoji1861-graft
    python benchmarks/bench_graft.py emoji-holdout --results emoji1861-graft-holdout
    python benchmarks/bench_graft.py fm --epochs 2 --seeds 0,1,2 --results fm-graft

Models go to ``--workdir`` and are not retrained when there already.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from evidence import difference
from results_store import invoked_command, write_results

HERE = Path(__file__).resolve().parent
FOOTWEAR = ["sandal", "sneaker", "ankle-boot"]


def run_json(command: list[str]) -> tuple[dict, float]:
    """Run a command that prints one JSON object last; that object and the wall seconds."""
    print("+", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    text = done.stdout.strip()
    start = text.rfind("\n{") + 1 if not text.startswith("{") else 0
    return json.loads(text[start:]), wall


def run_graft(
    parent: Path, data: str, classes: str, grown: Path, epochs: int, seed: int, options: list[str]
) -> dict:
    """``nhl graft`` as a user runs it: its JSON record and the process's wall seconds."""
    record, wall = run_json(
        [
            sys.executable,
            "-m",
            "nhlcli",
            "graft",
            str(parent),
            "--data",
            data,
            "--classes",
            classes,
            "-o",
            str(grown),
            "--epochs",
            str(epochs),
            "--seed",
            str(seed),
            *options,
            "--no-measure",
            "--json",
        ]
    )
    return {**record, "wall_seconds": round(wall, 1)}


def cached(path: Path, info: Path, make) -> dict:  # noqa: ANN001
    """``make()``'s record, kept beside its model so a rerun reuses both."""
    if path.exists() and info.exists():
        return json.loads(info.read_text())
    record = make()
    info.write_text(json.dumps(record))
    return record


# --------------------------------------------------------------------------- measuring
def answers(models: dict[str, torch.nn.Module], loader, order: list[str]) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Each model's predicted class (an index into ``order``) on every image, and the targets."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    out["target"], out["old_logits_differ"] = [], []
    columns = {name: torch.tensor([order.index(c) for c in m.tree.classes]) for name, m in models.items()}
    with torch.no_grad():
        for images, targets in loader:
            logits = {}
            for name, model in models.items():
                logits[name] = model(images)
                out[name].append(columns[name][logits[name].argmax(1)])
            out["target"].append(targets)
            if "parent" in logits and "graft" in logits:
                old = logits["parent"].shape[1]
                out["old_logits_differ"].append((logits["graft"][:, :old] != logits["parent"]).any(1))
    return {k: torch.cat(v) for k, v in out.items() if v}


def figures(found: dict[str, torch.Tensor], old_count: int) -> dict:
    """Top-1 on new and old classes per model; for the grown models, how old answers moved."""
    target = found["target"]
    new = target >= old_count
    row: dict = {"images_new": int(new.sum()), "images_old": int((~new).sum())}
    for name, pred in found.items():
        if name in ("target", "old_logits_differ"):
            continue
        right = pred == target
        row[f"{name}_new"] = float(right[new].double().mean()) if name not in ("parent", "flat7") else None
        row[f"{name}_old"] = float(right[~new].double().mean())
    for grown, before in (("graft", "parent"), ("flat_ft", "flat7")):
        if grown in found and before in found:
            moved = found[grown][~new] != found[before][~new]
            to_old = moved & (found[grown][~new] < old_count)
            row[f"{grown}_changed"] = float(moved.double().mean())
            row[f"{grown}_changed_to_old"] = float(to_old.double().mean())
    if "old_logits_differ" in found:
        row["old_logits_differ_images"] = int(found["old_logits_differ"].sum())
    return row


# --------------------------------------------------------------------------- emoji
def held_out(tree, subgroup: str, count: int, seed: int) -> list[str]:  # noqa: ANN001
    """One whole subgroup and ``count`` random classes from the rest, in class order."""
    group = set(tree.leaves(tree.resolve(subgroup)))
    rest = [c for c in tree.classes if c not in group]
    chosen = group | set(random.Random(seed).sample(rest, count))
    return [c for c in tree.classes if c in chosen]


def emoji(args: argparse.Namespace) -> dict:
    from nhlcli.data import model_loader
    from nhlcli.model.loading import open_model
    from nhlcli.taxonomy import resolve_tree

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    tree = resolve_tree("emoji-unicode-l3")
    new = held_out(tree, args.subgroup, args.random, args.seed)
    (work / "new.txt").write_text("\n".join(new) + "\n")
    (work / "keep.txt").write_text("\n".join(c for c in tree.classes if c not in set(new)) + "\n")
    scale = [
        sys.executable,
        str(HERE / "bench_emoji_scale.py"),
        "train",
        "--variant",
        "nhl-scale",
        "--minutes",
        str(args.minutes),
        "--threads",
        "2",
        "--seed",
        str(args.seed),
    ]
    parent, full, grown = work / "parent.safetensors", work / "full.safetensors", work / "grown.safetensors"
    parent_run = cached(
        parent,
        work / "parent.json",
        lambda: run_json([*scale, "--keep", str(work / "keep.txt"), "-o", str(parent)])[0],
    )

    def graft() -> dict:
        options = ["--tree", "emoji-unicode-l3", "--workers", "0"]
        return run_graft(
            parent, "emoji", f"@{work / 'new.txt'}", grown, args.graft_epochs, args.seed, options
        )

    graft_run = cached(grown, work / "graft.json", graft)
    full_run = cached(full, work / "full.json", lambda: run_json([*scale, "-o", str(full)])[0])
    torch.set_num_threads(2)
    models = {"parent": open_model(parent), "graft": open_model(grown), "full": open_model(full)}
    order = models["graft"].tree.classes
    loader = model_loader(models["graft"], "emoji", "val", batch_size=128, workers=0)
    row = figures(answers(models, loader, order), len(order) - len(new))
    row.update(
        {
            "model": "nhl-scale",
            "seed": args.seed,
            "new_classes": len(new),
            "old_classes": len(order) - len(new),
            "subgroup": args.subgroup,
            "random_classes": args.random,
            "parent_train_seconds": parent_run["train_seconds"],
            "parent_epochs": parent_run["epochs"],
            "full_train_seconds": full_run["train_seconds"],
            "full_epochs": full_run["epochs"],
            "graft_train_seconds": graft_run["train_seconds"],
            "graft_wall_seconds": graft_run["wall_seconds"],
            "graft_epochs": args.graft_epochs,
            "graft_images_new": graft_run["images"]["new"],
            "graft_new_groups": len(graft_run["new_groups"]),
            "time_share": graft_run["train_seconds"] / full_run["train_seconds"],
        }
    )
    row["gap_new_points"] = 100 * (row["graft_new"] - row["full_new"])
    row["classes_text"] = f"{len(new)} / {len(order) - len(new)}"
    return row


def emoji_holdout(args: argparse.Namespace) -> list[dict]:
    """The graft's learning rate and epochs, chosen on a hold-out of the training images: the
    emoji parent above grafted with ``--holdout`` (its new classes' held-out images are new to it;
    its old ones it trained on, which every setting shares), for each setting."""
    from nhlcli.graft import GraftRequest, graft_model
    from nhlcli.model.loading import open_model

    torch.set_num_threads(2)
    classes = (args.workdir / "new.txt").read_text().split()
    rows = []
    for setting in args.settings:
        lr, epochs = (float(v) for v in setting.split("x"))
        request = GraftRequest(
            data="emoji",
            classes=classes,
            reference="emoji-unicode-l3",
            workers=0,
            holdout=args.holdout,
            lr=lr,
            epochs=int(epochs),
            seed=args.seed,
        )
        result = graft_model(open_model(args.workdir / "parent.safetensors"), request)
        measured = result.record["measured"]
        seconds = result.record["train_seconds"]
        row = {
            "model": "nhl-scale",
            "lr": lr,
            "epochs": int(epochs),
            "seconds": seconds,
            **{
                k: measured[k]
                for k in (
                    "images_new",
                    "images_old",
                    "top1_new",
                    "top1_old_before",
                    "top1_old_after",
                    "old_changed",
                )
            },
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------- Fashion-MNIST
def train_fm(name: str, options: list[str], seed: int, args: argparse.Namespace) -> tuple[Path, float]:
    from nhlcli.demo import recipe_args

    out = args.workdir / f"{name}-e{args.epochs}-s{seed}.safetensors"
    info = out.with_suffix(".json")

    def make() -> dict:
        command = [
            sys.executable,
            "-m",
            "nhlcli",
            "train",
            "--data",
            "fashion-mnist",
            *options,
            *recipe_args(args.epochs),
            "--seed",
            str(seed),
            "--workers",
            str(args.workers),
            "-o",
            str(out),
        ]
        print("+", " ".join(command[2:]), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return {"wall_seconds": round(time.perf_counter() - started, 1)}

    return out, cached(out, info, make)["wall_seconds"]


def fine_tune_flat(flat7: Path, grown: Path, graft_record: dict, out: Path, seed: int) -> float:
    """Flat ResNet18 grown to 10 classes (old rows kept, new rows fresh) and fine-tuned whole on
    the graft's images for the graft's steps and recipe; returns the training seconds."""
    from torch.utils.data import DataLoader

    from nhlcli.data.datasets import dataset_for_tree
    from nhlcli.data.loaders import build_transform
    from nhlcli.graft.run import NewAndOldSampler
    from nhlcli.model.files import save_model
    from nhlcli.model.loading import open_model
    from nhlcli.model.nhl import FlatModel
    from nhlcli.training.loop import seed_everything

    old, tree = open_model(flat7), open_model(grown).tree
    seed_everything(seed)
    model = FlatModel(tree, old.trunk_config, old.input_config)
    state = old.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("model.fc."):
            value[: old.tree.num_classes] = state[key]
            state[key] = value
    model.load_state_dict(state)
    recipe = graft_record["recipe"]
    inp = model.input_config
    transform = build_transform(
        inp.size[1],
        is_training=True,
        augment=recipe["augment"],
        scale=tuple(recipe["crop_scale"]) if recipe["crop_scale"] else None,
        mean=inp.mean,
        std=inp.std,
        in_chans=inp.size[0],
    )
    data = dataset_for_tree(
        "fashion-mnist", "train", tree, transform, subset=True, mode="L", image_size=inp.size[1]
    )
    targets = torch.tensor(data.targets)
    new_rows = torch.nonzero(targets >= old.tree.num_classes).flatten().numpy()
    old_rows = torch.nonzero(targets < old.tree.num_classes).flatten().numpy()
    sampler = NewAndOldSampler(new_rows, old_rows, graft_record["images"]["old_per_epoch"], seed)
    loader = DataLoader(data, batch_size=recipe["batch_size"], sampler=sampler, num_workers=2, drop_last=True)
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    optimizer = create_optimizer_v2(model, opt="adamw", lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = graft_record["steps"]
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=steps,
        warmup_t=int(recipe["warmup_epochs"] * len(loader)),
        warmup_lr_init=recipe["lr"] * 0.01,
        lr_min=recipe["lr"] * 1e-3,
        t_in_epochs=False,
    )
    model.train()
    started, step, epoch = time.perf_counter(), 0, 0
    while step < steps:
        sampler.set_epoch(epoch)
        for images, labels in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe["amp"]):
                loss = torch.nn.functional.cross_entropy(
                    model(images).float(), labels, label_smoothing=recipe["label_smoothing"]
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            if step >= steps:
                break
        epoch += 1
    seconds = time.perf_counter() - started
    save_model(model.eval(), out)
    return seconds


def fm(args: argparse.Namespace) -> list[dict]:
    from nhlcli.data import model_loader
    from nhlcli.model.loading import open_model
    from nhlcli.taxonomy import resolve_tree

    args.workdir.mkdir(parents=True, exist_ok=True)
    tree = resolve_tree("fashion-mnist-wordnet-l2")
    old = [c for c in tree.classes if c not in FOOTWEAR]
    rows = []
    for seed in args.seeds:
        parent, parent_s = train_fm("nhl7", ["--classes", ",".join(old)], seed, args)
        full, full_s = train_fm("nhl10", [], seed, args)
        flat7, flat_s = train_fm("flat7", ["--classes", ",".join(old), "--flat"], seed, args)
        grown = args.workdir / f"graft-e{args.epochs}-s{seed}.safetensors"

        def graft(parent: Path = parent, grown: Path = grown, seed: int = seed) -> dict:
            options = ["--workers", str(args.workers)]
            return run_graft(
                parent, "fashion-mnist", ",".join(FOOTWEAR), grown, args.graft_epochs, seed, options
            )

        graft_run = cached(grown, grown.with_suffix(".json"), graft)
        tuned = args.workdir / f"flat-ft-e{args.epochs}-s{seed}.safetensors"
        tuned_s = cached(
            tuned,
            tuned.with_suffix(".json"),
            lambda: {"seconds": round(fine_tune_flat(flat7, grown, graft_run, tuned, seed), 1)},  # noqa: B023
        )
        torch.set_num_threads(2)
        models = {
            name: open_model(path)
            for name, path in (
                ("parent", parent),
                ("graft", grown),
                ("full", full),
                ("flat7", flat7),
                ("flat_ft", tuned),
            )
        }
        order = models["graft"].tree.classes
        loader = model_loader(models["graft"], "fashion-mnist", "val", batch_size=256, workers=args.workers)
        row = figures(answers(models, loader, order), len(old))
        row.update(
            {
                "model": "nhl-scale",
                "seed": seed,
                "epochs": args.epochs,
                "graft_epochs": args.graft_epochs,
                "parent_train_wall": parent_s,
                "full_train_wall": full_s,
                "flat7_train_wall": flat_s,
                "graft_train_seconds": graft_run["train_seconds"],
                "graft_wall_seconds": graft_run["wall_seconds"],
                "graft_steps": graft_run["steps"],
                "flat_ft_seconds": tuned_s["seconds"],
            }
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def fm_summary(rows: list[dict]) -> dict:
    def series(key: str) -> list[float]:
        return [100 * r[key] for r in rows]

    out = {}
    for key in (
        "graft_new",
        "full_new",
        "flat_ft_new",
        "parent_old",
        "graft_old",
        "full_old",
        "flat7_old",
        "flat_ft_old",
        "graft_changed",
        "graft_changed_to_old",
        "flat_ft_changed",
        "flat_ft_changed_to_old",
    ):
        values = series(key)
        out[key] = {
            "mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
        }
    gap = difference(series("full_new"), series("graft_new"), paired=True)
    out["graft_minus_full_new"] = {"diff": gap["diff"], "interval": gap["interval"]}
    return out


PCT = "{:.2%}"
EMOJI_COLUMNS = [
    ["new / old classes", "classes_text", "{}"],
    ["new top-1: graft", "graft_new", PCT],
    ["new top-1: retrain", "full_new", PCT],
    ["gap (points)", "gap_new_points", "{:+.1f}"],
    ["old top-1: before", "parent_old", PCT],
    ["old top-1: after graft", "graft_old", PCT],
    ["old top-1: retrain", "full_old", PCT],
    ["old images answering a new class", "graft_changed", PCT],
    ["test images whose old logits differ", "old_logits_differ_images", "{}"],
    ["graft training", "graft_train_seconds", "{:.0f} s"],
    ["retrain training", "full_train_seconds", "{:.0f} s"],
    ["graft / retrain time", "time_share", "{:.1%}"],
]
HOLDOUT_COLUMNS = [
    ["learning rate", "lr", "{:g}"],
    ["epochs", "epochs", "{}"],
    ["new top-1", "top1_new", PCT],
    ["new images", "images_new", "{}"],
    ["old top-1 before", "top1_old_before", PCT],
    ["old top-1 after", "top1_old_after", PCT],
    ["old images answering a new class", "old_changed", PCT],
    ["graft training", "seconds", "{:.0f} s"],
]
FM_COLUMNS = [
    ["seed", "seed", "{}"],
    ["footwear top-1: graft", "graft_new", PCT],
    ["footwear: 10-class NHL", "full_new", PCT],
    ["footwear: flat fine-tuned", "flat_ft_new", PCT],
    ["old top-1: 7-class NHL", "parent_old", PCT],
    ["old: after graft", "graft_old", PCT],
    ["old: 10-class NHL", "full_old", PCT],
    ["old: flat 7-class", "flat7_old", PCT],
    ["old: flat fine-tuned", "flat_ft_old", PCT],
    ["old images changed: graft", "graft_changed", PCT],
    ["of which to an old class", "graft_changed_to_old", PCT],
    ["old images changed: flat fine-tuned", "flat_ft_changed", PCT],
    ["of which to an old class ", "flat_ft_changed_to_old", PCT],
    ["test images whose old logits differ", "old_logits_differ_images", "{}"],
    ["graft training", "graft_train_seconds", "{:.0f} s"],
    ["10-class NHL training (wall)", "full_train_wall", "{:.0f} s"],
    ["flat fine-tune", "flat_ft_seconds", "{:.0f} s"],
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("emoji")
    e.add_argument("--minutes", type=float, default=10.0)
    e.add_argument("--subgroup", default="animal-marine")
    e.add_argument("--random", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--graft-epochs", type=int, default=15)
    e.add_argument("--workdir", type=Path, default=Path("graft-emoji"))
    e.add_argument("--results", help="store the figures as benchmarks/results/NAME.json")
    h = sub.add_parser("emoji-holdout")
    h.add_argument(
        "--settings",
        nargs="+",
        default=["0.003x10", "0.01x10", "0.03x10", "0.01x20", "0.03x15"],
        help="learning rate x epochs",
    )
    h.add_argument("--holdout", type=float, default=0.2)
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--workdir", type=Path, default=Path("graft-emoji"))
    h.add_argument("--results", help="store the figures as benchmarks/results/NAME.json")
    f = sub.add_parser("fm")
    f.add_argument("--epochs", type=int, default=2)
    f.add_argument("--graft-epochs", type=int, default=2)
    f.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    f.add_argument("--workers", type=int, default=2)
    f.add_argument("--workdir", type=Path, default=Path("graft-fm"))
    f.add_argument("--results", help="store the figures as benchmarks/results/NAME.json")
    args = parser.parse_args()
    if args.what == "emoji-holdout":
        rows = emoji_holdout(args)
        title = "The graft's learning rate and epochs on a training hold-out"
        setup = {
            "data": "emoji",
            "evaluated_on": f"a {args.holdout:.0%} hold-out of the training images",
            "table": {"columns": HOLDOUT_COLUMNS},
        }
    elif args.what == "emoji":
        rows = [emoji(args)]
        print(json.dumps(rows[0]), flush=True)
        title = "Grafting classes onto a 1,861-class emoji NHL against retraining"
        setup = {
            "data": "emoji",
            "tree": "emoji-unicode-l3",
            "evaluated_on": "test",
            "budget_minutes": args.minutes,
            "table": {"columns": EMOJI_COLUMNS},
        }
    else:
        rows = fm(args)
        summary = fm_summary(rows)
        print(json.dumps(summary), flush=True)
        title = "Grafting footwear onto a 7-class Fashion-MNIST NHL"
        setup = {
            "data": "fashion-mnist",
            "evaluated_on": "test",
            "epochs": args.epochs,
            "graft_epochs": args.graft_epochs,
            "summary": summary,
            "table": {"columns": FM_COLUMNS},
        }
    if args.results:
        write_results(args.results, title=title, command=invoked_command(), setup=setup, runs=rows)


if __name__ == "__main__":
    main()
