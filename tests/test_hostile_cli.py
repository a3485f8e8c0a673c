"""Hostile but fair command lines (issue 34): empty and odd values that used to mean something
silently, extreme option values, usage errors, and names that could drive the terminal. Every case
is one parametrised row of (what the user typed, what the one-line error must say); add rows as new
cases are found."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from conftest import CLASSES, assert_one_line_error, make_tiny_data, run_nhl, tiny_model, two_level_tree

from nhlcli.model.files import save_model

ESC = "\x1b"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny NHL model, its tree, a tiny ImageFolder and class-list files, in one folder."""
    root = tmp_path_factory.mktemp("hostile-cli")
    torch.manual_seed(0)
    save_model(tiny_model(two_level_tree()), root / "m.safetensors")
    two_level_tree().save(root / "tree.json")
    make_tiny_data.make_image_folder(root / "data", CLASSES, per_class=2, size=32)
    (root / "empty.txt").write_text("\n  \n", encoding="utf-8")
    (root / "bom.txt").write_bytes(b"\xef\xbb\xbfapple\nbanana\n")
    tree = json.loads((root / "tree.json").read_text())
    tree["tree"]["children"][0]["name"] = "[bold red]fruit[/]"  # rich markup in a name
    (root / "markup.json").write_text(json.dumps(tree))
    return root


TRAIN = ("train", "--data", "data", "--hierarchy", "tree.json", "-o", "out.safetensors", "--epochs", "1")
GATED = ("gates", "tune", "m.safetensors", "--data", "data")
BUILD = ("hierarchy", "build", "-s", "flat", "-c", "bom.txt", "-o", "t.json")

