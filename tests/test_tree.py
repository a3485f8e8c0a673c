"""The tree file format: round trips, validation errors that name the node, queries."""

from __future__ import annotations

import json

import pytest

from nhlcli.errors import NhlError
from nhlcli.taxonomy import Tree
from nhlcli.taxonomy.classes import FASHION_MNIST
from nhlcli.taxonomy.match import match_classes
from nhlcli.taxonomy.sources import build_flat_tree


def small_tree_dict() -> dict:
    return {
        "format": "nhl-tree",
        "version": 1,
        "name": "pets",
        "levels": 2,
        "source": {"kind": "hand", "params": {}},
        "classes": ["tabby", "siamese", "beagle", "pug", "goldfish"],
        "tree": {
            "id": "root",
            "name": "animal",
            "children": [
                {
                    "id": "dogs",
                    "name": "dog",
                    "children": [
                        {"id": "pug", "name": "Pug"},
                        {"id": "beagle", "name": "Beagle", "aliases": ["snoopy"]},
                    ],
                },
                {
                    "id": "cats",
                    "name": "cat",
                    "wnid": "n02121620",
                    "children": [
                        {"id": "tabby", "name": "Tabby cat"},
                        {"id": "siamese", "name": "Siamese cat"},
                    ],
                },
                {"id": "fish", "name": "fish", "children": [{"id": "goldfish", "name": "Goldfish"}]},
            ],
        },
    }


def test_round_trip_keeps_class_order_and_is_byte_stable(tmp_path):
    tree = Tree.from_dict(small_tree_dict())
    assert tree.classes == ["tabby", "siamese", "beagle", "pug", "goldfish"]
    assert tree.levels == 2
    # children are ordered by their first class, so the cats come before the dogs
    assert tree.level(1) == ["cats", "dogs", "fish"]
    assert tree.level(2) == ["tabby", "siamese", "beagle", "pug", "goldfish"]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    tree.save(first)
    Tree.load(first).save(second)
    assert first.read_bytes() == second.read_bytes()
    assert Tree.load(second) == tree


def test_nodes_list_form_loads_like_the_nested_form():
    nested = Tree.from_dict(small_tree_dict())
    nodes = [{"id": "root", "name": "animal"}]
    for node_id in nested.iter_nodes():
        if node_id != "root":
            node = nested.node(node_id)
            nodes.append(
                {
                    "id": node_id,
                    "name": node.name,
                    "parent": nested.parent(node_id),
                    "wnid": node.wnid,
                    "aliases": list(node.aliases),
                }
            )
    data = dict(small_tree_dict())
    del data["tree"]
    data["nodes"] = nodes
    assert Tree.from_dict(data).to_dict()["tree"] == nested.to_dict()["tree"]


def _nodes_form(edges):
    return {
        "format": "nhl-tree",
        "version": 1,
        "classes": ["a", "b"],
        "nodes": [{"id": c, "parent": p} for p, c in edges],
    }


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["tree"]["children"][0]["children"].append({"id": "tabby"}), "duplicate class 'tabby'"),
        (lambda d: d["classes"].append("tabby"), "duplicate class 'tabby'"),
        (lambda d: d["classes"].append("hamster"), "missing class 'hamster'"),
        (lambda d: d["classes"].remove("goldfish"), "leaf 'goldfish' is not in 'classes'"),
        (lambda d: d.update(version=99), "newer than this nhl supports"),
        (lambda d: d.update(format="something-else"), "not an nhl tree file"),
        (lambda d: d.update(levels=3), "'levels' says 3"),
        (lambda d: d["tree"]["children"][0].update(children=[]), "'children' is empty"),
        (lambda d: d["tree"]["children"][1].pop("id"), "'id' must be a non-empty string"),
    ],
)
def test_invalid_trees_are_rejected_naming_the_problem(mutate, message):
    data = small_tree_dict()
    mutate(data)
    with pytest.raises(NhlError, match=message.replace("(", r"\(")):
        Tree.from_dict(data)


def test_uneven_depth_names_the_shallow_leaf():
    data = small_tree_dict()
    fish = data["tree"]["children"][2]
    data["tree"]["children"][2] = fish["children"][0]  # goldfish directly under the root
    with pytest.raises(NhlError, match="leaf 'goldfish' is at depth 1"):
        Tree.from_dict(data)


def test_cycle_and_unknown_parent_in_the_nodes_form():
    cyclic = _nodes_form([(None, "r"), ("r", "x"), ("y", "a"), ("a", "y"), ("x", "b")])
    with pytest.raises(NhlError, match="cycle in the tree: .*a -> y|cycle in the tree: .*y -> a"):
        Tree.from_dict(cyclic)
    orphan = _nodes_form([(None, "r"), ("r", "a"), ("ghost", "b")])
    with pytest.raises(NhlError, match="node 'b' names unknown parent 'ghost'"):
        Tree.from_dict(orphan)
    two_roots = _nodes_form([(None, "r"), (None, "s"), ("r", "a"), ("s", "b")])
    with pytest.raises(NhlError, match="exactly one root, found 2"):
        Tree.from_dict(two_roots)


