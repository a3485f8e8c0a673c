"""Benchmark batched branch levels against a Python loop of per-node modules and the trunk.

For trees of 10, 100 and 1000 leaves (3 levels, geometric fan-out, widths 128/64/32, input like
a ResNet50 trunk output at 224 px: 1024 channels, 14x14) it prints the forward time (median
after warm-up) and GMAC/s of the batched levels + leaf heads, of the same weights run node by
node (``ReferenceStack``), their ratio, and the rate of the trunk itself (timm ``resnet50``
cut after layer3) at the same batch. MACs come from ``torch.utils.flop_counter`` (FLOPs / 2).

Memory allocation matters on CPU: a batched level allocates a few very large tensors (800 MB
at 1000 leaves), and first-touch page faults, kernel page zeroing and compaction can cost as
much as the arithmetic and vary from run to run. By default (``--alloc thp+heap``) this script
asks PyTorch to back large tensors with transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``,
read once when torch starts, so it is set before importing torch) and tells glibc to keep
freed memory for reuse (``mallopt``: no mmap, no trimming). Both apply to the whole process,
so the trunk, the loop and the batched levels all get them. ``--alloc default`` measures the
stock allocator.

    python benchmarks/bench_branches.py              # default: about a minute on 2 cores
    python benchmarks/bench_branches.py --quick      # fewer runs
    python benchmarks/bench_branches.py --irregular  # also uneven fan-outs (scatter cost)
    python benchmarks/bench_branches.py --train      # forward + backward in train mode
    python benchmarks/bench_branches.py --size 7 --batch 32 --alloc default --json
    python benchmarks/bench_branches.py --results    # also store benchmarks/results/branch-execution.json
"""

from __future__ import annotations

import os
import sys


def _alloc_mode(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--alloc" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--alloc="):
            return arg.split("=", 1)[1]
    return "thp+heap"


if "thp" in _alloc_mode(sys.argv):  # must happen before torch's first allocation
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from nhlcli.memory import keep_freed_cpu_memory  # noqa: E402
from nhlcli.model.branches import BranchLevel, LeafHeads  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the per-node oracle
from branch_oracle import ReferenceStack  # noqa: E402


def level_sizes(leaves: int, levels: int) -> list[int]:
    """Geometric fan-out: level k has about ``leaves ** (k / levels)`` nodes."""
    sizes = [max(1, round(leaves ** ((k + 1) / levels))) for k in range(levels)]
    sizes[-1] = leaves
    for k in range(1, levels):  # never fewer nodes than the level above
        sizes[k] = max(sizes[k], sizes[k - 1])
    return sizes


