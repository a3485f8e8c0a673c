"""The ``nhl hierarchy`` commands as a user runs them: outputs, JSON, and one-line errors."""

from __future__ import annotations

import json
import os

import pytest
from conftest import assert_one_line_error, run_nhl

from nhlcli.taxonomy import Tree


def test_build_show_validate_stats_round_trip(tmp_path):
    out = tmp_path / "fm.json"
    built = run_nhl(
        "hierarchy",
        "build",
        "--source",
        "wordnet",
        "--classes",
        "fashion-mnist",
        "--levels",
        "2",
        "-o",
        out,
        "--json",
    )
    assert built.code == 0, built.err
    summary = json.loads(built.out)
    assert summary["classes"] == 10 and summary["levels"] == 2 and summary["source"] == "wordnet"
    tree = Tree.load(out)
    assert tree.name == "fashion-mnist-wordnet-l2"

    shown = run_nhl("hierarchy", "show", out)
    assert shown.code == 0 and "footwear" in shown.out and "3 classes" in shown.out

    dot = run_nhl("hierarchy", "show", out, "--format", "dot")
    assert dot.out.startswith('digraph "fashion-mnist-wordnet-l2"') and '"root" -> ' in dot.out
    mermaid = run_nhl("hierarchy", "show", out, "--format", "mermaid", "-o", tmp_path / "t.mmd")
    assert mermaid.code == 0 and (tmp_path / "t.mmd").read_text().startswith("graph LR")
    as_json = run_nhl("hierarchy", "show", out, "--format", "json")
    assert Tree.from_dict(json.loads(as_json.out)) == tree

    valid = run_nhl("hierarchy", "validate", out, "--classes", "fashion-mnist", "--json")
    assert valid.code == 0 and json.loads(valid.out)["valid"] is True
    stats = run_nhl("hierarchy", "stats", out, "--json")
    assert [row["nodes"] for row in json.loads(stats.out)["per_level"]] == [len(tree.level(1)), 10]


def test_list_shows_shipped_trees_and_names_resolve():
    listed = run_nhl("hierarchy", "list", "--json")
    rows = {row["name"]: row for row in json.loads(listed.out)}
    assert rows["imagenet-1k-wordnet-l3"]["classes"] == 1000
    stats = run_nhl("hierarchy", "stats", "imagenet-1k-wordnet-l4", "--json")
    assert json.loads(stats.out)["levels"] == 4


def test_help_texts_explain_each_command():
    for args in (["--help"], ["hierarchy", "--help"], ["hierarchy", "build", "--help"]):
        result = run_nhl(*args)
        assert result.code == 0 and "Usage" in result.out
    assert "--groups" in run_nhl("hierarchy", "build", "--help").out


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--classes", "imagenet-2k"], ["imagenet-2k", "preset"]),
        (["--source", "astrology"], ["unknown source", "wordnet"]),
        (["--levels", "5"], ["1 to 4 levels"]),
        (["--levels", "3", "--groups", "4"], ["--groups", "need 2"]),
        (["--source", "superclass"], ["ImageNet-1k"]),
        (["--source", "flat", "--levels", "2"], ["flat source gives 1"]),
        (["--source", "llm"], ["OPENAI_API_KEY"]),
    ],
)
def test_bad_build_inputs_fail_in_one_line_without_output(tmp_path, args, fragments):
    out = tmp_path / "tree.json"
    env_without_key = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    run = run_nhl("hierarchy", "build", "-o", out, *args, env=env_without_key)
    assert_one_line_error(run, *fragments)
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temp file left behind either


def test_bad_class_files_fail_in_one_line(tmp_path):
    out = tmp_path / "tree.json"
    empty = _write(tmp_path, "empty.txt", "# nothing here\n")
    assert_one_line_error(run_nhl("hierarchy", "build", "-c", empty, "-o", out), "lists no classes")
    twice = _write(tmp_path, "twice.txt", "n01440764\nn01440764\n")
    assert_one_line_error(run_nhl("hierarchy", "build", "-c", twice, "-o", out), "listed twice")
    unknown = _write(tmp_path, "unknown.txt", "blorptangle\nn01440764\n")
    assert_one_line_error(run_nhl("hierarchy", "build", "-c", unknown, "-o", out), "blorptangle", "hybrid")
    empty_dir = tmp_path / "images"
    empty_dir.mkdir()
    assert_one_line_error(run_nhl("hierarchy", "build", "-c", empty_dir, "-o", out), "no class folders")
    assert not out.exists()


def test_bad_tree_files_fail_in_one_line(tmp_path):
    good = json.loads(run_nhl("hierarchy", "show", "fashion-mnist-wordnet-l2", "--format", "json").out)
    truncated = _write(tmp_path, "truncated.json", json.dumps(good)[:300])
    assert_one_line_error(run_nhl("hierarchy", "validate", truncated), "not valid JSON")
    foreign = _write(tmp_path, "foreign.json", json.dumps({"nodes": [1, 2]}))
    assert_one_line_error(run_nhl("hierarchy", "show", foreign), "not an nhl tree file")
    binary = _write(tmp_path, "weights.json", b"\x00\x01\xff\xfe" * 10)
    assert_one_line_error(run_nhl("hierarchy", "stats", binary))
    good["classes"].append("sandal")
    dup = _write(tmp_path, "dup.json", json.dumps(good))
    assert_one_line_error(run_nhl("hierarchy", "validate", dup), "duplicate class 'sandal'")
    assert_one_line_error(run_nhl("hierarchy", "show", "no-such-tree"), "no shipped tree")
    mismatch = run_nhl("hierarchy", "validate", "fashion-mnist-wordnet-l2", "--classes", "cifar-100")
    assert_one_line_error(mismatch, "not in the tree", "in the tree but not in the data")
    assert_one_line_error(
        run_nhl("hierarchy", "show", "fashion-mnist-wordnet-l2", "--format", "svgz"), "--format"
    )
