"""Cost at scale: the default NHL against its base network as ``nhl train`` runs them, side by side.

For each setting it builds the base network (flat timm classifier) and NHL variants over one tree,
then times full training steps (forward, loss, backward, AdamW step) on one random batch the way
``nhl train`` runs them: the trunk channels-last, bf16 autocast where the CPU has native bf16 (and
no convolution on which oneDNN's bf16 gradient is wrong), float32 otherwise. Models alternate
step by step so that machine noise hits them alike. It prints, per model: training images/s and
the ratio to the base network, GMACs per image (``torch.utils.flop_counter`` through
``nhlcli.profiling.count_macs``) and the ratio, the bytes autograd keeps per image for backward
(the training memory that grows with the batch) and the ratio, parameters, and the GMACs of
experts cut from it against the base network's.

    python benchmarks/bench_scale.py                       # both settings below
    python benchmarks/bench_scale.py --setting emoji       # 1,861 classes, ResNet18, 32 px, batch 64
    python benchmarks/bench_scale.py --setting imagenet    # 1,000 classes, ResNet50/ConvNeXtV2-tiny, 224 px
    python benchmarks/bench_scale.py --results             # also store benchmarks/results/*-cost.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from results_store import machine, write_results

from nhlcli.devices import bf16_unsafe_convolutions, cpu_has_fast_bf16
from nhlcli.experts import count_macs, cut_model
from nhlcli.model.nhl import with_input_size
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.taxonomy import resolve_tree
from nhlcli.taxonomy.classes import load_class_list

CAT_IDS = range(281, 286)  # ImageNet's tabby, tiger cat, Persian, Siamese, Egyptian cat


@dataclass(frozen=True)
class Setting:
    tree: str
    backbones: tuple[str, ...]
    size: int
    batch: int
    results: str  # the results file it stores (benchmarks/results/<results>.json)
    in_chans: int = 3


SETTINGS = {
    "emoji": Setting("emoji-unicode-l3", ("resnet18",), 32, 64, "emoji1861-cost"),
    "imagenet": Setting(
        "imagenet-1k-wordnet-l3", ("resnet50", "convnextv2_tiny"), 224, 16, "imagenet1000-cost"
    ),
}
LABELS = {"flat": "base", "nhl-scale": "`nhl-scale`", "nhl-lean": "`nhl-lean`"}


def saved_bytes_per_image(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> float:
    """Bytes autograd keeps for backward per image in one training forward (unique storages,
    parameters excluded): the part of training memory that grows with the batch."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr():
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(bf16):
        out = model(x)
    del out
    return sum(n for ptr, n in seen.items() if ptr not in params) / x.shape[0]


def autocast(bf16: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y, bf16: bool) -> float:
    model.train()
    start = time.perf_counter()
    with autocast(bf16):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def experts_of(setting: Setting, tree) -> dict[str, list[str]]:
    """The experts whose cost is reported: 10 random classes and a 10-class subgroup (emoji); the
    5 cats and 20 random classes (ImageNet)."""
    rng = random.Random(0)
    leaves = tree.level(tree.levels)
    if setting.tree.startswith("emoji"):
        subgroup = next(n for n in tree.level(tree.levels - 1) if len(tree.leaves(n)) >= 10)
        return {"10 random": rng.sample(leaves, 10), "10 of a subgroup": tree.leaves(subgroup)[:10]}
    entries = load_class_list("imagenet-1k")
    return {"cat-5": [entries[i].id for i in CAT_IDS], "20 random": rng.sample(leaves, 20)}


