"""``nhl predict`` over many images: folders and patterns as inputs, CSV and JSON-lines output, and
unreadable images that get an error row instead of stopping the run (CPU, tiny, nothing downloads)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK, assert_one_line_error, random_batches, run_nhl, tiny_model, two_level_tree
from PIL import Image

from nhlcli.errors import NhlError
from nhlcli.gates import fit_gates
from nhlcli.model.files import save_model
from nhlcli.model.loading import open_model
from nhlcli.prediction import csv_columns, expand_inputs, predict_images

WIDE = {**os.environ, "COLUMNS": "1000"}  # tables unwrapped, so their rows can be read back
ROW = re.compile(r"^[│|]\s*1\s*[│|]\s*(\S+)\s*[│|]\s*(\S+)\s*[│|]\s*([\d.]+%)\s*[│|]\s*$")


def write_png(path: Path, seed: int, size: tuple[int, int] = (36, 28)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny NHL model, a gated one whose images all leave at the first gate, and a folder of
    images: four at the top, two in a subfolder (one a JPEG), with a text file and a hidden image
    that the walk leaves out."""
    root = tmp_path_factory.mktemp("predict-outputs")
    torch.manual_seed(0)
    save_model(tiny_model(two_level_tree()), root / "m.safetensors")
    gated = fit_gates(tiny_model(two_level_tree(), seed=0), random_batches(n=16), config=QUICK)
    gated.set_thresholds([-math.inf] * len(gated.exits))
    save_model(gated, root / "gated.safetensors")
    images = root / "images"
    top = [write_png(images / f"img{i}.png", i) for i in range(4)]
    nested = [write_png(images / "more" / "deep.png", 10), images / "more" / "photo.jpg"]
    Image.open(top[0]).convert("RGB").resize((50, 40)).save(nested[1])
    (images / "notes.txt").write_text("not an image")
    write_png(images / ".hidden.png", 20)
    return {"root": root, "model": root / "m.safetensors", "gated": root / "gated.safetensors",
            "images": images, "top": top, "all": sorted(top + nested)}  # fmt: skip


def cli(setup, *args: str, env: dict | None = None):
    return run_nhl("predict", setup["model"], *map(str, args), "--device", "cpu", env=env)


def json_predictions(run) -> list[dict]:
    assert run.code == 0, run.err
    return json.loads(run.out)["predictions"]


def table_top1(text: str) -> dict[str, tuple[str, str]]:
    """Each table's file (its title) and its first row's class id and probability, as printed."""
    found, title = {}, None
    for line in text.splitlines():
        row = ROW.match(line.strip())
        if row and title is not None:
            found[title] = (row.group(2), row.group(3))
            title = None
        elif line.strip() and not re.match(r"^[│|┃┏┡└━─╇┳┩┗\s#]", line.strip()[0]):
            title = line.strip()
    return found


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------- inputs
@pytest.mark.slow
def test_a_folder_gives_every_image_below_it(setup):
    predictions = json_predictions(cli(setup, setup["images"], "--json"))
    assert [p["file"] for p in predictions] == [str(p) for p in setup["all"]]  # no .txt, no hidden file
    expected = predict_images(open_model(setup["model"]), setup["all"], top_k=5)
    for got, want in zip(predictions, expected, strict=True):
        assert [r["id"] for r in got["top"]] == [r["id"] for r in want["top"]]
        assert got["error"] is None


@pytest.mark.slow
def test_a_pattern_the_shell_left_alone_is_expanded(setup):
    images = setup["images"]
    flat = json_predictions(cli(setup, f"{images}/*.png", "--json"))  # no shell: nhl sees the '*'
    assert [p["file"] for p in flat] == [str(p) for p in setup["top"]]
    deep = expand_inputs([f"{images}/**/*.jpg", setup["top"][1], f"{images}/img?.png"])
    rest = [p for p in setup["top"] if p != setup["top"][1]]
    assert deep == [images / "more" / "photo.jpg", setup["top"][1], *rest]  # in order given, each once


