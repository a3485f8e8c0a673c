"""The ``nhl hierarchy`` commands as a user runs them: outputs, JSON, and one-line errors."""

from __future__ import annotations

import json
import os

import pytest
from conftest import assert_one_line_error, run_nhl

from nhlcli.taxonomy import Tree


@pytest.mark.slow
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


@pytest.mark.slow
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


# ------------------------------------------------------------------ outputs never replace inputs
CLASS_LINES = "sandal.n.01\tSandal\nn03472535\tSneaker\tgym shoe\nboot.n.01\n"


def _class_file(tmp_path):
    return _write(tmp_path, "cls.txt", CLASS_LINES)


@pytest.mark.parametrize(
    "classes_arg, output_arg",
    [
        ("{cls}", "{cls}"),
        ("cls.txt", "./../{dirname}/cls.txt"),
        ("@cls.txt", "./cls.txt"),
    ],
    ids=["same-path", "dot-dot-spelling", "at-file"],
)
def test_build_never_overwrites_its_class_file(tmp_path, classes_arg, output_arg):
    cls = _class_file(tmp_path)
    before = cls.read_bytes()
    fill = {"cls": cls, "dirname": tmp_path.name}
    run = run_nhl(
        "hierarchy", "build", "--source", "flat", "--classes", classes_arg.format(**fill),
        "-o", output_arg.format(**fill), cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(run, "--output", "also an input")
    assert cls.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls.txt"]  # no temp file either


def test_build_never_overwrites_its_cache_or_model(tmp_path):
    cls = _class_file(tmp_path)
    cache = _write(tmp_path, "cache.json", '{"format": "nhl-llm-cache", "version": 1, "entries": {}}\n')
    model = _write(tmp_path, "flat.safetensors", b"not really a model")
    snapshot = {p: p.read_bytes() for p in (cls, cache, model)}
    out = tmp_path / "t.json"
    same = run_nhl("hierarchy", "build", "-s", "llm", "-c", cls, "-o", cache, "--cache", cache)
    assert_one_line_error(same, "--cache and --output name the same file")
    on_classes = run_nhl("hierarchy", "build", "-s", "llm", "-c", cls, "-o", out, "--cache", cls)
    assert_one_line_error(on_classes, "--cache", "also an input")
    induced = run_nhl(
        "hierarchy", "build", "-s", "induced", "--model", model, "-o", f"{tmp_path}/./{model.name}"
    )
    assert_one_line_error(induced, "--output", "also an input")
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    assert not out.exists()


def test_show_never_overwrites_its_tree_or_parent(tmp_path):
    from nhlcli.taxonomy import build_tree, load_class_list

    tree = tmp_path / "fm.json"
    build_tree("flat", load_class_list(_class_file(tmp_path)), name="fm").save(tree)
    parent = _write(tmp_path, "parent.safetensors", b"not really a model")
    snapshot = {p: p.read_bytes() for p in (tree, parent)}
    spelled = f"./../{tmp_path.name}/fm.json"
    for fmt, output in (("json", spelled), ("png", tree)):  # a text and a picture format
        run = run_nhl("hierarchy", "show", "fm.json", "--format", fmt, "-o", output, cwd=tmp_path)
        assert_one_line_error(run, "--output", "also an input")
    on_parent = run_nhl("hierarchy", "show", tree, "--parent", parent, "--format", "dot", "-o", parent)
    assert_one_line_error(on_parent, "--output", "also an input")
    assert {p: p.read_bytes() for p in snapshot} == snapshot


def test_show_never_overwrites_a_shipped_tree():
    from nhlcli.taxonomy.sources import taxonomies_dir

    shipped = taxonomies_dir() / "fashion-mnist-wordnet-l2.json"
    before = shipped.read_bytes()
    run = run_nhl("hierarchy", "show", "fashion-mnist-wordnet-l2", "--format", "json", "-o", shipped)
    assert_one_line_error(run, "also an input")
    assert shipped.read_bytes() == before


def test_bad_output_paths_fail_in_one_line_before_any_work(tmp_path):
    cls = _class_file(tmp_path)
    build = ["hierarchy", "build", "-s", "flat", "-c", cls]
    show = ["hierarchy", "show", "fashion-mnist-wordnet-l2", "--format", "mermaid"]
    cases = [
        ([*build, "-o", ""], ["--output is empty"]),
        ([*build, "-o", tmp_path], ["--output", "is a directory"]),
        ([*build, "-o", cls / "tree.json"], ["--output", "is a file, not a directory"]),
        ([*build, "-o", "/proc/nhl-tree.json"], ["--output", "cannot write in /proc"]),
        ([*show, "-o", tmp_path], ["--output", "is a directory"]),
        ([*show, "-o", "/proc/nhl-tree.mmd"], ["--output", "cannot write in /proc"]),
        ([*build, "-o", tmp_path / "t.json", "--cache", ""], ["--cache is empty"]),
        ([*build, "-o", tmp_path / "t.json", "--cache", tmp_path], ["--cache", "is a directory"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(run_nhl(*args), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls.txt"]


def test_setup_wordnet_refuses_a_target_that_overlaps_its_source(tmp_path):
    source = tmp_path / "nltk" / "corpora" / "wordnet"
    source.mkdir(parents=True)
    for name in ("data.noun", "index.noun", "noun.exc", "index.sense"):
        (source / name).write_text(f"{name} as shipped\n")
    snapshot = {p: p.read_bytes() for p in source.iterdir()}
    onto_itself = run_nhl("hierarchy", "setup-wordnet", "--from", source, "--to", f"{source}/./../../")
    assert_one_line_error(onto_itself, "--to", "overlaps the --from directory")
    empty = run_nhl("hierarchy", "setup-wordnet", "--from", source, "--to", "")
    assert_one_line_error(empty, "--to is empty")
    assert {p: p.read_bytes() for p in source.iterdir()} == snapshot


# ------------------------------------------------------------------ inputs that were silently misread
def test_an_extra_column_in_a_class_file_is_refused(tmp_path):
    extra = _write(tmp_path, "extra.txt", "sandal.n.01\tSandal\n# note\nboot.n.01\tBoot\tbootee\tfootwear\n")
    out = tmp_path / "tree.json"
    run = run_nhl("hierarchy", "build", "-s", "flat", "-c", extra, "-o", out)
    assert_one_line_error(run, "extra.txt, line 3", "4 tab-separated columns", "id<TAB>name<TAB>aliases")
    assert not out.exists()


def test_an_empty_class_list_is_refused_not_read_from_the_current_folder(tmp_path):
    for folder in ("cat", "dog"):  # what --classes '' used to turn into classes
        (tmp_path / folder).mkdir()
    out = tmp_path / "tree.json"
    run = run_nhl("hierarchy", "build", "-s", "flat", "--classes", "", "-o", out, cwd=tmp_path)
    assert_one_line_error(run, "--classes is empty", "nhl hierarchy build --help")
    assert not out.exists()
    valid = run_nhl("hierarchy", "validate", "fashion-mnist-wordnet-l2", "--classes", "", cwd=tmp_path)
    assert_one_line_error(valid, "--classes is empty")


def test_a_class_file_given_as_at_file_builds(tmp_path):
    out = tmp_path / "tree.json"
    run = run_nhl("hierarchy", "build", "-s", "flat", "-c", f"@{_class_file(tmp_path)}", "-o", out, "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["name"] == "cls-flat-l1"
    assert Tree.load(out).classes == ["sandal.n.01", "n03472535", "boot.n.01"]


def test_a_tree_path_that_is_a_directory_says_so(tmp_path):
    folder = tmp_path / "trees.json"
    folder.mkdir()
    for command, spec in (("show", tmp_path), ("validate", folder), ("stats", tmp_path)):
        run = run_nhl("hierarchy", command, spec)
        assert_one_line_error(run, "is a directory", "a tree is a JSON file", "shipped tree")
        assert "does not exist" not in run.err


def test_one_level_reads_one_level(tmp_path):
    out = tmp_path / "flat.json"
    built = run_nhl("hierarchy", "build", "-s", "flat", "-c", _class_file(tmp_path), "-o", out)
    assert built.code == 0, built.err
    assert "3 classes, 1 level (flat)" in " ".join(built.out.split())  # rich wraps long lines
    outputs = [
        built.out,
        run_nhl("hierarchy", "show", out).out,
        run_nhl("hierarchy", "stats", out).out,
        run_nhl("hierarchy", "validate", out).out,
    ]
    picture = run_nhl("hierarchy", "show", out, "--format", "svg", "-o", tmp_path / "t.svg")
    assert picture.code == 0, picture.err
    outputs.append((tmp_path / "t.svg").read_text())
    for text in map(" ".join, map(str.split, outputs)):
        assert "1 level" in text and "1 levels" not in text
    assert "(3 rows, level 1)" in " ".join(
        picture.out.split()
    )  # not "levels 1-1", nor "kept paths" without an expert