def run_setting(name: str, setting: Setting, variants: list[str], steps: int) -> list[dict]:
    tree = resolve_tree(setting.tree)
    rows = []
    for backbone in setting.backbones:
        torch.manual_seed(0)
        models = {}
        for variant in ["flat", *variants]:
            model = create_model(tree, variant, TrunkConfig(backbone, None, setting.in_chans))
            model.input_config = with_input_size(model.input_config, setting.size)
            trunk = getattr(model, "trunk", None) or model.model
            trunk.to(memory_format=torch.channels_last)  # as nhl train lays it out
            models[variant] = model
        shape = (setting.in_chans, setting.size, setting.size)
        x = torch.randn(setting.batch, *shape).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, tree.num_classes, (setting.batch,))
        bf16 = {v: cpu_has_fast_bf16() and not bf16_unsafe_convolutions(m, shape) for v, m in models.items()}
        optimizers = {v: torch.optim.AdamW(m.parameters(), 1e-3) for v, m in models.items()}
        times: dict[str, list[float]] = {v: [] for v in models}
        for step in range(steps + 1):  # the first step of each warms up
            for v, m in models.items():
                t = train_step(m, optimizers[v], x, y, bf16[v])
                if step:
                    times[v].append(t)
        base: dict = {}
        for v, m in models.items():
            m.eval()
            macs = count_macs(m, shape) / 1e9
            row = {
                "setting": name,
                "backbone": backbone,
                "classes": tree.num_classes,
                "variant": v,
                "params_m": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
                "gmacs": round(macs, 4),
                "images_per_s": round(setting.batch / statistics.median(times[v]), 1),
                "step_ms_spread": [round(min(times[v]) * 1e3), round(max(times[v]) * 1e3)],
                "train_mb_per_image": round(saved_bytes_per_image(m, x[:8], bf16[v]) / 2**20, 2),
                "bf16": bf16[v],
            }
            if v == "flat":
                base = row
            else:
                for label, classes in experts_of(setting, tree).items():
                    row[f"expert {label} gmacs"] = round(count_macs(cut_model(m, classes), shape) / 1e9, 4)
                    row[f"expert {label} x_base"] = round(row[f"expert {label} gmacs"] / base["gmacs"], 2)
            for key in ("images_per_s", "gmacs", "train_mb_per_image"):
                row[f"{key} x_base"] = round(row[key] / base[key], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del models, optimizers
    return rows


def store(name: str, setting: Setting, rows: list[dict], steps: int) -> None:
    """The rows as ``benchmarks/results/<setting.results>.json``, the records report.py reads."""
    runs = []
    for row in rows:
        record = {
            "model": row["variant"],
            "backbone": row["backbone"],
            "params_m": row["params_m"],
            "gmacs": row["gmacs"],
            "train_images_per_s": row["images_per_s"],
            "step_ms_spread": row["step_ms_spread"],
            "backward_mb_per_image": row["train_mb_per_image"],
        }
        for key, value in row.items():
            if key.startswith("expert ") and key.endswith(" x_base"):
                which = key[len("expert ") : -len(" x_base")].replace(" ", "_").replace("-", "")
                record[f"expert_{which}_x_base"] = value
        runs.append(record)
    arms = {v: {"label": LABELS.get(v, f"`{v}`")} for v in dict.fromkeys(r["model"] for r in runs)}
    write_results(
        setting.results,
        title=f"{rows[0]['classes']:,} classes at {setting.size} px: training cost against the base network",
        command=f"python benchmarks/bench_scale.py --setting {name} --results",
        setup={"tree": setting.tree, "input_px": setting.size, "batch": setting.batch,
               "steps": f"median of {steps} after a warm-up, models alternating",
               "arms": arms},
        runs=runs,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--setting", choices=[*SETTINGS, "all"], default="all")
    parser.add_argument("--variants", default="nhl-scale,nhl-lean", help="NHL variants timed beside flat")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", action="store_true", help="store each setting's rows for report.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"machine": machine(), "steps": args.steps}), flush=True)
    names = list(SETTINGS) if args.setting == "all" else [args.setting]
    for name in names:
        rows = run_setting(name, SETTINGS[name], args.variants.split(","), args.steps)
        if args.results:
            store(name, SETTINGS[name], rows, args.steps)


if __name__ == "__main__":
    main()
