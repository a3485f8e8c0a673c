"""Hierarchical metrics and calibration (issue 38): values computed by hand on a small tree, the
set definitions checked against an independent walk of the tree, and ``nhl eval`` reporting them
for nested and flat models, alone and side by side."""

from __future__ import annotations

import json
import math

import networkx as nx
import pytest
import torch
from conftest import CLASSES, assert_one_line_error, make_tiny_data, run_nhl, tiny_model, two_level_tree

from nhlcli.errors import NhlError
from nhlcli.metrics import HierarchyTally, ancestor_rows, lca_depths, paired_differences
from nhlcli.model.files import save_model
from nhlcli.taxonomy import Tree
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.sources import build_flat_tree

# root ── animal ── mammal ── cat, dog
#      │         └─ bird ──── owl
#      └─ thing ─── tool ──── saw, axe
ANIMALS = ["dog", "cat", "owl", "saw", "axe"]  # the logits' order, not the tree's


def animal_tree() -> Tree:
    def group(name: str, children: list) -> dict:
        return {"id": name, "name": name, "children": children}

    def leaf(name: str) -> dict:
        return {"id": name, "name": name}

    root = group("root", [
        group("animal", [group("mammal", [leaf("cat"), leaf("dog")]), group("bird", [leaf("owl")])]),
        group("thing", [group("tool", [leaf("saw"), leaf("axe")])]),
    ])  # fmt: skip
    return Tree.from_nested(root, ANIMALS, name="animals")


def ranked_logits(*orders: list[str]) -> torch.Tensor:
    """One row per image; the classes named come first, in that order."""
    rows = []
    for order in orders:
        row = torch.zeros(len(ANIMALS))
        for rank, name in enumerate(order):
            row[ANIMALS.index(name)] = 10.0 - rank
        rows.append(row)
    return torch.stack(rows)


def cat_images_tally(k: int = 2) -> HierarchyTally:
    """Four images of a cat, answered cat, dog, owl and saw (LCA heights 0, 1, 2, 3)."""
    tally = HierarchyTally(animal_tree(), ANIMALS, k=k)
    logits = ranked_logits(["cat", "dog"], ["dog", "cat"], ["owl", "saw"], ["saw", "axe"])
    tally.add(logits, torch.full((4,), ANIMALS.index("cat")))
    return tally


def test_the_metrics_of_four_cat_images_match_the_hand_computed_values():
    report = cat_images_tally().report()
    # per level: animal 3 of 4 (saw is a thing), mammal 2 of 4, the class 1 of 4
    assert [row["top1"] for row in report["levels"]] == pytest.approx([0.75, 0.5, 0.25])
    assert report["mistakes"] == 3
    assert report["mistake_severity"] == pytest.approx((1 + 2 + 3) / 3)
    assert report["hdist_at_1"] == pytest.approx((0 + 1 + 2 + 3) / 4)
    # top two: (cat, dog) 0 and 1, (dog, cat) 1 and 0, (owl, saw) 2 and 3, (saw, axe) 3 and 3
    assert report["hdist_at_k"] == pytest.approx((0.5 + 0.5 + 2.5 + 3) / 4)
    assert report["hdist_k"] == 2
    # ancestor sets without the root: 3 nodes each; shared 3, 2, 1, 0 of them
    assert report["hprecision"] == report["hrecall"] == report["hf1"] == pytest.approx(6 / 12)


def ancestors(tree: Tree, node: str) -> set[str]:
    """A node and its ancestors, root left out (Kiritchenko et al.'s augmented label)."""
    return set(nx.ancestors(tree.graph, node) | {node}) - {tree.root}


