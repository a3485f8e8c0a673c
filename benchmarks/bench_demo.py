"""The first run's promise: ``nhl demo`` end to end, timed as a user would time it.

Runs ``nhl demo --json`` in a fresh work directory as a subprocess (Python start-up, imports,
WordNet, training, evaluation, the cutout and its cost report all included) and prints the
process's wall time beside the demo's own figures and the machine it ran on. With
``--workers`` it first times the real training loop on Fashion-MNIST with 0, 1 and 2 data
loading processes, alternating them so that machine noise hits all alike (the evidence for
``nhlcli.data.default_workers``).

    python benchmarks/bench_demo.py [--data emoji] [--workers] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine() -> dict[str, object]:
    """CPU model, the flags that matter for training speed here, and the core count."""
    info: dict[str, object] = {"cores": os.cpu_count()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    info["model"] = fields.get("Model name", "").strip()
    flags = set(fields.get("Flags", "").split())
    info["flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    return info


def time_demo(workdir: Path, data: str) -> dict[str, object]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "nhlcli", "demo", "--data", data, "--workdir", str(workdir), "--json"],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"nhl demo failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    summary = json.loads(proc.stdout)
    return {"process_wall_s": round(wall, 1), "demo": summary}


def time_workers(steps: int, rounds: int) -> dict[int, list[float]]:
    """Images/s of ``steps`` training steps of the demo's recipe for each worker count."""
    import torch

    from nhlcli.demo import RECIPE, demo_tree
    from nhlcli.model import DEFAULT_VARIANT
    from nhlcli.model.nhl import with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.training.loop import TrainConfig, train

    tree, _ = demo_tree()
    rates: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for _ in range(rounds):
        for workers in rates:
            torch.manual_seed(0)
            model = create_model(tree, DEFAULT_VARIANT, TrunkConfig(RECIPE["backbone"], None, 1))
            model.input_config = with_input_size(model.input_config, RECIPE["input_size"])
            config = TrainConfig(
                epochs=1, batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], warmup_epochs=0,
                augment=None, crop_scale=(0.8, 1.0), workers=workers, max_steps_per_epoch=steps,
            )  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                result = train(model, "fashion-mnist", Path(tmp) / "m.safetensors", config)
            rates[workers].append(round(result.history[-1].images_per_s, 1))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="fashion-mnist", help="the demo's data set: fashion-mnist or emoji")
    parser.add_argument("--workers", action="store_true", help="also compare 0, 1 and 2 data workers")
    parser.add_argument("--steps", type=int, default=80, help="training steps per worker-count run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the worker runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict[str, object] = {"machine": machine(), "torch_threads": None}
    import torch

    report["torch_threads"] = torch.get_num_threads()
    if args.workers:
        report["workers_images_per_s"] = time_workers(args.steps, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        report.update(time_demo(Path(tmp) / "demo", args.data))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    m = report["machine"]
    print(f"machine: {m.get('model')} ({m.get('cores')} cores; {', '.join(m.get('flags', []))}), "
          f"torch threads {report['torch_threads']}")  # fmt: skip
    for workers, rates in (report.get("workers_images_per_s") or {}).items():
        print(f"workers {workers}: {statistics.median(rates):.0f} img/s (runs: {rates})")
    demo = report["demo"]
    full, expert = demo.get("full", {}), demo.get("expert", {})
    print(f"demo: {demo['epochs']} epochs ({demo['epochs_how']}), training {demo['train_seconds']} s, "
          f"demo {demo['seconds']} s, process wall {report['process_wall_s']} s")  # fmt: skip
    cut = expert["reduction_percent"]  # percent less than the full model
    on_expert = f"full {full['top1_on_expert_classes']:.2%}, expert {expert['top1']:.2%}"
    print(f"{demo['data']}: full model {full['cost']['classes']} classes, test top-1 {full['top1']:.2%}; "
          f"on the {expert['images']} {expert['name']} test images {on_expert}")  # fmt: skip
    latency = ", ".join(f"batch {r['batch']} -{r['median_ms']:.1f}%" for r in cut.get("latency", []))
    print(f"expert ({expert['cost']['classes']} classes): params -{cut['params']['total']:.1f}% "
          f"({expert['cost']['params']['total'] / 1e6:.3f}M), GMACs -{cut['gmacs']:.1f}% "
          f"({expert['cost']['gmacs']:.4f}), latency {latency}")  # fmt: skip


if __name__ == "__main__":
    main()
