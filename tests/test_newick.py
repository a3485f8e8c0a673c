"""Newick export (``nhl hierarchy show --format newick``) and the rooted Robinson-Foulds distance of
``nhl hierarchy compare``.

No Newick library is installed here (Bio.Phylo, DendroPy, ETE, scikit-bio), so the round trips go
through the small reader below, written from the Newick standard and sharing no code with nhl's
writer; the RF checks take the clusters from what that reader parsed, not from nhl's trees.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest
from conftest import CLASSES, assert_one_line_error, nested_tree, run_nhl, tiny_model, two_level_tree

from nhlcli.errors import NhlError
from nhlcli.taxonomy import Tree, robinson_foulds, shipped_tree, to_newick
from nhlcli.taxonomy.compare import compare_trees
from nhlcli.taxonomy.newick import newick_label


# --------------------------------------------------------------------------- an independent reader
def read_newick(text: str) -> tuple[str, list]:
    """Parse Newick text into ``(label, children)`` pairs: quoted labels (``''`` inside is a
    quote), bare labels (``_`` is a blank), branch lengths and ``[comments]`` skipped."""
    text = text.strip()
    assert text.endswith(";"), "a Newick tree ends with ';'"
    pos = 0

    def label() -> str:
        nonlocal pos
        if pos < len(text) and text[pos] == "'":
            out, pos = [], pos + 1
            while True:
                if text[pos] == "'":
                    if text[pos + 1 : pos + 2] == "'":
                        out.append("'")
                        pos += 2
                        continue
                    pos += 1
                    return "".join(out)
                out.append(text[pos])
                pos += 1
        start = pos
        while pos < len(text) and text[pos] not in "(),:;[":
            pos += 1
        return text[start:pos].strip().replace("_", " ")

    def skip_length() -> None:
        nonlocal pos
        if pos < len(text) and text[pos] == ":":
            pos += 1
            while text[pos] not in ",);":
                pos += 1

    def node() -> tuple[str, list]:
        nonlocal pos
        kids = []
        if text[pos] == "(":
            pos += 1
            kids.append(node())
            while text[pos] == ",":
                pos += 1
                kids.append(node())
            assert text[pos] == ")", f"expected ')' at {pos}: {text[pos : pos + 20]!r}"
            pos += 1
        name = label()
        skip_length()
        return name, kids

    parsed = node()
    assert text[pos:] == ";", f"text after the tree: {text[pos:]!r}"
    return parsed


def structure(tree: Tree, leaf_label: str = "name", node_id: str | None = None) -> tuple[str, list]:
    """What the reader should give for ``tree``: names (or ids for leaves), children in order."""
    node = tree.node(node_id or tree.root)
    if node.is_leaf:
        return (node.name if leaf_label == "name" else node.id), []
    return node.name, [structure(tree, leaf_label, kid) for kid in node.children]


def parsed_clusters(parsed: tuple[str, list], keep: set[str]) -> set[frozenset[str]]:
    """Brute force: for every inner node of a parsed tree, the set of leaf labels below it, cut to
    ``keep``; the trivial ones (all of ``keep``, one leaf, none) left out."""
    found = set()
    stack = [parsed]
    while stack:
        label, kids = stack.pop()
        if not kids:
            continue
        below, todo = set(), list(kids)
        while todo:
            sub_label, sub_kids = todo.pop()
            if sub_kids:
                todo.extend(sub_kids)
            else:
                below.add(sub_label)
        cut = frozenset(below & keep)
        if 1 < len(cut) < len(keep):
            found.add(cut)
        stack.extend(kids)
    return found


def leaf_labels(parsed: tuple[str, list]) -> set[str]:
    label, kids = parsed
    return {label} if not kids else set().union(*(leaf_labels(k) for k in kids))


def brute_force_rf(first: Tree, second: Tree) -> int:
    one, two = read_newick(to_newick(first, "id")), read_newick(to_newick(second, "id"))
    shared = leaf_labels(one) & leaf_labels(two)
    return len(parsed_clusters(one, shared) ^ parsed_clusters(two, shared))


def tree_of(groups: dict, name: str = "t") -> Tree:
    """A tree from nested dicts / lists of class ids: ``{"X": {"g1": ["a", "b"]}}``."""

    def nodes(value, node_id):
        if isinstance(value, dict):
            return {"id": node_id, "name": node_id, "children": [nodes(v, k) for k, v in value.items()]}
        return {"id": node_id, "name": node_id, "children": [{"id": c, "name": c} for c in value]}

    root = nodes(groups, "root")
    classes = sorted(_leaves(groups))
    return Tree.from_nested(root, classes, name=name)


def _leaves(value) -> list[str]:
    if isinstance(value, dict):
        return [c for v in value.values() for c in _leaves(v)]
    return list(value)


AWKWARD = {
    "apple": "baby's breath",
    "banana": "a, b",
    "cherry": "x:y",
    "daisy": "semi;colon (and parens)",
    "elm": "under_score [note]",
    "fig": 'say "hi"',
}


def awkward_tree() -> Tree:
    root = {"id": "root", "name": "🌍 all things", "children": [
        {"id": "g1", "name": "fruit & co.", "children": [
            {"id": c, "name": AWKWARD[c]} for c in ("apple", "banana", "cherry")]},
        {"id": "g2", "name": "🦈", "children": [
            {"id": "daisy", "name": AWKWARD["daisy"]},
            {"id": "elm", "name": AWKWARD["elm"]},
            {"id": "fig", "name": AWKWARD["fig"]},
            {"id": "shark", "name": "🦈 shark"},
            {"id": "octopus", "name": "🐙"},
        ]},
    ]}  # fmt: skip
    return Tree.from_nested(root, [*CLASSES, "shark", "octopus"], name="awkward")


# --------------------------------------------------------------------------- Newick text
def test_labels_are_quoted_exactly_where_newick_needs_it():
    assert newick_label("Sandal") == "Sandal"
    assert newick_label("T-shirt/top") == "T-shirt/top"
    assert newick_label("🐙") == "🐙"  # Unicode as itself
    assert newick_label("Ankle boot") == "'Ankle boot'"
    assert newick_label("baby's breath") == "'baby''s breath'"
    assert newick_label("under_score") == "'under_score'"  # bare, '_' would read as a blank
    for awkward in ("a,b", "x:y", "a;b", "(a)", "[a]", 'a"b', "tab\tbed"):
        assert newick_label(awkward).startswith("'"), awkward


def test_newick_round_trips_awkward_and_unicode_names_through_an_independent_reader():
    tree = awkward_tree()
    text = to_newick(tree)
    assert text.endswith(";\n") and text.count("\n") == 1
    assert "'baby''s breath'" in text and "🐙" in text and "'🦈 shark'" in text
    assert read_newick(text) == structure(tree)


def test_shipped_trees_round_trip_with_their_single_child_chains():
    fashion = shipped_tree("fashion-mnist-wordnet-l3")
    assert read_newick(to_newick(fashion)) == structure(fashion)
    padded = nested_tree(3)  # every class below a chain of single-child groups
    assert read_newick(to_newick(padded)) == structure(padded)


def test_leaves_are_labelled_by_id_when_class_names_repeat():
    root = {"id": "root", "name": "birds", "children": [
        {"id": "g", "name": "g", "children": [
            {"id": "crane-bird", "name": "crane"}, {"id": "crane-machine", "name": "crane"},
            {"id": "heron", "name": "heron"}]}]}  # fmt: skip
    tree = Tree.from_nested(root, ["crane-bird", "crane-machine", "heron"])
    assert read_newick(to_newick(tree)) == structure(tree, leaf_label="id")
    assert read_newick(to_newick(awkward_tree(), "id")) == structure(awkward_tree(), leaf_label="id")
    with pytest.raises(NhlError, match="both named 'crane'"):
        to_newick(tree, "name")
    with pytest.raises(NhlError, match="leaf_labels 'names'"):
        to_newick(tree, "names")


def test_show_writes_newick_to_stdout_and_atomically_to_a_file(tmp_path):
    path = awkward_tree().save(tmp_path / "awkward.json")
    run = run_nhl("hierarchy", "show", path, "--format", "newick")
    assert run.code == 0, run.err
    assert run.out == to_newick(awkward_tree())
    for out, extra in (
        (tmp_path / "t.nwk", []),
        (tmp_path / "t.newick", []),
        (tmp_path / "t.tree", ["-f", "newick"]),
    ):
        run = run_nhl("hierarchy", "show", path, "-o", out, *extra)
        assert run.code == 0 and "wrote" in run.out, run.err
        assert out.read_text(encoding="utf-8") == to_newick(awkward_tree())
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left


@pytest.mark.slow
def test_show_newick_of_a_model_file_is_the_tree_it_classifies(tmp_path):
    from nhlcli.experts import cutout_file, save_expert
    from nhlcli.model.files import save_model

    save_model(tiny_model(two_level_tree(), "resnet18", seed=0), tmp_path / "full.safetensors")
    save_expert(
        cutout_file(tmp_path / "full.safetensors", ["banana", "elm"]), tmp_path / "expert.safetensors"
    )
    full = run_nhl("hierarchy", "show", tmp_path / "full.safetensors", "-f", "newick")
    assert full.code == 0, full.err
    assert leaf_labels(read_newick(full.out)) == set(CLASSES)
    expert = run_nhl("hierarchy", "show", tmp_path / "expert.safetensors", "-f", "newick")
    assert expert.code == 0, expert.err
    assert leaf_labels(read_newick(expert.out)) == {"banana", "elm"}


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--format", "newik"), ["--format 'newik'", "newick"]),
        (("--format", "newick", "--depth", "1"), ["--depth", "newick"]),
        (("--format", "newick", "-o", "t.json"), ["--format newick", ".json"]),
    ],
)
def test_show_refuses_bad_newick_options_in_one_line(tmp_path, args, fragments):
    path = two_level_tree().save(tmp_path / "tree.json")
    out_args = [str(tmp_path / a) if a.endswith(".json") else a for a in args]
    assert_one_line_error(run_nhl("hierarchy", "show", path, *out_args), *fragments)


# --------------------------------------------------------------------------- Robinson-Foulds
EIGHT = {"X": {"g1": ["a", "b"], "g2": ["c", "d"]}, "Y": {"g3": ["e", "f"], "g4": ["g", "h"]}}
# 'd' moved from g2 to g3: g2 keeps only 'c' (a single-child node, no cluster)
MOVED = {"X": {"g1": ["a", "b"], "g2": ["c"]}, "Y": {"g3": ["d", "e", "f"], "g4": ["g", "h"]}}


def test_rf_of_hand_made_trees_with_known_distances():
    first, moved = tree_of(EIGHT), tree_of(MOVED)
    same = robinson_foulds(first, tree_of(EIGHT))
    assert (same["distance"], same["max"], same["normalised"]) == (0, 12, 0.0)
    # clusters: ab cd ef gh abcd efgh against ab def gh abc defgh: ab and gh shared, 4 + 3 differ
    rf = robinson_foulds(first, moved)
    assert (rf["clusters_a"], rf["clusters_b"], rf["shared_clusters"]) == (6, 5, 2)
    assert (rf["distance"], rf["max"], rf["normalised"]) == (7, 11, round(7 / 11, 4))
    assert rf["rooted"] is True and rf["leaves"] == 8 and rf["dropped_a"] == rf["dropped_b"] == 0
    assert rf["distance"] == brute_force_rf(first, moved)
    # two leaves swapped between the top groups' children (b <-> c): ab, cd, abcd, efgh vs ac, bd
    swapped = tree_of({"X": {"g1": ["a", "c"], "g2": ["b", "d"]}, "Y": EIGHT["Y"]})
    assert robinson_foulds(first, swapped)["distance"] == 4 == brute_force_rf(first, swapped)
    # a flat tree has no cluster ('all' holds every class: trivial): every cluster of the other differs
    flat = tree_of({"all": list("abcdefgh")})
    assert robinson_foulds(first, flat)["distance"] == 6 == brute_force_rf(first, flat)
    assert robinson_foulds(flat, tree_of({"all": list("abcdefgh")}))["normalised"] == 0.0


def test_single_child_chains_do_not_count_twice():
    assert robinson_foulds(nested_tree(2), nested_tree(3))["distance"] == 0
    assert robinson_foulds(nested_tree(2), nested_tree(4))["clusters_b"] == 2  # fruit and plant, once each


def test_rf_over_the_shared_leaves_says_how_many_were_dropped():
    dropped = {"X": EIGHT["X"], "Y": {"g3": ["e", "f"], "g4": ["g", "z", "y"]}}  # h out, z and y in
    rf = robinson_foulds(tree_of(EIGHT), tree_of(dropped))
    assert (rf["leaves"], rf["dropped_a"], rf["dropped_b"], rf["distance"]) == (7, 1, 2, 0)
    moved = robinson_foulds(tree_of(MOVED), tree_of(dropped))
    assert moved["distance"] == brute_force_rf(tree_of(MOVED), tree_of(dropped)) > 0


def _random_tree(rng: random.Random, classes: list[str], levels: int) -> Tree:
    def grow(ids: list[str], depth: int, prefix: str) -> dict:
        if depth == levels:
            return {c: c for c in ids}
        cut = (
            sorted(rng.sample(range(1, len(ids)), min(len(ids) - 1, rng.randint(0, 3))))
            if len(ids) > 1
            else []
        )
        parts = [ids[i:j] for i, j in itertools.pairwise([0, *cut, len(ids)])]
        return {f"{prefix}{k}": grow(p, depth + 1, f"{prefix}{k}.") for k, p in enumerate(parts)}

    def nodes(node_id, value):
        if isinstance(value, str):
            return {"id": value, "name": value}
        return {"id": node_id, "name": node_id, "children": [nodes(k, v) for k, v in value.items()]}

    ids = list(classes)
    rng.shuffle(ids)
    return Tree.from_nested(nodes("root", grow(ids, 1, "n")), classes)


def test_rf_agrees_with_brute_force_on_random_trees():
    rng = random.Random(0)
    letters = [f"c{i}" for i in range(14)]
    for _ in range(40):
        first = _random_tree(rng, rng.sample(letters, 10), rng.randint(2, 4))
        second = _random_tree(rng, rng.sample(letters, 11), rng.randint(2, 4))
        rf = robinson_foulds(first, second)
        assert rf["distance"] == brute_force_rf(first, second)
        assert robinson_foulds(first, first)["distance"] == 0
        assert 0.0 <= rf["normalised"] <= 1.0


# --------------------------------------------------------------------------- hierarchy compare
@pytest.mark.slow
def test_compare_reports_rf_in_json_and_table_over_the_shared_classes(tmp_path):
    first = tree_of(EIGHT, "eight").save(tmp_path / "a.json")
    second = tree_of(MOVED, "moved").save(tmp_path / "b.json")
    run = run_nhl("hierarchy", "compare", first, second, "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    rf = report["robinson_foulds"]
    assert {"rooted", "leaves", "dropped_a", "dropped_b", "distance", "max", "normalised"} <= set(rf)
    assert (rf["distance"], rf["max"]) == (7, 11)
    assert report["classes_dropped_a"] == report["classes_dropped_b"] == 0
    text = run_nhl("hierarchy", "compare", first, second)
    assert text.code == 0 and "Robinson-Foulds" in text.out and "dropped" not in text.out

    other = tree_of({"X": EIGHT["X"], "Y": {"g3": ["e", "f"], "g4": ["g", "z", "y"]}}, "other")
    third = other.save(tmp_path / "c.json")
    report = json.loads(run_nhl("hierarchy", "compare", first, third, "--json").out)
    assert (report["classes"], report["classes_dropped_a"], report["classes_dropped_b"]) == (7, 1, 2)
    assert report["robinson_foulds"]["distance"] == 0 and report["per_level"][0]["ari"] == 1.0
    text = run_nhl("hierarchy", "compare", first, third)
    assert text.code == 0 and "compared over the 7 classes both trees hold: dropped 1" in text.out
    assert compare_trees(tree_of(EIGHT), tree_of(MOVED))["robinson_foulds"]["distance"] == 7
    with pytest.raises(NhlError, match="different classes"):  # the library refuses unless asked
        compare_trees(tree_of(EIGHT), other)

    apart = tree_of({"X": {"g": ["p", "q"]}}, "apart").save(tmp_path / "d.json")
    assert_one_line_error(run_nhl("hierarchy", "compare", first, apart), "share 0 classes")
