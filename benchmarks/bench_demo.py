"""The first run's promise: ``nhl demo`` end to end, timed as a user would time it.

Runs ``nhl demo --json`` in a fresh work directory as a subprocess (Python start-up, imports,
WordNet, training, evaluation, the cutout and its cost report all included) and prints the
process's wall time beside the demo's own figures and the machine it ran on. With
``--workers`` it first times the real training loop on Fashion-MNIST with 0, 1 and 2 data
loading processes, alternating them so that machine noise hits all alike (the evidence for
``nhlcli.data.default_workers``). With ``--results`` the run becomes the row of its model in
``benchmarks/results/demo-end-to-end.json`` (``-emoji`` for the emoji demo), the table report.py
puts in docs/benchmarks.md; the rows of earlier defaults stay, each naming its date and machine.

    python benchmarks/bench_demo.py [--data emoji] [--workers] [--json] [--results]

A quick check that it works (not a measurement): ``--epochs 1`` with a small Fashion-MNIST,
e.g. ``python tests/data/make_tiny_data.py /tmp/tiny`` then ``--nhl-data /tmp/tiny/fashion-mnist``.
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


def time_demo(
    workdir: Path, data: str, epochs: int | None = None, env: dict[str, str] | None = None
) -> dict[str, object]:
    command = [sys.executable, "-m", "nhlcli", "demo", "--data", data, "--workdir", str(workdir), "--json"]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
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


RESULTS = {"fashion-mnist": "demo-end-to-end", "emoji": "demo-end-to-end-emoji"}
# the columns report.py renders (header, record key, format); a column no row fills is left out
COLUMNS = [
    ["date", "date", "{}"], ["model", "model", "{}"], ["machine", "machine", "{}"],
    ["torch threads", "threads", "{}"], ["epochs", "epochs", "{}"], ["how", "epochs_how", "{}"],
    ["test top-1 (full)", "top1", "{:.2f}%"], ["{expert}, full", "expert_full_top1", "{:.2f}%"],
    ["{expert}, expert", "expert_top1", "{:.2f}%"],
    ["expert params, change", "expert_params_change_pct", "{:.1f}%"],
    ["expert params", "expert_params_m", "{:.3f}M"],
    ["expert GMACs, change", "expert_gmacs_change_pct", "{:.1f}%"],
    ["expert GMACs", "expert_gmacs", "{:.4f}"],
    ["expert latency batch 1, change", "expert_latency_b1_change_pct", "{:.1f}%"],
    ["expert latency batch 16, change", "expert_latency_b16_change_pct", "{:.1f}%"],
    ["training", "train_s", "{:.0f} s"], ["demo", "demo_s", "{:.0f} s"],
    ["process wall", "wall_s", "**{:.0f} s**"],
]  # fmt: skip


def demo_record(report: dict, variant: str) -> dict:
    """One row of the table: the demo's figures in percent and seconds, changes as negatives."""
    demo, m = report["demo"], report["machine"]
    full, expert = demo["full"], demo["expert"]
    cut = expert["reduction_percent"]  # percent less than the full model
    budget = demo.get("time_budget")
    if budget:
        how = f"{'the budget' if budget['ended_by_budget'] else 'the cap'} ({budget['steps']:,} steps)"
    else:
        how = "given"
    record = {
        "model": variant, "date": time.strftime("%Y-%m-%d", time.gmtime()), "seed": 0,
        "machine": f"{m.get('model')}, {m.get('cores')} cores, flags {' '.join(m.get('flags', []))}",
        "threads": demo.get("threads", {}).get("training"), "epochs": demo["epochs"], "epochs_how": how,
        "top1": round(100 * full["top1"], 2),
        "expert_full_top1": round(100 * full["top1_on_expert_classes"], 2),
        "expert_top1": round(100 * expert["top1"], 2), "expert_params_change_pct": -cut["params"]["total"],
        "expert_params_m": round(expert["cost"]["params"]["total"] / 1e6, 3),
        "expert_gmacs_change_pct": -cut["gmacs"], "expert_gmacs": round(expert["cost"]["gmacs"], 4),
        "train_s": demo["train_seconds"], "demo_s": demo["seconds"], "wall_s": report["process_wall_s"],
    }  # fmt: skip
    for row in cut.get("latency", []):
        record[f"expert_latency_b{row['batch']}_change_pct"] = -row["median_ms"]
    return record


def store(report: dict, data: str, command: str) -> Path:
    """The run as its model's row of ``benchmarks/results/demo-end-to-end[-emoji].json`` for
    report.py. Rows of other models (earlier defaults) stay: each names its own date and machine,
    so unlike ``add_runs`` this keeps rows of another machine, and the file's machine is this run's."""
    from results_store import RESULTS_DIR, write_results

    from nhlcli.model import DEFAULT_VARIANT

    name = RESULTS[data]
    path = RESULTS_DIR / f"{name}.json"
    kept = json.loads(path.read_text(encoding="utf-8"))["runs"] if path.exists() else []
    kept = [r for r in kept if r["model"] != DEFAULT_VARIANT]
    runs = [*kept, demo_record(report, DEFAULT_VARIANT)]
    demo = report["demo"]
    full, expert = demo["full"], demo["expert"]
    headers = {
        "top1": f"test top-1 ({full['cost']['classes']:,} classes, {full['images']:,} images)",
        "expert_full_top1": f"{expert['name']}, full ({expert['images']:,} images)",
    }
    columns = [
        [headers.get(key, header.format(expert=expert["name"])), key, shape]
        for header, key, shape in COLUMNS
        if any(key in run for run in runs)
    ]
    arms = {r["model"]: {"label": f"`{r['model']}` (then the default)"} for r in kept}
    arms[DEFAULT_VARIANT] = {"label": f"`{DEFAULT_VARIANT}` (the default)"}
    return write_results(
        name,
        title=f"nhl demo --data {data} end to end, timed as a fresh process",
        command=command,
        setup={"data": data, "seed": 0, "arms": arms, "table": {"columns": columns}},
        runs=runs,
        notes="One run per row; each row names the date and machine it ran on, the file's machine is the "
        "newest row's.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="fashion-mnist", help="the demo's data set: fashion-mnist or emoji")
    parser.add_argument("--workers", action="store_true", help="also compare 0, 1 and 2 data workers")
    parser.add_argument("--steps", type=int, default=80, help="training steps per worker-count run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the worker runs")
    parser.add_argument("--epochs", type=int, help="pass --epochs to the demo (quick checks)")
    parser.add_argument("--nhl-data", type=Path, help="NHL_DATA for the demo (a folder with its data files)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", action="store_true", help="store the run as its model's row")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.nhl_data is not None:
        env.update(NHL_DATA=str(args.nhl_data), NHL_OFFLINE="1")
    report: dict[str, object] = {"machine": machine(), "torch_threads": None}
    import torch

    report["torch_threads"] = torch.get_num_threads()
    if args.workers:
        report["workers_images_per_s"] = time_workers(args.steps, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        report.update(time_demo(Path(tmp) / "demo", args.data, args.epochs, env))
    if args.results:
        from results_store import invoked_command

        command = invoked_command()
        print(f"stored {store(report, args.data, command)}", file=sys.stderr)
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