@pytest.mark.slow
def test_an_input_that_gives_no_image_is_one_error_line(setup, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli(setup, f"{setup['images']}/*.gif"), "*.gif", "matches no image")
    assert_one_line_error(cli(setup, tmp_path / "empty"), "empty", "a folder with no image files")
    with pytest.raises(NhlError, match="nope.png does not exist"):
        expand_inputs([setup["top"][0], tmp_path / "nope.png"])


# ---------------------------------------------------------------------------- outputs
@pytest.mark.slow
def test_csv_and_jsonl_rows_match_the_terminal_top1(setup, tmp_path):
    # run inside the folder, so that the tables' titles (the files) are short enough not to wrap
    images, model = setup["images"], setup["model"]
    args = ("predict", model, ".", "--top-k", "3", "--device", "cpu")
    terminal = table_top1(run_nhl(*args, cwd=images, env=WIDE).out)
    names = [str(p.relative_to(images)) for p in setup["all"]]
    assert sorted(terminal) == sorted(names)
    for name in ("preds.csv", "preds.jsonl"):
        run = run_nhl(*args, "-o", tmp_path / name, cwd=images, env=WIDE)
        assert run.code == 0, run.err
        assert f"wrote 6 predictions to {tmp_path / name}" in " ".join(run.out.split())
    rows = read_csv(tmp_path / "preds.csv")
    assert list(rows[0]) == csv_columns(3, gated=False) == [
        "file", "top1_id", "top1_name", "top1_probability", "top2_id", "top2_name", "top2_probability",
        "top3_id", "top3_name", "top3_probability", "error",
    ]  # fmt: skip
    lines = read_jsonl(tmp_path / "preds.jsonl")
    assert [r["file"] for r in rows] == [r["file"] for r in lines] == names
    for row, line in zip(rows, lines, strict=True):
        printed_id, printed_probability = terminal[row["file"]]
        assert row["top1_id"] == line["top"][0]["id"] == printed_id
        assert f"{float(row['top1_probability']):.2%}" == printed_probability
        assert float(row["top1_probability"]) == line["top"][0]["probability"]
        assert row["error"] == "" and line["error"] is None and len(line["top"]) == 3
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # renamed into place


@pytest.mark.slow
def test_a_gated_model_writes_the_exit_it_took(setup, tmp_path):
    out = tmp_path / "gated.csv"
    run = run_nhl("predict", setup["gated"], *setup["top"], "-k", "2", "--device", "cpu", "-o", out)
    assert run.code == 0, run.err
    rows = read_csv(out)
    assert list(rows[0]) == csv_columns(2, gated=True)
    assert list(rows[0])[-3:] == ["exit", "gmacs", "error"]
    assert all(r["exit"].startswith("gate 1 ") and float(r["gmacs"]) > 0 for r in rows)
    expected = predict_images(open_model(setup["gated"]), setup["top"], top_k=2)
    assert [r["top1_id"] for r in rows] == [e["top"][0]["id"] for e in expected]
    assert [r["exit"] for r in rows] == [e["exit"] for e in expected]


