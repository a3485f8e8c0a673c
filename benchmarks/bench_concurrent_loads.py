"""Loads racing atomic replacements (issue 34): is a model file read wholly as one file?

Writer processes cut experts out of one tiny parent model, alternating two class sets of the same
shape (``cat,dog`` and ``car,truck``), and replace one path with each (``save_expert`` writes
atomically, as ``nhl cutout -o`` does). Reader processes meanwhile load that path with
``open_model`` (and every third time read its metadata alone). A load whose classes do not match
its weights is *mixed*: its logits on a fixed input differ from those of the expert its classes
name (both experts are exact row slices of the parent, so the reference is exact). Errors (one-line
``NhlError``) and tracebacks (anything else) are counted too. The goal is 0 mixed, 0 tracebacks.

``--reader naive`` loads the way nhl did before issue 34 (the metadata from one open, the tensors
from another), to show that the race is real on this machine and that the count finds it.

    python benchmarks/bench_concurrent_loads.py                      # 8 writers, 300 loads
    python benchmarks/bench_concurrent_loads.py --writers 4 --loads 60   # a quick check
    python benchmarks/bench_concurrent_loads.py --cli                # writers run `nhl cutout`

``--results`` adds the run, as the row of its writer and reader, to
``benchmarks/results/concurrent-loads.json`` (the table report.py puts in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

CLASS_SETS = (("cat", "dog"), ("car", "truck"))
SIZE = 32


def build_parent(path: Path) -> None:
    """A tiny NHL model (resnet18 trunk, width-8 branches, 32 px) over animal and vehicle classes."""
    import torch

    from nhlcli.model.files import save_model
    from nhlcli.model.nhl import BranchConfig, with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.taxonomy.tree import Tree

    torch.manual_seed(0)
    leaves = {"animal": ("cat", "dog"), "vehicle": ("car", "truck")}
    root = {
        "id": "root",
        "name": "all",
        "children": [
            {"id": group, "name": group, "children": [{"id": c, "name": c} for c in classes]}
            for group, classes in leaves.items()
        ],
    }
    tree = Tree.from_nested(root, ["cat", "dog", "car", "truck"], name="cat-dog-car-truck")
    model = create_model(tree, "nhl", TrunkConfig("resnet18"), BranchConfig(widths=(8, 8)))
    model.input_config = with_input_size(model.input_config, SIZE)
    save_model(model.eval(), path)


def probe() -> Any:
    import torch

    return torch.linspace(-1, 1, 2 * 3 * SIZE * SIZE).reshape(2, 3, SIZE, SIZE)


def reference_logits(parent: Path) -> dict[tuple[str, ...], Any]:
    """The exact logits of each expert on the probe input, cut in memory from the parent."""
    import torch

    from nhlcli.experts.cutout import cut_model
    from nhlcli.model.loading import open_model

    model = open_model(parent)
    with torch.no_grad():
        return {classes: cut_model(model, list(classes))(probe()) for classes in CLASS_SETS}


def writer(parent: str, target: str, index: int, stop: Any, use_cli: bool, counts: Any) -> None:
    """Replace ``target`` with an expert, alternating the class sets, until told to stop."""
    import torch

    torch.set_num_threads(1)
    from nhlcli.experts.cutout import cutout_file, save_expert

    turn = index
    while not stop.is_set():
        classes = CLASS_SETS[turn % 2]
        turn += 1
        try:
            if use_cli:
                subprocess.run(
                    [sys.executable, "-m", "nhlcli", "cutout", parent, "--classes", ",".join(classes),
                     "--no-latency", "--threads", "1", "-o", target, "--json"],
                    check=True, capture_output=True,
                )  # fmt: skip
            else:
                save_expert(cutout_file(parent, list(classes)), target)
            with counts.get_lock():
                counts[0] += 1
        except Exception:  # a writer that fails is reported, not hidden
            with counts.get_lock():
                counts[1] += 1


def naive_open(path: str) -> Any:
    """How nhl loaded before issue 34: the metadata from one open, the tensors from another."""
    from safetensors.torch import load_file

    from nhlcli.model.files import read_metadata
    from nhlcli.model.registry import model_from_config

    meta = read_metadata(path)
    model = model_from_config(meta, skeleton=True)
    model.load_state_dict(load_file(path), strict=True, assign=True)
    model.metadata = meta
    return model.eval()


def reader(target: str, loads: int, naive: bool, references: dict, queue: Any) -> None:
    """Load ``target`` ``loads`` times; report each load's outcome."""
    import torch

    torch.set_num_threads(1)
    from nhlcli.errors import NhlError
    from nhlcli.model.files import read_metadata
    from nhlcli.model.loading import open_model

    x = probe()
    for i in range(loads):
        try:
            if i % 3 == 2:
                classes = tuple(read_metadata(target)["tree"]["classes"])
                queue.put(("ok" if classes in references else "mixed", f"metadata {classes}"))
                continue
            model = naive_open(target) if naive else open_model(target)
            with torch.no_grad():
                logits = model(x)
            expected = references.get(tuple(model.classes))
            same = expected is not None and torch.equal(logits, expected)
            queue.put(("ok" if same else "mixed", f"classes {model.classes}"))
        except NhlError as exc:
            queue.put(("error", str(exc)))
        except Exception:
            queue.put(("traceback", traceback.format_exc(limit=3)))


def machine() -> dict[str, Any]:
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    cores, version = os.cpu_count(), platform.python_version()
    return {"cpu": model, "cores": cores, "python": version, "torch": torch.__version__}


