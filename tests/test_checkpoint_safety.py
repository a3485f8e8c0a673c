"""Nothing lost under crashes and concurrent use (issue 34, "Data loss"): crash-consistent checkpoints,
checkpoint directories nhl does not own, outputs inside the data or the checkpoint, advisory locks on
every output, symlinked outputs, hand-edited checkpoint sidecars, and ``--resume`` taking the run's
options. Each case is a row of a parametrised matrix; add new cases as rows."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    FRUIT,
    QUICK,
    assert_one_line_error,
    fruit_flat_model,
    quick_train_config,
    random_batches,
    run_nhl,
    tiny_model,
)
from safetensors.torch import load_file

from nhlcli import locks
from nhlcli.atomic import atomic_write_json, atomic_write_text
from nhlcli.errors import NhlError
from nhlcli.gates import fit_gates
from nhlcli.model.files import save_model
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.sources import build_flat_tree
from nhlcli.training import checkpoint as ckpt
from nhlcli.training import train
from nhlcli.training.loop import resolve_config

CLASSES = FRUIT
SMALL = [
    "--flat", "--backbone", "resnet10t", "--input-size", "16", "--batch-size", "4", "--workers", "0",
    "--augment", "none", "--no-amp", "--max-steps-per-epoch", "2",
]  # fmt: skip


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_of(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its digest: what a user would compare before and after."""
    return {str(p.relative_to(path)): digest(p) for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def folder(fruit_folder: Path) -> Path:
    return fruit_folder


flat_model = fruit_flat_model
small_config = quick_train_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, folder) -> Path:
    """The checkpoint directory of a finished 1-epoch run made by the CLI (``--epochs 2`` resumes it)."""
    root = tmp_path_factory.mktemp("run")
    run = run_nhl("train", "--data", folder, "-o", root / "m.safetensors", *SMALL, "--epochs", "1")
    assert run.code == 0, run.err
    ckdir = root / "base.ckpt"
    os.replace(root / "m.safetensors.ckpt", ckdir)
    return ckdir


def copy_dir(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


# ------------------------------------------------------------------ directories nhl does not own
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, content, default_dir, extra",
    [
        ("last.json", "notes\n", False, []),
        ("notes.txt", "mine", False, ["--overwrite"]),
        ("last.safetensors", "x", True, []),
        (".env", "k", True, ["--overwrite"]),
        ("last.json", "notes\n", True, ["--resume"]),
    ],
)
def test_a_checkpoint_directory_holding_a_foreign_file_is_refused_and_left_alone(
    tmp_path, folder, name, content, default_dir, extra
):
    out = tmp_path / "m.safetensors"
    ckdir = Path(f"{out}.ckpt") if default_dir else tmp_path / "u"
    ckdir.mkdir()
    (ckdir / name).write_text(content)
    before = tree_of(ckdir)
    args = [] if default_dir else ["--checkpoint-dir", ckdir]
    run = run_nhl("train", "--data", folder, "-o", out, *SMALL, "--epochs", "1", *args, *extra)
    if extra == ["--resume"]:
        assert_one_line_error(run)  # not an nhl checkpoint: nothing to resume, nothing written
    else:
        assert_one_line_error(run, name, "nhl did not write", "--checkpoint-dir")
    assert tree_of(ckdir) == before
    assert not out.exists()


@pytest.mark.slow
def test_nhls_own_directory_is_marked_and_accepted_again(tmp_path, folder):
    out = tmp_path / "m.safetensors"
    for _ in range(2):  # the second run finds a finished run's directory: its own, so accepted
        run = run_nhl("train", "--data", folder, "-o", out, *SMALL, "--epochs", "1")
        assert run.code == 0, run.err
    ckdir = Path(f"{out}.ckpt")
    assert sorted(p.name for p in ckdir.iterdir()) == ["epoch-0001", ckpt.MARKER_NAME, ckpt.SUMMARY_FILE]