def test_hierarchical_precision_and_recall_follow_the_set_definition_and_networkx_lcas():
    tree = animal_tree()
    torch.manual_seed(0)
    logits = torch.randn(200, len(ANIMALS))
    truth = torch.randint(len(ANIMALS), (200,))
    tally = HierarchyTally(tree, ANIMALS, k=3)
    tally.add(logits, truth)
    report = tally.report()
    predicted = logits.argmax(1)
    shared = predicted_size = truth_size = 0
    heights = []
    for p, t in zip(predicted.tolist(), truth.tolist(), strict=True):
        p_set, t_set = ancestors(tree, ANIMALS[p]), ancestors(tree, ANIMALS[t])
        shared += len(p_set & t_set)
        predicted_size += len(p_set)
        truth_size += len(t_set)
        lca = nx.lowest_common_ancestor(tree.graph, ANIMALS[p], ANIMALS[t])
        heights.append(tree.levels - tree.node(lca).depth)
    assert report["hprecision"] == pytest.approx(shared / predicted_size)
    assert report["hrecall"] == pytest.approx(shared / truth_size)
    assert report["hdist_at_1"] == pytest.approx(sum(heights) / len(heights))
    wrong = [h for h in heights if h > 0]
    assert report["mistake_severity"] == pytest.approx(sum(wrong) / len(wrong))
    assert report["levels"][-1]["top1"] == pytest.approx(float((predicted == truth).double().mean()))


def test_lca_depths_of_every_pair_agree_with_networkx():
    tree = animal_tree()
    rows = ancestor_rows(tree, ANIMALS)
    every = torch.arange(len(ANIMALS))
    depths = lca_depths(rows, every.repeat_interleave(len(ANIMALS)), every.repeat(len(ANIMALS)))
    for (a, b), depth in zip(((a, b) for a in ANIMALS for b in ANIMALS), depths.tolist(), strict=True):
        assert depth == tree.node(nx.lowest_common_ancestor(tree.graph, a, b)).depth, (a, b)


def test_expected_calibration_error_over_two_bins_matches_the_hand_computed_value():
    tally = HierarchyTally(animal_tree(), ANIMALS)
    sure, unsure = math.log(36), math.log(4)  # softmax top: 36 / 40 = 0.9 and 4 / 8 = 0.5
    logits = torch.zeros(4, len(ANIMALS))
    logits[0, 1] = logits[1, 2] = sure  # 0.9 sure of cat (right) and of owl (wrong)
    logits[2, 1] = logits[3, 3] = unsure  # 0.5 sure of cat (right) and of saw (wrong)
    tally.add(logits, torch.full((4,), ANIMALS.index("cat")))
    # bin of 0.9: accuracy 1/2, confidence 0.9; bin of 0.5: accuracy 1/2, confidence 0.5
    assert tally.report()["ece"] == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(0.5 - 0.5))
    assert tally.report()["ece_bins"] == 15


def test_batches_add_up_to_one_pass():
    whole = cat_images_tally()
    parts = [HierarchyTally(animal_tree(), ANIMALS, k=2) for _ in range(2)]
    logits = ranked_logits(["cat", "dog"], ["dog", "cat"], ["owl", "saw"], ["saw", "axe"])
    target = torch.full((2,), ANIMALS.index("cat"))
    parts[0].add(logits[:2], target)
    parts[1].add(logits[2:], target)
    summed = [a + b for a, b in zip(parts[0].counts(), parts[1].counts(), strict=True)]
    assert parts[0].report(summed) == whole.report()


def test_a_tree_without_the_models_classes_is_refused_by_name():
    with pytest.raises(NhlError, match="lacks 1 of the model's classes.*'cow'"):
        HierarchyTally(animal_tree(), [*ANIMALS, "cow"])


def test_paired_differences_see_a_real_gap_and_call_no_gap_no_detectable_difference():
    levels = 3
    wrong = torch.full((400,), 1)  # every answer shares only the first level with its truth
    right = torch.full((400,), levels)
    gap = paired_differences(wrong, right, levels)
    assert gap["top1"]["b_minus_a"] == 1.0 and gap["top1"]["ci95"] == [1.0, 1.0]
    assert gap["hdist_at_1"]["b_minus_a"] == -2.0 and gap["top1"]["detectable"]
    torch.manual_seed(1)
    mixed = torch.randint(levels + 1, (400,))
    same = paired_differences(mixed, mixed.clone(), levels)
    assert all(d["b_minus_a"] == 0 and not d["detectable"] for d in same.values())