def even_parents(n_parent: int, n_child: int) -> list[int]:
    """Children spread as evenly as possible over the parents, sorted by parent."""
    return [i * n_parent // n_child for i in range(n_child)]


def irregular_parents(n_parent: int, n_child: int, rng: random.Random) -> list[int]:
    """Sorted by parent, every parent >= 1 child, fan-outs drawn unevenly (1 up to ~3x mean)."""
    extra = [0] * n_parent
    weights = [rng.random() ** 2 for _ in range(n_parent)]
    for _ in range(n_child - n_parent):
        extra[rng.choices(range(n_parent), weights)[0]] += 1
    return [p for p in range(n_parent) for _ in range(1 + extra[p])]


def build(
    leaves: int, widths: Sequence[int], in_channels: int, irregular: bool, seed: int = 0
) -> tuple[list[BranchLevel], LeafHeads, list[int]]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    sizes = level_sizes(leaves, len(widths))
    levels, cin = [], in_channels
    for k, (n, width) in enumerate(zip(sizes, widths, strict=True)):
        parents = None
        if k > 0:
            parents = (irregular_parents if irregular else even_parents)(
                sizes[k - 1], n, *((rng,) if irregular else ())
            )
        levels.append(BranchLevel(n, parents, cin, width).eval())
        cin = width * 4
    return levels, LeafHeads(leaves, cin).eval(), sizes


def timed(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def count_macs(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def trunk_rate(batch: int, image: int, warmup: int, runs: int, train: bool = False) -> dict[str, Any]:
    """timm resnet50 cut after layer3, both memory formats; the faster one is the reference."""
    import timm

    model = timm.create_model("resnet50", pretrained=False, num_classes=0).eval()
    model.prune_intermediate_layers(indices=[3], prune_norm=True, prune_head=True)
    x = torch.randn(batch, 3, image, image)

    def run() -> torch.Tensor:
        return model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]

    def train_step() -> None:
        run().mean().backward()

    with torch.inference_mode():
        out_shape = tuple(run().shape)
        macs = count_macs(run)
    result: dict[str, Any] = {"macs": macs, "output": out_shape}
    if train:
        model.train()
        macs *= 3
    for fmt_name, fmt in (("channels_last", torch.channels_last), ("nchw", torch.contiguous_format)):
        model = model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
        if train:
            times = timed(train_step, warmup, runs)
        else:
            with torch.inference_mode():
                times = timed(run, warmup, runs)
        result[fmt_name] = statistics.median(times)
    best = min(("channels_last", "nchw"), key=lambda k: result[k])
    result.update(format=best, seconds=result[best], gmacs=macs / result[best] / 1e9)
    return result


def bench_tree(leaves: int, args: argparse.Namespace, irregular: bool = False) -> dict[str, Any]:
    levels, heads, sizes = build(leaves, args.widths, args.in_channels, irregular)
    x = torch.randn(args.batch, args.in_channels, args.size, args.size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    ref = ReferenceStack(levels, heads).eval()

    def batched() -> torch.Tensor:
        y = x_cl
        for level in levels:
            y = level(y)
        return heads(y)

    loop_x = {"nchw": x, "channels_last": x_cl}
    loop_fmt = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    fmt = "nchw"

    def loop() -> torch.Tensor:
        return ref(loop_x[fmt])[1]

    with torch.inference_mode():
        diff = (batched() - loop()).abs().max().item()
        # The architecture's MACs, counted on ordinary modules (the batched inference path uses
        # oneDNN's fused ops / in-place baddbmm_, which FlopCounterMode does not count).
        macs = count_macs(loop)
    run_batched, run_loop = batched, loop
    if args.train:  # one SGD step's forward + backward, train mode (batch statistics)
        target = torch.randint(0, leaves, (args.batch,))
        for m in (*levels, heads, ref):
            m.train()

        def step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                torch.nn.functional.cross_entropy(fn(), target).backward()

            return run

        macs *= 3  # forward + backward (input and weight gradients)
        run_batched, run_loop = step(batched), step(loop)
    # The loop runs in both memory formats; the faster one is the baseline.
    with torch.inference_mode(not args.train):
        t_batched = timed(run_batched, args.warmup, args.runs)
        t_loops = {}
        for fmt in ("nchw", "channels_last"):
            ref.to(memory_format=loop_fmt[fmt])
            t_loops[fmt] = timed(run_loop, args.warmup, max(1, args.loop_runs))
    fmt = min(t_loops, key=lambda k: statistics.median(t_loops[k]))
    t_loop = t_loops[fmt]
    buckets = [len(level._buckets) for level in levels]
    med_b, med_l = statistics.median(t_batched), statistics.median(t_loop)
    return {
        "leaves": leaves,
        "tree": "irregular" if irregular else "even",
        "nodes": sizes,
        "buckets": buckets,
        "gmac": macs / 1e9,
        "max_abs_diff": diff,
        "batched_s": med_b,
        "batched_min_s": min(t_batched),
        "loop_s": med_l,
        "loop_min_s": min(t_loop),
        "loop_format": fmt,
        "loop_s_by_format": {k: statistics.median(v) for k, v in t_loops.items()},
        "batched_gmacs": macs / med_b / 1e9,
        "loop_gmacs": macs / med_l / 1e9,
        "speedup": med_l / med_b,
    }


def store(report: dict[str, Any], argv: Sequence[str]) -> None:
    """The rows as ``benchmarks/results/branch-execution.json``, the table report.py puts in the docs."""
    from results_store import write_results

    trunk = report["trunk"]["gmacs"]
    write_results(
        "branch-execution",
        title="Batched branch levels against a loop of per-node modules and the trunk",
        command=" ".join(["python benchmarks/bench_branches.py", *argv]),
        setup={k: report[k] for k in ("batch", "input", "widths", "mode", "alloc", "runs", "loop_runs")}
        | {"trunk_gmacs": round(trunk, 1), "table": {"columns": [
            ["leaves", "leaves", "{}"], ["GMAC", "gmac", "{:.1f}"], ["batched ms", "batched_ms", "{:.0f}"],
            ["batched GMAC/s", "batched_gmacs", "{:.0f}"], ["loop ms", "loop_ms", "{:.0f}"],
            ["loop GMAC/s", "loop_gmacs", "{:.0f}"], ["batched / loop", "speedup", "{:.2f}x"],
            [f"of trunk rate ({trunk:.1f} GMAC/s)", "branch_to_trunk_rate", "{:.0%}"],
        ]}},
        runs=[
            {"model": f"{r['leaves']} leaves" + (f" ({r['tree']})" if r["tree"] != "even" else ""),
             "leaves": r["leaves"], "gmac": r["gmac"], "batched_ms": r["batched_s"] * 1e3,
             "batched_gmacs": r["batched_gmacs"], "loop_ms": r["loop_s"] * 1e3, "loop_gmacs": r["loop_gmacs"],
             "speedup": r["speedup"], "branch_to_trunk_rate": r["branch_to_trunk_rate"]}
            for r in report["rows"]
        ],
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leaves", default="10,100,1000", help="comma-separated leaf counts")
    parser.add_argument("--irregular", action="store_true", help="also time uneven fan-out trees")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=14, help="trunk output size (14: ResNet50 at 224 px)")
    parser.add_argument("--in-channels", type=int, default=1024)
    parser.add_argument("--widths", default="128,64,32", help="bottleneck width per level")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--loop-runs", type=int, default=None, help="runs of the per-node loop (default --runs)"
    )
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 3 runs (2 for the loop)")
    parser.add_argument(
        "--train", action="store_true", help="time a training step (forward + backward) instead"
    )
    parser.add_argument(
        "--alloc",
        choices=["thp+heap", "thp", "heap", "default"],
        default="thp+heap",
        help="process allocator settings (see above)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--results", action="store_true", help="store the rows for report.py")
    args = parser.parse_args(argv)
    args.widths = [int(w) for w in args.widths.split(",")]
    if args.quick:
        args.warmup, args.runs, args.loop_runs = 1, 3, 2
    args.loop_runs = args.loop_runs or args.runs
    leaves = [int(v) for v in args.leaves.split(",")]
    heap = "heap" in args.alloc and keep_freed_cpu_memory()
    image = args.size * 16  # ResNet50 layer3 has stride 16

    trunk = trunk_rate(args.batch, image, args.warmup, args.runs, args.train)
    rows = [bench_tree(n, args) for n in leaves]
    if args.irregular:
        rows += [bench_tree(n, args, irregular=True) for n in leaves if n >= 10]
    for row in rows:
        row["branch_to_trunk_rate"] = row["batched_gmacs"] / trunk["gmacs"]
    report = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "alloc": args.alloc,
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
        "glibc_keep_freed": heap,
        "batch": args.batch,
        "input": [args.in_channels, args.size, args.size],
        "widths": args.widths,
        "warmup": args.warmup,
        "runs": args.runs,
        "loop_runs": args.loop_runs,
        "trunk": {k: v for k, v in trunk.items() if k != "output"},
        "mode": "train step (forward + backward)" if args.train else "inference forward",
        "rows": rows,
    }
    if args.results:
        store(report, sys.argv[1:] if argv is None else list(argv))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 180))
    console.print(
        f"threads={report['threads']}  torch {report['torch']}  "
        f"THP_MEM_ALLOC_ENABLE={report['thp_mem_alloc']}  glibc keep-freed={heap}  "
        f"batch={args.batch}  input={args.in_channels}x{args.size}x{args.size}  widths={args.widths}  "
        f"median of {args.runs} runs ({args.loop_runs} for the loop) after {args.warmup} warm-up"
    )
    console.print(
        f"trunk: resnet50 to layer3 at {image} px: {trunk['macs'] / 1e9:.2f} GMAC forward, "
        f"{'train step ' if args.train else ''}{trunk['seconds'] * 1e3:.0f} ms, "
        f"{trunk['gmacs']:.1f} GMAC/s ({trunk['format']}; "
        f"channels_last {trunk['channels_last'] * 1e3:.0f} ms, nchw {trunk['nchw'] * 1e3:.0f} ms)"
    )
    title = (
        "branch levels + leaf heads, training step (train mode, forward + backward; MACs x3)"
        if args.train
        else "branch levels + leaf heads, forward (eval, inference_mode)"
    )
    table = Table(title=title)
    for col in (
        "leaves",
        "tree",
        "nodes/level",
        "buckets",
        "GMAC",
        "batched ms (min)",
        "batched GMAC/s",
        "loop ms (min) fmt",
        "loop GMAC/s",
        "speed-up",
        "of trunk rate",
        "max |diff|",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["leaves"]),
            r["tree"],
            "/".join(map(str, r["nodes"])),
            "/".join(map(str, r["buckets"])),
            f"{r['gmac']:.1f}",
            f"{r['batched_s'] * 1e3:.0f} ({r['batched_min_s'] * 1e3:.0f})",
            f"{r['batched_gmacs']:.1f}",
            f"{r['loop_s'] * 1e3:.0f} ({r['loop_min_s'] * 1e3:.0f}) "
            + ("CL" if r["loop_format"] == "channels_last" else "NCHW"),
            f"{r['loop_gmacs']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['branch_to_trunk_rate'] * 100:.0f}%",
            f"{r['max_abs_diff']:.1e}",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
