"""Shared test helpers: run the real ``nhl`` command as a process of its own; tiny trees, models and
batches."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import locale
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nhlcli.gates import GateTraining
from nhlcli.model.nhl import BranchConfig, FlatModel, with_input_size
from nhlcli.model.registry import VARIANTS, create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.taxonomy import Tree
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.sources import build_flat_tree

REPO = Path(__file__).resolve().parents[1]


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (``-n N``), give each worker its share of the CPU cores, for its own
    torch and for the ``nhl`` commands it starts (``OMP_NUM_THREADS``): N processes that each
    run a thread per core slow each other by up to 10x."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores_between_workers()


def _load_tiny_data_module():
    """The tiny-data generator beside the tests (``tests/data/make_tiny_data.py``), as a module."""
    spec = importlib.util.spec_from_file_location(
        "make_tiny_data", REPO / "tests" / "data" / "make_tiny_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tiny_data = _load_tiny_data_module()


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_nhl(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> Run:
    """Run ``python -m nhlcli ARGS`` as a user would, capturing exit status and both streams.

    The command is a process of its own either way: forked from this worker's warm starter
    (``tests/nhl_zygote.py``, which has torch and timm imported already) where it can stand in
    faithfully, else a fresh ``subprocess``. ``NHL_TESTS_FRESH_PROCESSES=1`` forces the latter."""
    args = tuple(map(str, args))
    environment = dict(os.environ if env is None else env)
    starter = _STARTER.get(environment)
    if starter is not None:
        try:
            return starter.run(args, cwd=Path(cwd or os.getcwd()), environment=environment, timeout=timeout)
        finally:
            starter.busy.release()
    proc = subprocess.run(
        [sys.executable, "-m", "nhlcli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


class _Starter:
    """This worker's ``nhl_zygote.py`` process: one command at a time, in this worker's environment."""

    def __init__(self) -> None:
        self.environment = _comparable(os.environ)
        self.busy = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "nhl_zygote.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        hello = self.proc.stdout.readline()
        self.ready = bool(hello) and json.loads(hello).get("ready", False)
        if not self.ready:
            self.close()

    def get(self, environment: dict) -> _Starter | None:
        """This starter, locked for one command, when it can run one in ``environment``."""
        if not self.ready or _comparable(environment) != self.environment:
            return None
        if not self.busy.acquire(blocking=False):
            return None
        return self

    def run(self, args: tuple[str, ...], cwd: Path, environment: dict, timeout: float) -> Run:
        with tempfile.TemporaryDirectory(prefix="nhl-run-") as tmp:
            out, err = Path(tmp, "out"), Path(tmp, "err")
            out.touch()
            err.touch()
            umask = os.umask(0o022)
            os.umask(umask)
            request = {"args": args, "cwd": str(cwd), "env": environment, "umask": umask, "out": str(out),
                       "err": str(err), "timeout": timeout}  # fmt: skip
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            child = json.loads(self.proc.stdout.readline())["pid"]
            try:
                reply = json.loads(self.proc.stdout.readline())
            except BaseException:
                # interrupted (a test's alarm, Ctrl-C): kill the command as subprocess.run would, and
                # this starter, whose next reply would belong to the killed command
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child, signal.SIGKILL)
                self.proc.kill()
                self.ready = False
                raise
            if reply.get("timeout"):
                raise subprocess.TimeoutExpired([sys.executable, "-m", "nhlcli", *args], timeout)
            return Run(reply["code"], _as_text(out.read_bytes()), _as_text(err.read_bytes()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _comparable(environment) -> dict:
    """The environment less what pytest changes per test (``PYTEST_CURRENT_TEST``), which no
    import reads; the child still gets it."""
    return {key: value for key, value in environment.items() if key != "PYTEST_CURRENT_TEST"}


def _as_text(data: bytes) -> str:
    """Bytes decoded as ``subprocess.run(text=True)`` decodes them (locale encoding, universal newlines)."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


class _LazyStarter:
    """The starter, launched at the first ``run_nhl`` that can use it and closed when the worker ends."""

    def __init__(self) -> None:
        self.starter: _Starter | None = None

    def get(self, environment: dict) -> _Starter | None:
        if os.environ.get("NHL_TESTS_FRESH_PROCESSES") == "1":
            return None
        if self.starter is None:
            self.starter = _Starter()
            atexit.register(self.starter.close)
        return self.starter.get(environment)


_STARTER = _LazyStarter()


def assert_one_line_error(run: Run, *fragments: str) -> None:
    """A failed command: non-zero exit, one ``error:`` line naming the problem, no traceback."""
    assert run.code != 0, run.out
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1, run.err
    assert lines[0].startswith("error: "), run.err
    assert "Traceback" not in run.err + run.out
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def nhl():
    return run_nhl