# ------------------------------------------------------------------------------ nhl eval
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A nested and a flat tiny model over the same six classes, their trees and a tiny folder."""
    root = tmp_path_factory.mktemp("metrics")
    torch.manual_seed(0)
    save_model(tiny_model(two_level_tree()), root / "nested.safetensors")
    flat = build_flat_tree([ClassEntry(c, c) for c in CLASSES], name="flat")
    save_model(tiny_model(flat, kind="flat"), root / "flat.safetensors")
    two_level_tree().save(root / "tree.json")
    make_tiny_data.make_image_folder(root / "data", CLASSES, per_class=3, size=32)
    return root


def eval_json(files, *args: str) -> dict:
    run = run_nhl("eval", *args, "--data", files / "data", "--workers", "0", "--json")
    assert run.code == 0, run.err
    return json.loads(run.out)


def test_nhl_eval_reports_the_hierarchical_metrics_on_the_models_tree(files):
    report = eval_json(files, files / "nested.safetensors")
    metrics = report["hierarchy"]
    assert [row["level"] for row in metrics["levels"]] == [1, 2]
    assert metrics["levels"][-1]["top1"] == pytest.approx(report["top1"])
    assert metrics["levels"][0]["top1"] >= report["top1"]
    assert metrics["hf1"] == pytest.approx(1 - metrics["hdist_at_1"] / 2)
    assert metrics["mistakes"] == round((1 - report["top1"]) * report["images"])
    assert 0 <= metrics["ece"] <= 1


def test_a_flat_model_is_measured_on_the_tree_it_is_given(files):
    alone = eval_json(files, files / "flat.safetensors")["hierarchy"]
    assert len(alone["levels"]) == 1  # its own tree is flat: every mistake has height 1
    assert alone["mistake_severity"] in (None, 1.0)
    on_tree = eval_json(files, files / "flat.safetensors", "--hierarchy", files / "tree.json")["hierarchy"]
    assert len(on_tree["levels"]) == 2
    assert on_tree["levels"][-1]["top1"] == pytest.approx(alone["levels"][-1]["top1"])


def test_nhl_eval_compare_shows_both_models_on_the_same_images_with_the_difference(files):
    nested, flat = files / "nested.safetensors", files / "flat.safetensors"
    report = eval_json(files, nested, "--compare", flat, "--hierarchy", files / "tree.json")
    assert report["a"]["model"] == str(nested) and report["b"]["model"] == str(flat)
    assert report["a"]["images"] == report["b"]["images"] == report["images"] > 0
    assert report["tree"]["levels"] == 2
    alone = eval_json(files, flat, "--hierarchy", files / "tree.json")
    assert report["b"]["hierarchy"] == alone["hierarchy"]
    top1 = report["differences"]["top1"]
    assert top1["b_minus_a"] == pytest.approx(report["b"]["top1"] - report["a"]["top1"])
    assert top1["ci95"][0] <= top1["b_minus_a"] <= top1["ci95"][1]
    people = run_nhl("eval", nested, "--compare", flat, "--data", files / "data", "--workers", "0")
    assert people.code == 0, people.err
    assert "mistake severity" in people.out and "95% interval" in people.out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--classes", "apple,banana"), ["--classes does not go with --compare"]),
        (("--route-top-k", "2"), ["--route-top-k does not go with --compare"]),
    ],
)
def test_options_that_restrict_one_model_are_refused_with_compare(files, extra, message):
    run = run_nhl("eval", files / "nested.safetensors", "--compare", files / "flat.safetensors",
                  "--data", files / "data", *extra)  # fmt: skip
    assert_one_line_error(run, *message)


def test_models_over_different_classes_cannot_be_compared(files, tmp_path):
    fewer = build_flat_tree([ClassEntry(c, c) for c in CLASSES[:4]], name="four")
    save_model(tiny_model(fewer, kind="flat"), tmp_path / "four.safetensors")
    run = run_nhl("eval", files / "nested.safetensors", "--compare", tmp_path / "four.safetensors",
                  "--data", files / "data")  # fmt: skip
    assert_one_line_error(run, "know different classes")