CASES = [
    # ------------------------------------------------------- empty or odd values that meant something
    ("classes ,,, (cutout)", ("cutout", "m.safetensors", "--classes", ",,,", "-o", "e.safetensors"),
     ["--classes ',,,' names no class", "give at least one"]),
    ("classes ,,, (train)", (*TRAIN, "--classes", " , ,"), ["--classes ' , ,' names no class"]),
    ("freeze a random trunk", (*TRAIN, "--freeze-trunk"), ["--freeze-trunk", "random", "--pretrained"]),
    ("classes ,,, (eval)", ("eval", "m.safetensors", "--data", "data", "--classes", ",,,"),
     ["--classes ',,,' names no class"]),
    ("classes @empty file", ("cutout", "m.safetensors", "--classes", "@empty.txt", "-o", "e.safetensors"),
     ["--classes '@empty.txt' names no class"]),
    ("classes @ alone", ("cutout", "m.safetensors", "--classes", "@", "-o", "e.safetensors"),
     ["--classes '@'", "give the file after @"]),
    ("classes empty", ("cutout", "m.safetensors", "--classes", "", "-o", "e.safetensors"),
     ["--classes is empty"]),
    ("data empty", (*TRAIN[:1], "--data", "", *TRAIN[3:]), ["--data is empty", "leave the option out"]),
    ("data blank", ("eval", "m.safetensors", "--data", "  "), ["--data is empty"]),
    ("data=", ("gates", "fit", "m.safetensors", "-o", "g.safetensors", "--data="), ["--data is empty"]),
    ("workdir empty", ("demo", "--workdir", ""), ["--workdir is empty", "nhl demo --help"]),
    ("workdir=", ("demo", "--workdir="), ["--workdir is empty"]),
    ("hierarchy empty", (*TRAIN[:3], "--hierarchy", "", *TRAIN[5:]), ["--hierarchy is empty"]),
    ("output empty, short flag", ("cutout", "m.safetensors", "--classes", "apple", "-o", ""),
     ["--output is empty", "give a value"]),
    ("report empty", ("cutout", "m.safetensors", "--classes", "apple", "-o", "e.safetensors", "--report", ""),
     ["--report is empty"]),
    ("cache empty", ("hierarchy", "build", "-s", "flat", "-c", "bom.txt", "-o", "t.json", "--cache", ""),
     ["--cache is empty"]),
    ("checkpoint-dir empty", (*TRAIN, "--checkpoint-dir", ""), ["--checkpoint-dir is empty"]),
    ("model argument empty", ("profile", ""), ["an argument is empty", "nhl profile --help"]),
    ("tree argument empty", ("hierarchy", "show", ""), ["an argument is empty"]),
    ("variant empty", (*TRAIN, "--variant", ""), ["--variant is empty", "nhl-lean", "phl-small"]),
    ("split -1", (*TRAIN, "--split", "-1"), ["--split -1", "resnet18 has stages 0 to 4", "counted from 0"]),
    ("split too large", (*TRAIN, "--split", "9"), ["split 9 is out of range", "stages 0 to 4"]),
    ("depth 0", ("hierarchy", "show", "tree.json", "--depth", "0"), ["--depth 0", "from 1"]),
    ("depth -2", ("hierarchy", "show", "tree.json", "--depth", "-2"), ["--depth -2", "from 1"]),
    ("depth past the leaves", ("hierarchy", "show", "tree.json", "--depth", "7"),
     ["--depth 7", "the tree has 2 levels"]),
    ("png into .svg", ("hierarchy", "show", "tree.json", "-f", "png", "-o", "x.svg"),
     ["--format png", "x.svg", "give --format svg"]),
    ("dot into .json", ("hierarchy", "show", "tree.json", "-f", "dot", "-o", "x.json"),
     ["--format dot", "x.json"]),
    ("svg into .txt", ("hierarchy", "show", "tree.json", "-f", "svg", "-o", "x.txt"),
     ["--format svg", "name the file .svg"]),
    ("no format, unknown extension", ("hierarchy", "show", "tree.json", "-o", "x.txt"),
     ["cannot tell the format", "--format"]),
    ("curve into .svg", ("profile", "m.safetensors", "--no-latency", "--curve", "c.svg"),
     ["--curve c.svg", "PNG"]),
    # ------------------------------------------------------------------------------ extreme values
    ("widths 100000", (*TRAIN, "--variant", "nhl", "--widths", "100000,100000"),
     ["--widths 100000,100000 would give the branches", "GB", "smaller"]),
    ("widths 100000 (linear leaves)", (*TRAIN, "--widths", "100000"),
     ["--widths 100000 would give the branches", "GB", "smaller"]),
    ("widths beyond a tensor", (*TRAIN, "--widths", f"{10**30}"), ["--widths", "smaller"]),
    ("widths and blocks", (*TRAIN, "--variant", "nhl", "--widths", "4096,4096", "--blocks", "2"),
     ["--widths 4096,4096", "--blocks"]),
    ("widths for the leaf level too", (*TRAIN, "--widths", "64,32"),
     ["--widths", "gives 2 values", "1 branch level above the leaves"]),
    ("seed 2**70", (*TRAIN, "--seed", str(2**70)), ["--seed"]),
    ("threads 1000000 (cutout)",
     ("cutout", "m.safetensors", "--classes", "apple", "-o", "e.safetensors", "--threads", "1000000"),
     ["--threads 1000000", "CPU cores"]),
    ("threads 0 (profile)", ("profile", "m.safetensors", "--threads", "0"), ["--threads 0"]),
    ("batch size 10**9 (profile)", ("profile", "m.safetensors", "--batch-size", str(10**9)),
     ["--batch-size must be 1 to 1,024", "1,000,000,000"]),
    ("batch size 0 (cutout)",
     ("cutout", "m.safetensors", "--classes", "apple", "-o", "e.safetensors", "--batch-size", "0"),
     ["--batch-size must be 1 to 1,024"]),
    ("gates lr nan", ("gates", "fit", "m.safetensors", "-o", "g.safetensors", "--lr", "nan"),
     ["--lr nan", "finite"]),
    ("gates lr inf", ("gates", "fit", "m.safetensors", "-o", "g.safetensors", "--lr", "inf"), ["--lr inf"]),
    ("gates lr -inf", ("gates", "fit", "m.safetensors", "-o", "g.safetensors", "--lr=-inf"), ["--lr -inf"]),
    ("gates lr 0", ("gates", "fit", "m.safetensors", "-o", "g.safetensors", "--lr", "0"),
     ["--lr 0", "positive"]),
    ("gates lr negative", ("gates", "fit", "m.safetensors", "-o", "g.safetensors", "--lr=-0.1"),
     ["--lr -0.1"]),
    ("gates epochs 0", ("gates", "fit", "m.safetensors", "-o", "g.safetensors", "--epochs", "0"),
     ["--epochs", "at least 1"]),
    ("train lr nan", (*TRAIN, "--lr", "nan"), ["--lr nan", "finite"]),
    ("train weight decay inf", (*TRAIN, "--weight-decay", "inf"), ["--weight-decay inf"]),
    ("train warmup nan", (*TRAIN, "--warmup-epochs", "nan"), ["--warmup-epochs nan"]),
    ("train label smoothing nan", (*TRAIN, "--label-smoothing", "NaN"), ["--label-smoothing nan"]),
    ("train holdout inf", (*TRAIN, "--holdout", "inf"), ["--holdout inf"]),
    ("tune max drop nan", (*GATED, "--max-drop", "nan"), ["--max-drop nan"]),
    ("tune target inf", (*GATED, "--target-accuracy", "inf"), ["--target-accuracy inf"]),
    ("tune target 0, before any image", (*GATED, "--target-accuracy", "0", "--data", "no-such-data"),
     ["--target-accuracy 0", "percent"]),
    ("export tolerance nan", ("export", "m.safetensors", "-o", "m.onnx", "--tolerance", "nan"),
     ["--tolerance nan"]),
    ("llm timeout nan", (*BUILD, "--timeout", "nan"), ["--timeout nan"]),
    ("llm timeout 0", (*BUILD, "--timeout", "0"), ["--timeout 0"]),
    ("llm retries -1", (*BUILD, "--max-retries", "-1"), ["--max-retries -1"]),
    # ------------------------------------------------------- usage errors: one line, no boxed panel
    ("unknown option", ("train", "--bogus"), ["No such option: --bogus", "nhl train --help"]),
    ("unknown command", ("bogus",), ["No such command 'bogus'", "nhl --help"]),
    ("misspelt sub-command", ("hierarchy", "shw"), ["No such command 'shw'", "show"]),
    ("missing argument", ("hierarchy", "show"), ["Missing argument", "nhl hierarchy show --help"]),
    ("missing option", ("cutout", "m.safetensors", "--classes", "apple"), ["Missing option", "--output"]),
    ("not a whole number", ("train", "--epochs", "two", "-o", "x.safetensors"), ["--epochs", "integer"]),
    ("not a number", ("gates", "fit", "m.safetensors", "-o", "g.safetensors", "--lr", "fast"), ["--lr"]),
    ("option without its value", ("cutout", "m.safetensors", "--classes"),
     ["--classes", "requires an argument"]),
    ("extra argument", ("hierarchy", "stats", "tree.json", "more.json"), ["unexpected extra argument"]),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("args", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_hostile_command_line_is_refused_in_one_line(files, args, fragments):
    before = sorted(p.name for p in files.iterdir())
    run = run_nhl(*args, cwd=files)
    assert_one_line_error(run, *fragments)
    assert not re.search("[\u2500-\u257f]", run.err), run.err  # no box drawn around the message
    assert sorted(p.name for p in files.iterdir()) == before  # nothing written, not even in part


COMMANDS = [
    (), ("train",), ("eval",), ("cutout",), ("profile",), ("predict",), ("export",), ("demo",),
    ("hierarchy",), ("hierarchy", "build"), ("hierarchy", "show"), ("hierarchy", "compare"),
    ("hierarchy", "resolve"), ("hierarchy", "validate"), ("hierarchy", "stats"), ("hierarchy", "list"),
    ("hierarchy", "setup-wordnet"), ("gates",), ("gates", "fit"), ("gates", "tune"), ("gates", "sweep"),
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "nhl" for c in COMMANDS])
def test_help_still_works(command):
    run = run_nhl(*command, "--help")
    assert run.code == 0, run.err
    assert "Usage: nhl" in run.out and not run.err


@pytest.mark.slow
def test_a_byte_order_mark_in_a_class_file_is_dropped(files, tmp_path):
    run = run_nhl(
        "cutout", files / "m.safetensors", "--classes", f"@{files / 'bom.txt'}", "--no-latency", "--json",
        "-o", tmp_path / "e.safetensors",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert json.loads(run.out)["kept_classes"] == ["apple", "banana"]


@pytest.mark.parametrize(
    ("name", "magic"), [("t.svg", b"<svg"), ("t.png", b"\x89PNG"), ("t.dot", b"digraph")]
)
def test_show_writes_the_format_its_output_is_named(files, tmp_path, name, magic):
    run = run_nhl("hierarchy", "show", files / "tree.json", "-o", tmp_path / name)
    assert run.code == 0, run.err
    assert magic in (tmp_path / name).read_bytes()[:400]


@pytest.mark.parametrize("fmt", ["rich", "dot", "mermaid", "json"])
def test_rich_markup_in_a_name_prints_as_itself(files, fmt):
    run = run_nhl("hierarchy", "show", files / "markup.json", "--format", fmt)
    assert run.code == 0, run.err
    assert "[bold red]fruit[/]" in run.out


def test_escape_sequences_typed_on_the_command_line_are_never_echoed_raw():
    for args in (("hierarchy", "resolve", "fashion-mnist-wordnet-l2", f"{ESC}[2Jzzz"), (f"{ESC}]0;title",)):
        run = run_nhl(*args)
        assert_one_line_error(run)
        assert ESC not in run.err and "\\x1b" in run.err


@pytest.mark.parametrize("fmt", ["rich", "dot", "mermaid", "json"])
def test_an_older_tree_with_escape_sequences_in_its_names_prints_them_escaped(
    files, tmp_path, monkeypatch, capsys, fmt
):
    """Trees written before names were checked on load: the printing is safe on its own."""
    import nhlcli.taxonomy.tree as tree_module
    from nhlcli.cli import main

    tree = json.loads((files / "tree.json").read_text())
    tree["name"] = f"{ESC}]0;pwned{chr(7)}"
    tree["tree"]["children"][0]["name"] = f"{ESC}[31mfruit{chr(0x9B)}2J"
    (tmp_path / "old.json").write_text(json.dumps(tree))
    monkeypatch.setattr(tree_module, "name_problem", lambda text: None)  # as an older nhl read it
    monkeypatch.setattr(tree_module, "control_character", lambda text: None)
    with pytest.raises(SystemExit) as exit_status:
        main(["hierarchy", "show", str(tmp_path / "old.json"), "--format", fmt])
    out = capsys.readouterr().out
    assert exit_status.value.code == 0
    assert ESC not in out and chr(0x9B) not in out and chr(7) not in out
    assert "fruit" in out


@pytest.mark.slow
def test_the_thread_bound_follows_the_machine(files):
    cores = os.cpu_count() or 1
    run = run_nhl("profile", files / "m.safetensors", "--threads", str(4 * cores + 1))
    assert_one_line_error(run, f"give 1 to {4 * cores}")