@pytest.fixture(autouse=True)
def _release_output_locks():
    """The output locks a library call takes (``nhlcli.paths`` holds them until the process ends, as
    a command's) end with the test, so a later test's ``nhl`` subprocess may write those paths."""
    yield
    from nhlcli import locks

    locks.release_all()


# --------------------------------------------------------------------------- tiny trees and models
CLASSES = ["apple", "banana", "cherry", "daisy", "elm", "fig"]


def nested_tree(levels: int) -> Tree:
    """A hand-made tree with uneven fan-out whose leaf order differs from the class order."""
    if levels == 1:
        return flat_tree()
    fruit = [{"id": c, "name": c} for c in ("cherry", "apple", "banana", "fig")]
    plant = [{"id": c, "name": c} for c in ("daisy", "elm")]
    root = {
        "id": "root",
        "name": "all",
        "children": [
            {"id": "fruit", "name": "fruit", "children": fruit},
            {"id": "plant", "name": "plant", "children": plant},
        ],
    }
    return Tree.from_nested(_pad(root, levels), CLASSES, name=f"toy-l{levels}")


def _pad(node: dict, levels: int, depth: int = 0) -> dict:
    """Insert single-child chains so every class sits at depth ``levels``."""
    kids = node.get("children")
    if not kids:
        for d in range(levels - depth):
            node = {"id": f"{node['id']}~{d}", "name": node["name"], "children": [node]}
        return node
    return {**node, "children": [_pad(k, levels, depth + 1) for k in kids]}


def two_level_tree() -> Tree:
    """fruit (4 classes) and plant (2 classes); the leaf order differs from the class order."""
    return nested_tree(2)


def flat_tree() -> Tree:
    return build_flat_tree([ClassEntry(c, c) for c in CLASSES], name="flat")


def tiny_model(
    tree: Tree,
    backbone: str = "resnet18",
    size: int = 32,
    in_chans: int = 3,
    width: int = 8,
    kind: str = "nhl",
    seed: int | None = None,
    variant: str = "nhl",
    group_size: int = 0,
    pool_min_side: int = 0,
) -> torch.nn.Module:
    """The one small model the tests build: NHL (branch width ``width`` at every level; for the
    lean variants, those with a common output, widths doubling upwards, so levels differ in
    expansion; ``pool_min_side=1`` makes level 1 pool even the 2x2 map of a 32 px input) or flat,
    at ``size`` pixels, in eval mode; ``seed`` fixes the initial weights."""
    if seed is not None:
        torch.manual_seed(seed)
    trunk = TrunkConfig(backbone, None, in_chans)
    if kind == "nhl":
        preset = VARIANTS[variant].preset
        levels = tree.levels - int(preset.get("linear_leaves", False))  # linear leaves: no leaf level
        ladder = tuple(min(width * 2 ** (levels - 1 - d), 8 * width) for d in range(levels))
        widths = ladder if preset.get("common_output") else (width,) * levels
        branches = BranchConfig(widths=widths, group_size=group_size, pool_min_side=pool_min_side)
        model = create_model(tree, variant, trunk, branches)
    else:
        model = FlatModel(tree, trunk)
    model.input_config = with_input_size(model.input_config, size)
    return model.eval()


QUICK = GateTraining(epochs=3)  # gates fitted in seconds, for tests that need a gated model


def random_batches(n: int = 48, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random 32-pixel images with labels over :data:`CLASSES`."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=generator)
    y = torch.randint(0, len(CLASSES), (n,), generator=generator)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


FRUIT = ["apple", "banana", "cherry"]  # the classes of the small image folder the training tests share


@pytest.fixture(scope="module")
def fruit_folder(tmp_path_factory) -> Path:
    """A 3-class ImageFolder of 16 px images, 4 a class: the data of the quick training runs."""
    root = tmp_path_factory.mktemp("data") / "d"
    return make_tiny_data.make_image_folder(root, FRUIT, per_class=4, size=16)


def fruit_flat_model(seed: int = 0):
    """A flat resnet10t over ``FRUIT`` at 16 px, seeded."""
    from nhlcli.taxonomy.classes import ClassEntry
    from nhlcli.taxonomy.sources import build_flat_tree

    tree = build_flat_tree([ClassEntry(c, c) for c in FRUIT], name="toy")
    return tiny_model(tree, backbone="resnet10t", kind="flat", size=16, seed=seed)


def quick_train_config(**changes: object):
    """Two epochs of two steps on the fruit folder, float32, no workers: a training run in seconds."""
    from nhlcli.training import TrainConfig

    base = dict(
        epochs=2, batch_size=4, lr=3e-4, warmup_epochs=0, workers=0, augment=None, seed=0, amp=False,
        max_steps_per_epoch=2,
    )  # fmt: skip
    return TrainConfig(**{**base, **changes})
