"""kill -9 at random moments of a seeded 3-epoch ``nhl train``, then ``--resume``: same weights?

Issue 34's goal: a run killed with SIGKILL at any moment, then resumed until it finishes, ends
with exactly the weights of an uninterrupted run with the same seed. On tiny generated data
(``tests/data/make_tiny_data.py``) this trains a reference run, then ``--runs`` runs each killed
at a random moment of the reference's wall time, each followed by ``--resume`` until it finishes
(a kill before the first checkpoint leaves nothing to resume: the run starts again). It prints how
many finished, how many ended with bit-identical weights, how many were refused (a command failed
with an error other than "no checkpoint to resume from") and how many finished with other
weights, with the machine, thread count and seed. Exit status 1 unless every run finished with
identical weights.

    python benchmarks/bench_crash_resume.py --runs 50 [--results]

``--results`` stores the counts as ``benchmarks/results/crash-resume.json``, the table report.py
puts in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["apple", "banana", "cherry"]


def make_data(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_data", REPO / "tests" / "data" / "make_tiny_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_image_folder(root / "data", CLASSES, per_class=6, size=16)


def cpu_model() -> str:
    """lscpu's model name (where lscpu exists), else what Python knows."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def train_args(data: Path, out: Path, ckdir: Path, seed: int, epochs: int) -> list[str]:
    return [
        "train", "--data", str(data), "-o", str(out), "--checkpoint-dir", str(ckdir), "--flat",
        "--backbone", "resnet10t", "--input-size", "16", "--batch-size", "4", "--workers", "0",
        "--augment", "none", "--no-amp", "--seed", str(seed), "--epochs", str(epochs),
    ]  # fmt: skip


def nhl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nhlcli", *args], capture_output=True, text=True, env=env)


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def identical(a: Path, b: Path) -> bool:
    """Bit-identical tensors (the metadata holds timings, so the files themselves differ)."""
    import torch

    left, right = weights(a), weights(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def killed_then_resumed(
    index: int, work: Path, data: Path, seed: int, epochs: int, kill_at: float, env: dict[str, str]
) -> tuple[str, Path | None]:
    """One run: start, SIGKILL after ``kill_at`` seconds, then resume until it finishes.
    Returns (outcome, model file): outcome 'finished' or 'refused: <error line>'."""
    out, ckdir = work / f"run{index}.safetensors", work / f"run{index}.ckpt"
    args = train_args(data, out, ckdir, seed, epochs)
    proc = subprocess.Popen([sys.executable, "-m", "nhlcli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    try:
        proc.wait(timeout=kill_at)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for _ in range(5):
        if proc.returncode == 0 and out.is_file():
            return "finished", out
        run = nhl(["train", "-o", str(out), "--checkpoint-dir", str(ckdir), "--resume"], env)
        if run.returncode == 0:
            return "finished", out
        error = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"
        if "no checkpoint" not in error:
            return f"refused: {error}", None
        run = nhl(args, env)  # killed before the first checkpoint: nothing to resume, start again
        if run.returncode == 0:
            return "finished", out
        error = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"
        return f"refused: {error}", None
    return "refused: did not finish in 5 resumes", None


def store(record: dict, threads: int, argv: list[str]) -> Path:
    """The counts as ``benchmarks/results/crash-resume.json``, the table report.py renders."""
    from results_store import machine, write_results

    return write_results(
        "crash-resume",
        title="kill -9 at random moments of a seeded nhl train, then --resume: the same weights?",
        command=shlex.join(["python", "benchmarks/bench_crash_resume.py", *argv]),
        machine_facts={**machine(), "threads": threads},  # each nhl process's torch threads
        setup={
            "train": "flat resnet10t, 16 px, tiny generated ImageFolder, batch 4, no AMP",
            "epochs": record["epochs"], "seed": record["seed"],
            "table": {"columns": [
                ["runs", "runs", "{}"], ["finished", "finished", "{}"],
                ["bit-identical to the uninterrupted run", "identical", "**{}**"],
                ["refused", "refused", "{}"], ["mismatched", "mismatched", "{}"],
                ["wall", "wall_s", "{:.0f} s"],
            ]},
        },
        runs=[{"model": "kill-9-then-resume", **record}],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="killed runs (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="training seed, and the seed of the kill moments")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of each nhl process (default 1)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--results", action="store_true", help="store the counts for report.py")
    options = parser.parse_args(argv)
    begun = time.perf_counter()
    threads = str(options.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONHASHSEED": "0"}
    work = options.workdir or Path(tempfile.mkdtemp(prefix="nhl-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; threads {threads}; seed {options.seed}; "
          f"{options.epochs} epochs; work in {work}", flush=True)  # fmt: skip
    reference = work / "reference.safetensors"
    started = time.perf_counter()
    run = nhl(train_args(data, reference, work / "reference.ckpt", options.seed, options.epochs), env)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        print(f"the uninterrupted run failed: {run.stderr.strip()[-500:]}")
        return 1
    print(f"uninterrupted run: {wall:.1f} s", flush=True)
    again = work / "again.safetensors"
    nhl(train_args(data, again, work / "again.ckpt", options.seed, options.epochs), env)
    repeatable = again.is_file() and identical(reference, again)
    print(f"a second uninterrupted run with the same seed gives identical weights: {repeatable}", flush=True)
    moments = random.Random(options.seed)
    counts = {"finished": 0, "identical": 0, "refused": 0, "mismatched": 0}
    kills = []
    for index in range(options.runs):
        kill_at = moments.uniform(0.0, wall)
        kills.append(kill_at)
        outcome, model = killed_then_resumed(index, work, data, options.seed, options.epochs, kill_at, env)
        if model is None:
            counts["refused"] += 1
            verdict = outcome
        else:
            counts["finished"] += 1
            same = identical(reference, model)
            counts["identical" if same else "mismatched"] += 1
            verdict = "identical" if same else "MISMATCHED"
        print(f"run {index + 1}/{options.runs}: killed at {kill_at:.1f} s: {verdict}", flush=True)
    print(
        f"runs {options.runs}: finished {counts['finished']}, identical {counts['identical']}, "
        f"refused {counts['refused']}, mismatched {counts['mismatched']} "
        f"(machine: {cpu_model()}; threads {threads}; seed {options.seed})"
    )
    if options.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if options.results:
        record = {"runs": options.runs, **counts, "wall_s": round(time.perf_counter() - begun, 1),
                  "reference_s": round(wall, 1), "repeatable": repeatable, "epochs": options.epochs,
                  "seed": options.seed, "kill_min_s": round(min(kills, default=0.0), 1),
                  "kill_max_s": round(max(kills, default=0.0), 1)}  # fmt: skip
        print(f"stored {store(record, options.threads, sys.argv[1:] if argv is None else argv)}")
    return 0 if counts["identical"] == options.runs else 1


if __name__ == "__main__":
    sys.exit(main())