# -------------------------------------------------------------------- outputs that would do harm
@pytest.mark.slow
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-o", "{data}/train/m.safetensors"], "inside the data folder"),
        (["-o", "{data}/m.safetensors"], "inside the data folder"),
        (["-o", "{tmp}/m.safetensors", "--checkpoint-dir", "{data}/ck"], "inside the data folder"),
        (
            ["-o", "{tmp}/ck/last.safetensors", "--checkpoint-dir", "{tmp}/ck"],
            "inside the checkpoint directory",
        ),
        (
            ["-o", "{tmp}/ck/sub/m.safetensors", "--checkpoint-dir", "{tmp}/ck"],
            "inside the checkpoint directory",
        ),
    ],
)
def test_an_output_inside_the_data_or_the_checkpoint_is_refused_before_work(tmp_path, folder, args, fragment):
    before = tree_of(folder)
    given = [a.format(data=folder, tmp=tmp_path) for a in args]
    run = run_nhl("train", "--data", folder, *SMALL, "--epochs", "1", *given)
    assert_one_line_error(run, fragment)
    assert "epoch" not in run.out
    assert tree_of(folder) == before and sorted(folder.iterdir()) == [folder / "train", folder / "val"]
    assert not (tmp_path / "ck").exists() and not (tmp_path / "m.safetensors").exists()