# the columns report.py renders (header, record key, format)
COLUMNS = [
    ["writers", "model", "{}"], ["readers", "readers", "{}"], ["loads", "loads", "{}"],
    ["replacements during the run", "replacements", "{}"], ["ok", "ok", "{}"], ["mixed", "mixed", "**{}**"],
    ["one-line errors", "errors", "{}"], ["tracebacks", "tracebacks", "{}"],
]  # fmt: skip


RERUN = " && ".join(
    f"python benchmarks/bench_concurrent_loads.py {args}--results"
    for args in ("", "--reader naive --loads 100 ", "--cli ")
)


def store(result: dict[str, Any], cli: bool, naive: bool, argv: list[str]) -> Path:
    """The run as the row of its writer and reader in ``benchmarks/results/concurrent-loads.json``
    (rows of the other writer/reader pairs stay), for report.py."""
    from results_store import add_runs, machine

    name = f"{'cli' if cli else 'library'}-{'naive' if naive else 'nhl'}"
    writer = "`nhl cutout`" if cli else "library: `cutout_file` + `save_expert`"
    label = f"{result['writers']} ({writer})"
    if naive:
        control = "control: the old loader (header and tensors from two opens)"
        label = f"{result['writers']} ({'`nhl cutout`' if cli else 'library'}), {control}"
    outcomes = result["outcomes"]
    run = {"model": name, "writers": result["writers"], "readers": result["readers"],
           "loads": result["loads"], "replacements": result["replacements"], "ok": outcomes["ok"],
           "mixed": outcomes["mixed"],
           "errors": outcomes["error"], "tracebacks": outcomes["traceback"],
           "writer_failures": result["writer_failures"], "seconds": result["seconds"],
           "command": shlex.join(["python", "benchmarks/bench_concurrent_loads.py", *argv])}  # fmt: skip
    return add_runs(
        "concurrent-loads",
        [run],
        key=("model",),
        title="Model loads racing atomic replacements of the same path",
        command=RERUN,  # the table's three rows; each row keeps its own command
        machine_facts={**machine(), "threads": 1},  # every writer and reader runs 1 torch thread
        setup={"parent": "resnet18 NHL, width-8 branches, 32 px, classes cat, dog, car, truck",
               "class_sets": [list(c) for c in CLASS_SETS], "arms": {name: {"label": label}},
               "table": {"columns": COLUMNS}},
    )  # fmt: skip


def log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--loads", type=int, default=300, help="loads in all, over the readers")
    parser.add_argument("--reader", choices=["nhl", "naive"], default="nhl")
    parser.add_argument("--cli", action="store_true", help="writers run `nhl cutout` (slower)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", action="store_true", help="store the run as a row for report.py")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    context = mp.get_context("spawn")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nhl-loads-") as tmp:
        parent, target = Path(tmp) / "parent.safetensors", Path(tmp) / "expert.safetensors"
        build_parent(parent)
        references = reference_logits(parent)
        log("parent built", started)
        from nhlcli.experts.cutout import cutout_file, save_expert

        save_expert(cutout_file(parent, list(CLASS_SETS[0])), target)
        stop, counts, queue = context.Event(), context.Array("i", [0, 0]), context.Queue()
        writers = [
            context.Process(target=writer, args=(str(parent), str(target), i, stop, args.cli, counts))
            for i in range(args.writers)
        ]
        for process in writers:
            process.start()
        while counts[0] < 1 and not any(p.exitcode is not None for p in writers):
            time.sleep(0.2)  # a writer has replaced the file: the race is on
        log(f"writers running ({counts[0]} replacements so far)", started)
        share = [args.loads // args.readers + (i < args.loads % args.readers) for i in range(args.readers)]
        readers = [
            context.Process(target=reader, args=(str(target), n, args.reader == "naive", references, queue))
            for n in share
        ]
        for process in readers:
            process.start()
        outcomes: dict[str, int] = {"ok": 0, "mixed": 0, "error": 0, "traceback": 0}
        examples: dict[str, str] = {}
        for done in range(1, args.loads + 1):
            kind, detail = queue.get()
            outcomes[kind] += 1
            examples.setdefault(kind, detail)
            if done % max(1, args.loads // 5) == 0:
                log(f"{done} loads, {counts[0]} replacements", started)
        for process in readers:
            process.join()
        stop.set()
        for process in writers:
            process.join()
    result = {
        "machine": machine(),
        "threads_per_process": 1,
        "writers": args.writers,
        "writer": "nhl cutout" if args.cli else "cutout_file + save_expert",
        "readers": args.readers,
        "reader": "open_model / read_metadata" if args.reader == "nhl" else "naive (two opens)",
        "loads": args.loads,
        "outcomes": outcomes,
        "replacements": counts[0],
        "writer_failures": counts[1],
        "examples": {k: v for k, v in examples.items() if k != "ok"},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.results:
        stored = store(result, args.cli, args.reader == "naive", sys.argv[1:] if argv is None else argv)
        print(f"stored {stored}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        m = result["machine"]
        print(f"{m['cpu']}, {m['cores']} cores, python {m['python']}, torch {m['torch']}, 1 thread a process")
        print(f"{args.writers} writers ({result['writer']}), {args.readers} readers ({result['reader']})")
        print(
            f"{args.loads} loads: {outcomes['ok']} ok, {outcomes['mixed']} mixed, "
            f"{outcomes['error']} errors, {outcomes['traceback']} tracebacks; {counts[0]} replacements, "
            f"{counts[1]} writer failures; {result['seconds']} s"
        )
        for kind, detail in result["examples"].items():
            print(f"  e.g. {kind}: {detail.strip().splitlines()[-1][:200]}")
    return result


if __name__ == "__main__":
    main()