# ---------------------------------------------------------------------------- unreadable images
@pytest.fixture
def with_bad_images(setup, tmp_path):
    """The image folder plus a text file named .png and a truncated JPEG, in a copy."""
    folder = tmp_path / "mixed"
    good = [
        write_png(folder / p.relative_to(setup["images"]).with_suffix(".png"), i)
        for i, p in enumerate(setup["all"])
    ]
    (folder / "corrupt.png").write_text("this is no picture")
    data = (setup["images"] / "more" / "photo.jpg").read_bytes()
    (folder / "more" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder, sorted(good)


@pytest.mark.slow
def test_an_unreadable_image_gets_an_error_row_and_the_rest_are_predicted(setup, with_bad_images, tmp_path):
    folder, good = with_bad_images
    bad = {str(folder / "corrupt.png"), str(folder / "more" / "truncated.jpg")}
    clean = {p["file"]: p for p in json_predictions(cli(setup, *good, "--json"))}
    for name in ("out.csv", "out.jsonl"):
        run = cli(setup, folder, "-o", tmp_path / name, "--batch-size", "3")  # bad files mid-batch
        assert_one_line_error(run, "2 of 8 images could not be read", f"in {tmp_path / name}", "corrupt.png")
        assert run.code == 3
    rows, lines = read_csv(tmp_path / "out.csv"), read_jsonl(tmp_path / "out.jsonl")
    assert [r["file"] for r in rows] == [r["file"] for r in lines] == sorted(map(str, [*good, *bad]))
    for row, line in zip(rows, lines, strict=True):
        if row["file"] in bad:
            assert "cannot decode" in row["error"] and Path(row["file"]).name in row["error"]
            assert line["error"] == row["error"] and line["top"] == [] and row["top1_id"] == ""
        else:
            want = clean[row["file"]]["top"]
            assert row["error"] == "" and line["error"] is None
            assert row["top1_id"] == line["top"][0]["id"] == want[0]["id"]
            assert line["top"][0]["probability"] == pytest.approx(want[0]["probability"], abs=1e-6)
    table = run_nhl("predict", setup["model"], ".", "--device", "cpu", cwd=folder, env=WIDE)  # terminal too
    assert table.code == 3 and "2 of 8 images could not be read (marked above)" in table.err
    assert "corrupt.png: error: cannot decode image corrupt.png" in table.out
    assert sorted(table_top1(table.out)) == sorted(str(p.relative_to(folder)) for p in good)


def test_workers_and_batches_give_the_same_rows(setup, with_bad_images):
    folder, _ = with_bad_images
    model, files = open_model(setup["model"]), expand_inputs([folder])
    one = predict_images(model, files, top_k=2, bad_images="report")
    split = predict_images(model, files, top_k=2, bad_images="report", batch_size=3, workers=2)
    assert [r["file"] for r in split] == [r["file"] for r in one]
    for a, b in zip(one, split, strict=True):
        assert a["error"] == b["error"] and [r["id"] for r in a["top"]] == [r["id"] for r in b["top"]]
    with pytest.raises(NhlError, match="corrupt.png"):  # the library's default stops at the first
        predict_images(model, files, bad_images="raise")


# ---------------------------------------------------------------------------- refused before any work
@pytest.mark.slow
@pytest.mark.parametrize("name", ["preds.json", "preds"])
def test_an_output_of_another_kind_is_refused_before_any_work(tmp_path, name):
    before = sorted(tmp_path.iterdir())
    # a missing model and a missing image are found later: the suffix is the first thing checked
    run = run_nhl("predict", tmp_path / "no-model.safetensors", tmp_path / "no.png", "-o", tmp_path / name)
    assert_one_line_error(run, name, ".csv or .jsonl")
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.slow
def test_an_output_that_is_an_input_is_refused(setup, tmp_path):
    shot = write_png(tmp_path / "x.png", 3)
    named_csv = tmp_path / "shot.csv"  # a PNG under another name is still an input image
    named_csv.write_bytes(shot.read_bytes())
    data = named_csv.read_bytes()
    (tmp_path / "sub").mkdir()
    for spelling in (named_csv, tmp_path / "sub" / ".." / "shot.csv"):
        run = cli(setup, shot, named_csv, "-o", spelling)
        assert_one_line_error(run, "--output", "also an input")
    assert named_csv.read_bytes() == data
    (tmp_path / "folder.jsonl").mkdir()
    assert_one_line_error(cli(setup, shot, "-o", tmp_path / "folder.jsonl"), "--output", "is a directory")
    # a hard link to an image found inside a folder given as input is that image
    os.link(write_png(tmp_path / "imgs" / "deep" / "y.png", 4), tmp_path / "linked.csv")
    before = (tmp_path / "linked.csv").read_bytes()
    run = cli(setup, tmp_path / "imgs", "-o", tmp_path / "linked.csv")
    assert_one_line_error(run, "--output", "also an input")
    assert (tmp_path / "linked.csv").read_bytes() == before