# --------------------------------------------------------------------------- crash consistency
def _crash_at(monkeypatch, where: str, epoch: int) -> None:
    """Make the save of ``epoch`` die at ``where`` (as a kill -9 there would stop it)."""

    class Crash(BaseException):  # not an Exception: nothing may catch and carry on
        pass

    real_write, real_replace, real_retire = ckpt._write_synced, os.replace, ckpt._retire
    state = {"epoch": None}
    real_save = ckpt.save_checkpoint

    def save(directory, model, optimizer, scheduler, epoch_done, step, extra=None):
        state["epoch"] = epoch_done
        return real_save(directory, model, optimizer, scheduler, epoch_done, step, extra)

    def write(path, data):
        if state["epoch"] == epoch and where == "weights" and path.name == ckpt.WEIGHTS_FILE:
            path.write_bytes(data[: len(data) // 2])  # half the bytes reached the disk
            raise Crash
        if state["epoch"] == epoch and where == "state" and path.name == ckpt.STATE_FILE:
            raise Crash
        real_write(path, data)

    def replace(src, dst):
        if state["epoch"] == epoch and where == "rename" and Path(dst).name.startswith("epoch-"):
            raise Crash
        real_replace(src, dst)

    def retire(entry):
        if state["epoch"] == epoch and where == "retire" and entry.exists():
            raise Crash
        real_retire(entry)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    monkeypatch.setattr(ckpt, "_write_synced", write)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    monkeypatch.setattr(ckpt, "_retire", retire)
    return Crash


@pytest.mark.parametrize("where, survivor", [("weights", 1), ("state", 1), ("rename", 1), ("retire", 2)])
def test_a_crash_during_a_save_keeps_the_last_complete_checkpoint_and_resume_finishes(
    tmp_path, folder, monkeypatch, where, survivor
):
    out, ckdir = tmp_path / "m.safetensors", tmp_path / "ck"
    crash = _crash_at(monkeypatch, where, epoch=2)
    with pytest.raises(crash):
        train(flat_model(), folder, out, small_config(epochs=3), checkpoint_dir=ckdir)
    monkeypatch.undo()
    locks.release_all()
    assert ckpt.load_checkpoint(ckdir).epoch == survivor  # complete, digest checked
    assert not out.exists()
    config = resolve_config({}, ckdir)
    result = train(flat_model(seed=1), folder, out, config, checkpoint_dir=ckdir, resume=True)
    assert result.epochs_done == 3 and out.is_file()
    # the half-made directories are gone, and only the newest checkpoint is kept
    assert sorted(p.name for p in ckdir.iterdir()) == ["epoch-0003", ckpt.MARKER_NAME, ckpt.SUMMARY_FILE]


@pytest.mark.slow
def test_a_kill_9_while_saving_leaves_a_resumable_run(tmp_path, folder):
    """The real thing: SIGKILL the moment a checkpoint's temporary directory appears."""
    out, ckdir = tmp_path / "m.safetensors", tmp_path / "ck"
    args = ["train", "--data", folder, "-o", out, "--checkpoint-dir", ckdir, *SMALL, "--epochs", "3"]
    proc = subprocess.Popen([sys.executable, "-m", "nhlcli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            names = [p.name for p in ckdir.iterdir()] if ckdir.is_dir() else []
            if any(n.startswith((".epoch-0002", "epoch-0002")) for n in names):  # saving, or just saved
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert ckpt.load_checkpoint(ckdir).epoch in (1, 2)
    fresh = run_nhl("train", "--data", folder, "-o", out, "--checkpoint-dir", ckdir, *SMALL, "--epochs", "3")
    assert_one_line_error(fresh, "unfinished run", "--resume")  # the epochs are not thrown away
    run = run_nhl("train", "-o", out, "--checkpoint-dir", ckdir, "--resume")
    assert run.code == 0, run.err
    assert "after 3 epochs" in run.out
    assert sorted(p.name for p in ckdir.iterdir()) == ["epoch-0003", ckpt.MARKER_NAME, ckpt.SUMMARY_FILE]


@pytest.mark.slow
def test_stale_temporary_files_of_the_first_format_are_cleaned(tmp_path, folder):
    out = tmp_path / "m.safetensors"
    ckdir = Path(f"{out}.ckpt")
    ckdir.mkdir()
    (ckdir / ".last.safetensors.abc123.tmp").write_bytes(b"")  # what a kill -9 left before
    run = run_nhl("train", "--data", folder, "-o", out, *SMALL, "--epochs", "1")
    assert run.code == 0, run.err
    assert sorted(p.name for p in ckdir.iterdir()) == ["epoch-0001", ckpt.MARKER_NAME, ckpt.SUMMARY_FILE]


@pytest.mark.slow
def test_a_first_format_checkpoint_still_resumes(tmp_path, folder, finished_run):
    ckdir = tmp_path / "old"
    ckdir.mkdir()
    newest = ckpt.latest(finished_run)
    (ckdir / ckpt.OLD_SIDECAR).write_bytes(newest[0].read_bytes())
    (ckdir / ckpt.OLD_WEIGHTS).write_bytes(newest[1].read_bytes())
    run = run_nhl(
        "train", "-o", tmp_path / "m.safetensors", "--checkpoint-dir", ckdir, "--resume", "--epochs", "2"
    )
    assert run.code == 0, run.err
    assert sorted(p.name for p in ckdir.iterdir()) == ["epoch-0002", ckpt.MARKER_NAME, ckpt.SUMMARY_FILE]


# ------------------------------------------------------------------------- hand-edited sidecars
def _set(path: list, value):
    def edit(meta):
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _drop(key):
    return lambda meta: meta.pop(key)


SIDECAR_EDITS = {
    "bad rng": (_set(["rng", "python"], [3, [1, 2], None]), "rng.python"),
    "numpy rng position": (_set(["rng", "numpy", 2], 5000), "rng.numpy"),
    "missing optimizer": (_drop("optimizer"), "'optimizer' is missing"),
    "epoch 'two'": (_set(["epoch"], "two"), "'epoch' must be a whole number"),
    "negative step": (_set(["step"], -1), "'step'"),
    "config epochs 'two'": (_set(["extra", "config", "epochs"], "two"), "'epochs'"),
    "config lr a list": (_set(["extra", "config", "lr"], [1]), "'lr'"),
    "history of strangers": (_set(["extra", "history"], [{"x": 1}]), "history"),
    "optimizer groups": (_set(["optimizer", "param_groups"], [{"lr": 1}]), "parameter groups"),
    "schedule key": (_set(["scheduler", "foo"], 1), "'foo'"),
    "schedule type": (_set(["scheduler", "t_initial"], "x"), "t_initial"),
    "option type": (_set(["extra", "options", "blocks"], "x"), "'blocks'"),
    "model not an object": (_set(["model"], "resnet"), "'model'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SIDECAR_EDITS))
def test_a_hand_edited_sidecar_is_one_line_not_a_traceback(tmp_path, finished_run, case):
    edit, fragment = SIDECAR_EDITS[case]
    ckdir = copy_dir(finished_run, tmp_path / "ck")
    sidecar = ckpt.latest(ckdir)[0]
    meta = json.loads(sidecar.read_text())
    edit(meta)  # the weights are untouched, so their digest still matches
    sidecar.write_text(json.dumps(meta))
    before = tree_of(ckdir)
    run = run_nhl("train", "-o", tmp_path / "m.safetensors", "--checkpoint-dir", ckdir, "--resume")
    assert_one_line_error(run, fragment)
    assert tree_of(ckdir) == before


@pytest.mark.slow
@pytest.mark.parametrize("cut", [0, 100])
def test_a_truncated_sidecar_is_called_damaged_not_missing(tmp_path, folder, finished_run, cut):
    ckdir = copy_dir(finished_run, tmp_path / "ck")
    sidecar = ckpt.latest(ckdir)[0]
    sidecar.write_bytes(sidecar.read_bytes()[:cut])
    for extra in (["--resume"], ["--data", folder, *SMALL]):
        run = run_nhl("train", "-o", tmp_path / "m.safetensors", "--checkpoint-dir", ckdir, *extra)
        assert_one_line_error(run, "damaged", "--overwrite")
        assert "no checkpoint" not in run.err


@pytest.mark.slow
def test_truncated_weights_are_called_damaged(tmp_path, finished_run):
    ckdir = copy_dir(finished_run, tmp_path / "ck")
    weights = ckpt.latest(ckdir)[1]
    weights.write_bytes(weights.read_bytes()[:1000])
    run = run_nhl("train", "-o", tmp_path / "m.safetensors", "--checkpoint-dir", ckdir, "--resume")
    assert_one_line_error(run, "damaged", "digest")


# ------------------------------------------------------------------------- --resume on its own
@pytest.mark.slow
def test_resume_alone_takes_data_model_and_tree_from_the_checkpoint(tmp_path, finished_run):
    ckdir = copy_dir(finished_run, tmp_path / "ck")
    out = tmp_path / "m.safetensors"
    # no --data, --flat, --backbone, --input-size: all the run's; --epochs 2 trains one more
    run = run_nhl("train", "-o", out, "--checkpoint-dir", ckdir, "--resume", "--epochs", "2", cwd=tmp_path)
    assert run.code == 0, run.err
    assert "after 2 epochs" in run.out
    meta = json.loads(ckpt.latest(ckdir)[0].read_text())
    assert meta["model"]["trunk"]["backbone"] == "resnet10t" and meta["model"]["input"]["size"] == [3, 16, 16]


@pytest.mark.slow
@pytest.mark.parametrize(
    "option, fragment",
    [
        (["--backbone", "resnet18"], "trunk.backbone is 'resnet10t', the options give 'resnet18'"),
        (["--input-size", "32"], "input.size is [3, 16, 16], the options give [3, 32, 32]"),
        (["--variant", "nhl", "--hierarchy", "{tree}"], "the checkpoint's kind is 'flat'"),
    ],
)
def test_resume_with_another_model_says_what_differs(tmp_path, finished_run, option, fragment):
    ckdir = copy_dir(finished_run, tmp_path / "ck")
    tree = tmp_path / "t.json"
    build_flat_tree([ClassEntry(c, c) for c in CLASSES], name="toy").save(tree)
    given = [o.format(tree=tree) for o in option]
    run = run_nhl("train", "-o", tmp_path / "m.safetensors", "--checkpoint-dir", ckdir, "--resume", *given)
    assert_one_line_error(run, fragment)


# ------------------------------------------------------------------------------------- locks
HOLDER = """
import sys, time
from nhlcli import locks
locks.hold(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder():
    """Hold the lock on a path from another process, as a running nhl command would."""
    procs = []

    def hold(path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, folder):
    root = tmp_path_factory.mktemp("models")
    tree = build_flat_tree([ClassEntry(c, c) for c in CLASSES], name="toy")
    save_model(flat_model(), root / "flat.safetensors")
    from conftest import two_level_tree

    save_model(tiny_model(two_level_tree(), seed=0), root / "nhl.safetensors")
    gated = fit_gates(tiny_model(two_level_tree(), seed=0), random_batches(n=16), config=QUICK)
    save_model(gated, root / "gated.safetensors")
    tree.save(root / "t.json")
    return root


LOCKED_COMMANDS = {
    "train": (["train", "--data", "{data}", "-o", "{out}", *SMALL, "--epochs", "1"], "m.safetensors"),
    "train checkpoint dir": (
        ["train", "--data", "{data}", "-o", "{tmp}/other.safetensors", "--checkpoint-dir", "{out}", *SMALL],
        "ck",
    ),
    "cutout": (["cutout", "{models}/nhl.safetensors", "--classes", "apple", "-o", "{out}"], "e.safetensors"),
    "export": (["export", "{models}/flat.safetensors", "-o", "{out}"], "m.onnx"),
    "hierarchy build": (
        ["hierarchy", "build", "--source", "flat", "--classes", "a,b,c", "-o", "{out}"],
        "t.json",
    ),
    "gates fit": (
        ["gates", "fit", "{models}/nhl.safetensors", "-o", "{out}", "--data", "{data}", "--workers", "0"],
        "g.safetensors",
    ),
    "gates tune": (
        ["gates", "tune", "{models}/gated.safetensors", "--data", "{data}", "--max-drop", "1", "-o", "{out}"],
        "tuned.safetensors",
    ),
    "demo": (["demo", "--workdir", "{out}", "--epochs", "1"], "w"),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(LOCKED_COMMANDS))
def test_a_second_writer_of_an_output_is_refused_naming_the_first(
    tmp_path, folder, model_files, holder, command
):
    args, name = LOCKED_COMMANDS[command]
    out = tmp_path / name
    first = holder(out)
    given = [a.format(data=folder, out=out, tmp=tmp_path, models=model_files) for a in args]
    run = run_nhl(*given)
    assert_one_line_error(run, "is being written by another nhl process", f"pid {first.pid}", name)
    assert not out.exists()


@pytest.mark.parametrize("spelling", ["same", "dot-dot", "symlink"])
def test_one_output_spelled_two_ways_meets_one_lock(tmp_path, holder, spelling):
    out = tmp_path / "m.safetensors"
    (tmp_path / "sub").mkdir()
    other = {
        "same": out,
        "dot-dot": tmp_path / "sub" / ".." / "m.safetensors",
        "symlink": tmp_path / "link.safetensors",
    }[spelling]
    if spelling == "symlink":
        other.symlink_to(out)
    holder(out)
    with pytest.raises(NhlError, match="being written by another nhl process"):
        locks.hold(other)


def test_a_lock_is_reentrant_given_back_at_exit_and_leaves_no_file(tmp_path, holder):
    out = tmp_path / "m.safetensors"
    assert locks.hold(out) is True
    assert locks.hold(out) is False  # the same process again: fine
    with locks.holding(out):
        pass
    assert locks.lock_key(out) in locks._held  # the outer hold is still in force
    locks.release_all()
    assert (
        list(locks.lock_directory().glob(hashlib.sha256(str(out.resolve()).encode()).hexdigest() + "*")) == []
    )
    proc = holder(out)  # another process can take it now
    proc.kill()
    proc.wait()  # killed: the kernel drops its lock, so no stale lock survives a crash
    assert locks.hold(out) is True


# --------------------------------------------------------------------------- symlinked outputs
@pytest.mark.parametrize(
    "write",
    [
        lambda path: atomic_write_text(path, "new\n"),
        lambda path: atomic_write_json(path, {"new": True}),
        lambda path: save_model(flat_model(), path),
    ],
    ids=["text", "json", "model"],
)
def test_a_symlinked_output_is_written_through_the_link(tmp_path, write):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "cache.dat"
    target.write_text("old\n")
    link = tmp_path / "cache.dat"
    link.symlink_to(target)
    write(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() != b"old\n" and link.read_bytes() == target.read_bytes()
    assert [p.name for p in shared.iterdir()] == ["cache.dat"]  # no temporary file left beside it


def test_the_resumed_weights_come_from_the_last_complete_checkpoint(tmp_path, folder, monkeypatch):
    """The checkpoint a crash leaves is the one written at the end of the last whole epoch: its
    model weights are exactly those of that epoch's save."""
    out, ckdir = tmp_path / "m.safetensors", tmp_path / "ck"
    seen = {}
    real = ckpt.save_checkpoint

    def save(directory, model, optimizer, scheduler, epoch, step, extra=None):
        seen[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real(directory, model, optimizer, scheduler, epoch, step, extra)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    train(flat_model(), folder, out, small_config(epochs=2), checkpoint_dir=ckdir)
    tensors = load_file(str(ckpt.latest(ckdir)[1]))
    for name, value in seen[2].items():
        assert torch.equal(tensors[f"model/{name}"], value), name