def test_load_reports_bad_files_in_one_line(tmp_path):
    truncated = tmp_path / "t.json"
    truncated.write_text(json.dumps(small_tree_dict())[:200])
    with pytest.raises(NhlError, match="is not valid JSON"):
        Tree.load(truncated)
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(NhlError, match="not a text file|not valid JSON|not UTF-8 text"):
        Tree.load(binary)
    with pytest.raises(NhlError, match="does not exist"):
        Tree.load(tmp_path / "missing.json")


def test_queries_resolve_names_aliases_and_suggest():
    tree = Tree.from_dict(small_tree_dict())
    assert tree.resolve("Tabby Cat") == "tabby"
    assert tree.resolve("snoopy") == "beagle"
    assert tree.resolve("n02121620") == "cats"
    assert tree.leaves("dogs") == ["beagle", "pug"]
    assert tree.path("pug") == ["root", "dogs", "pug"]
    assert tree.lowest_common_ancestor(["tabby", "siamese"]) == "cats"
    assert tree.lowest_common_ancestor(["tabby", "pug"]) == "root"
    with pytest.raises(NhlError, match="closest: beagle"):
        tree.resolve("beagel")


def test_subtree_keeps_paths_and_class_order():
    tree = Tree.from_dict(small_tree_dict())
    sub = tree.subtree(["goldfish", "cats"])
    assert sub.classes == ["tabby", "siamese", "goldfish"]
    assert sub.level(1) == ["cats", "fish"]
    assert sub.levels == 2


def test_stats_count_nodes_and_balance():
    stats = Tree.from_dict(small_tree_dict()).stats()
    level1, level2 = stats["per_level"]
    assert (level1["nodes"], level2["nodes"]) == (3, 5)
    assert (level1["classes_per_node_min"], level1["classes_per_node_max"]) == (1, 2)
    assert level2["single_child_parents"] == 1


def test_flat_tree_and_class_matching():
    tree = build_flat_tree(FASHION_MNIST, name="fm")
    assert tree.levels == 1 and tree.num_classes == 10
    reordered = list(reversed(FASHION_MNIST))
    assert match_classes(tree, reordered) == [e.id for e in reordered]
    with pytest.raises(NhlError, match="in the tree but not in the data: t-shirt"):
        match_classes(tree, FASHION_MNIST[1:])
    assert match_classes(tree, FASHION_MNIST[1:], exact=False)[0] == "trouser"


def test_a_name_shared_along_a_single_child_chain_means_the_class_and_others_stay_ambiguous():
    nested = {
        "id": "root",
        "name": "all",
        "children": [
            {"id": "dress~1", "name": "Dress", "children": [{"id": "dress", "name": "Dress"}]},
            {
                "id": "tops",
                "name": "top",
                "children": [{"id": "shirt", "name": "Shirt"}, {"id": "tee", "name": "top"}],
            },
        ],
    }
    tree = Tree.from_nested(nested, ["dress", "shirt", "tee"], name="chain")
    assert tree.resolve("Dress") == "dress"  # the group and its only class: the same selection
    with pytest.raises(NhlError, match="'top' is ambiguous"):  # a group and one of two classes
        tree.resolve("top")


@pytest.mark.parametrize(
    "version, message",
    [
        (2, "tree file has version 2, newer than this nhl supports (version 1); upgrade nhlcli"),
        ("1", "tree file has an invalid 'version' '1'"),
        ("2.0", "tree file has an invalid 'version' '2.0'"),
        (1.5, "tree file has an invalid 'version' 1.5"),
        (True, "tree file has an invalid 'version' True"),
        (0, "tree file has an invalid 'version' 0"),
        (None, "tree file has no 'version'"),
    ],
)
def test_only_a_newer_version_asks_for_a_newer_nhl(version, message):
    data = small_tree_dict()
    if version is None:
        del data["version"]
    else:
        data["version"] = version
    with pytest.raises(NhlError) as info:
        Tree.from_dict(data)
    text = str(info.value)
    assert text.startswith(message), text
    assert ("newer" in text or "upgrade" in text) == (version == 2)


def test_a_tree_path_that_is_a_directory_is_not_called_missing(tmp_path):
    with pytest.raises(NhlError, match="is a directory; a tree is a JSON file") as info:
        Tree.load(tmp_path)
    assert "does not exist" not in str(info.value)


def test_counts_read_in_the_singular_for_one():
    from nhlcli.taxonomy.render import to_rich
    from nhlcli.text import counted

    assert (counted(1, "level"), counted(3, "level")) == ("1 level", "3 levels")
    assert (counted(1, "class", "classes"), counted(0, "class", "classes")) == ("1 class", "0 classes")
    title = str(to_rich(build_flat_tree(FASHION_MNIST[:1], name="one")).label)
    assert "1 class, 1 level" in title


