"""Per-seed figures as data: every benchmark run that a verdict rests on is stored as one JSON
file under ``benchmarks/results/``, and ``benchmarks/report.py`` computes every table and verdict
of docs/results.md from those files, so a number can never disagree with itself or with the rule.

A results file (``"schema": "nhl-results/1"``) says what ran (``command``, ``setup``), where
(``machine``: lscpu's model name and flags, torch threads, versions) and when, and holds one
record per run: the arm (``model``), its ``seed`` where it has one, and the run's figures.

    from results_store import machine, write_results
    write_results("fm-gates", title="...", command="python benchmarks/...", setup={...},
                  runs=[{"model": "n2hl", "seed": 0, "top1": 89.2}])
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCHEMA = "nhl-results/1"
# where results files go; NHL_RESULTS_DIR points a trial run elsewhere so it cannot overwrite the
# committed figures
RESULTS_DIR = Path(os.environ.get("NHL_RESULTS_DIR") or Path(__file__).resolve().parent / "results")
WANTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def invoked_command() -> str:
    """The command line that ran this script, as a results file's ``command``: what reruns it."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def machine() -> dict[str, Any]:
    """The evidence every figure carries: lscpu's model name and the SIMD flags that change
    torch's speed, torch's threads and the versions, and the GPU when one ran the work."""
    import torch

    model, flags = platform.processor() or "unknown", []
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        model = next(
            (line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), model
        )
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("Flags")), [])
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [flag for flag in WANTED_FLAGS if flag in flags],
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(
    name: str,
    *,
    title: str,
    command: str,
    setup: dict[str, Any],
    runs: list[dict[str, Any]],
    date: str | None = None,
    machine_facts: dict[str, Any] | None = None,
    notes: str = "",
    directory: Path = RESULTS_DIR,
) -> Path:
    """Write ``directory/name.json`` atomically (a temporary file beside it, then a rename), so
    a killed run leaves the previous results whole. ``date``: the run's (default today, UTC);
    ``machine_facts``: where it ran (default this machine's)."""
    for run in runs:
        if "model" not in run:
            raise ValueError(f"every run needs a 'model' (its arm), got {run}")
    document = {
        "schema": SCHEMA,
        "name": name,
        "title": title,
        "date": date or time.strftime("%Y-%m-%d", time.gmtime()),
        "command": command,
        "machine": machine_facts if machine_facts is not None else machine(),
        "setup": setup,
        "notes": notes,
        "runs": runs,
    }
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.json"
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=1)
            stream.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp makes it private; results are for everyone to read
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def add_runs(
    name: str,
    runs: list[dict[str, Any]],
    *,
    key: tuple[str, ...] = ("model", "seed"),
    directory: Path = RESULTS_DIR,
    **fields: Any,
) -> Path:
    """Merge ``runs`` into ``directory/name.json`` (creating it from ``fields`` where it does not
    exist): a run replaces the stored one with the same ``key`` values, so scripts that train
    one run per process (one seed, one variant) build up one results file, and a rerun replaces
    its own record."""
    path = directory / f"{name}.json"
    fields.setdefault("date", time.strftime("%Y-%m-%d", time.gmtime()))  # the new runs' day
    if path.exists():
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("schema") != SCHEMA:
            raise ValueError(f"{path.name}: not an nhl results file, will not overwrite it")
        stored = {k: document[k] for k in ("title", "command", "setup", "date", "notes")}
        if "setup" in fields:  # the new run's setup, keeping the labels of arms stored before
            arms = {**document["setup"].get("arms", {}), **fields["setup"].get("arms", {})}
            fields["setup"] = {**document["setup"], **fields["setup"], "arms": arms}
        fields = stored | fields
        here = fields.setdefault("machine_facts", machine())
        stored_on = (document["machine"].get("cpu"), document["machine"].get("threads"))
        if (here.get("cpu"), here.get("threads")) != stored_on:
            this_run = (here.get("cpu"), here.get("threads"))
            raise ValueError(
                f"{path.name} holds runs of {stored_on[0]} at {stored_on[1]} threads, this run is on "
                f"{this_run[0]} at {this_run[1]}: store it under another name"
            )
        kept = [r for r in document["runs"] if not any(_same(r, run, key) for run in runs)]
        runs = kept + runs
    return write_results(name, runs=runs, directory=directory, **fields)


def _same(a: dict[str, Any], b: dict[str, Any], key: tuple[str, ...]) -> bool:
    return all(a.get(k) == b.get(k) for k in key)


def load_results(directory: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """Every results file in ``directory`` by name, each checked for the schema."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("schema") != SCHEMA:
            raise ValueError(f"{path.name}: not an nhl results file (schema {document.get('schema')!r})")
        if document.get("name") != path.stem:
            raise ValueError(f"{path.name}: its name field says {document.get('name')!r}")
        found[path.stem] = document
    return found