def test_bare_wordnet_ids_in_a_class_list_get_wordnet_names(tmp_path):
    from nhlcli.taxonomy import load_class_list

    listing = tmp_path / "classes.txt"
    # an ImageNet-1k class, one that is not (a cat), one named by the line, one WordNet lacks words for
    listing.write_text("n01440764\nn02121620\nn01443537\tgoldie\nn99999999\n")
    entries = load_class_list(listing)
    assert [e.name for e in entries] == ["tench", "cat", "goldie", "n99999999"]
    assert entries[0].aliases == ("Tinca tinca",) and entries[0].wordnet == "n01440764"
    assert entries[2].aliases == ()  # a name given on the line is the user's; no words are added
    as_json = tmp_path / "classes.json"
    as_json.write_text(json.dumps(["n01440764", {"id": "n02121620", "aliases": ["kitty"]}]))
    assert [(e.name, e.aliases) for e in load_class_list(as_json)] == [
        ("tench", ("Tinca tinca",)),
        ("cat", ("true cat", "kitty")),
    ]
    # the same names an ImageFolder of wnid folders gets
    for folder in ("n01440764", "n02121620"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    assert [e.name for e in load_class_list(tmp_path / "data")] == ["tench", "cat"]


@pytest.mark.needs_data  # WordNet
def test_a_build_with_other_group_counts_never_takes_a_shipped_trees_name():
    from nhlcli.taxonomy import build_tree, load_class_list, shipped_tree
    from nhlcli.taxonomy.build import built_groups, requested_groups, unshipped_name

    entries = load_class_list("fashion-mnist")
    default = build_tree("wordnet", entries, levels=2)
    assert unshipped_name("fashion-mnist-wordnet-l2", default) == "fashion-mnist-wordnet-l2"
    assert built_groups(default) == [len(shipped_tree("fashion-mnist-wordnet-l2").level(1))]
    other = build_tree("wordnet", entries, levels=2, groups=[4])
    assert requested_groups(other) == [4] and built_groups(other) == [5]
    assert unshipped_name("fashion-mnist-wordnet-l2", other) == "fashion-mnist-wordnet-l2-g4"
    assert unshipped_name("my-own-name", other) == "my-own-name"


@pytest.mark.slow
@pytest.mark.needs_data  # WordNet
def test_hierarchy_build_says_when_the_groups_differ_from_the_request(tmp_path):
    from conftest import run_nhl

    out = tmp_path / "t.json"
    args = ("hierarchy", "build", "--classes", "fashion-mnist", "--levels", "2", "-o", out)
    run = run_nhl(*args, "--groups", "4")
    assert run.code == 0, run.err
    lines = [line for line in run.out.splitlines() if "--groups" in line]
    assert len(lines) == 1 and "--groups 4 gave 5 groups per level" in lines[0], run.out
    assert Tree.load(out).name == "fashion-mnist-wordnet-l2-g4"
    as_json = json.loads(run_nhl(*args, "--groups", "4", "--json").out)
    assert (as_json["groups_requested"], as_json["groups_built"]) == ([4], [5])
    picture = run_nhl("hierarchy", "show", out, "-f", "png", "-o", tmp_path / "t.png")
    assert picture.code == 0, picture.err
    assert "wrote" in picture.out and "kept paths" not in picture.out  # only an expert has kept paths


# ----------------------------------------------------------------------- comparing trees
def test_compare_trees_per_level_and_over_class_pairs(tmp_path):
    from conftest import CLASSES, flat_tree, nested_tree, run_nhl

    from nhlcli.taxonomy.compare import compare_trees

    same = compare_trees(nested_tree(2), nested_tree(2))
    assert [(r["ari"], r["ami"]) for r in same["per_level"]] == [(1.0, 1.0)]
    assert same["lca_depth_spearman"] == 1.0 and same["pairs"] == len(CLASSES) * (len(CLASSES) - 1) // 2
    deeper = compare_trees(nested_tree(3), nested_tree(2))  # fruit and plant again, one level down
    assert deeper["per_level"][0]["ari"] == 1.0 and deeper["per_level"][0]["level_b"] == 1
    swapped = {"id": "root", "name": "all", "children": [
        {"id": "g1", "name": "g1", "children": [{"id": c, "name": c} for c in ("apple", "daisy", "fig")]},
        {"id": "g2", "name": "g2", "children": [{"id": c, "name": c} for c in ("banana", "cherry", "elm")]},
    ]}  # fmt: skip
    other = Tree.from_nested(swapped, CLASSES, name="other")
    mixed = compare_trees(nested_tree(2), other)["per_level"][0]
    assert mixed["ari"] < 0.5 and mixed["groups_b"] == 2
    assert compare_trees(nested_tree(2), flat_tree())["lca_depth_spearman"] is None
    with pytest.raises(NhlError, match="different classes"):
        compare_trees(nested_tree(2), Tree.from_nested(swapped, CLASSES[:6], name="x").subtree(CLASSES[:3]))
    first, second = nested_tree(2).save(tmp_path / "a.json"), other.save(tmp_path / "b.json")
    run = run_nhl("hierarchy", "compare", first, second, "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["per_level"][0]["ari"] == mixed["ari"]
    text = run_nhl("hierarchy", "compare", first, second)
    assert text.code == 0 and "Spearman" in text.out
