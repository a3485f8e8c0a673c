"""Tree sources judged against Unicode's emoji tree, a hierarchy nobody in this project wrote.

Each source builds a tree over the emoji classes with Unicode's own group counts (9 groups, 99
subgroups), and ``nhl hierarchy compare``'s measures say how far it agrees with
``emoji-unicode-l3``: per level the adjusted Rand index and adjusted mutual information, over
all class pairs the Spearman correlation of lowest-common-ancestor depths.

- ``wordnet``: WordNet 3.0 over the classes whose names it knows as nouns (``dog``, ``rocket``;
  not ``grinning face``), against Unicode's tree cut to the same classes;
- ``induced``: clusters of a flat model's class weights (NBDT), given ``--model`` (a flat model
  trained with ``nhl train --data emoji --flat``);
- ``random``: Unicode's tree with its classes shuffled among the leaves (chance: about 0);
- ``flat``: every class under the root (no grouping at all).

    python benchmarks/bench_tree_sources.py --model emoji-flat.safetensors [--seeds 5] [--json] [--results]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from nhlcli.model.loading import classifier_weights
from nhlcli.taxonomy import Tree, build_tree, load_class_list, shipped_tree
from nhlcli.taxonomy.classes import ClassEntry
from nhlcli.taxonomy.compare import compare_trees
from nhlcli.taxonomy.wordnet import place_class

GROUPS = [9, 99]  # Unicode's own counts, so every source is judged at the same granularity


def summary(report: dict[str, Any]) -> dict[str, Any]:
    levels = report["per_level"]
    return {
        "classes": report["classes"],
        "groups_l1": levels[0]["groups_b"],
        "ari_l1": levels[0]["ari"],
        "ami_l1": levels[0]["ami"],
        "ari_l2": levels[1]["ari"] if len(levels) > 1 else None,
        "ami_l2": levels[1]["ami"] if len(levels) > 1 else None,
        "lca_spearman": report["lca_depth_spearman"],
    }


def shuffled(tree: Tree, seed: int) -> Tree:
    """The same shape with the classes dealt to the leaves at random."""
    data = tree.to_dict()
    slots: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        for child in node.get("children", []):
            (walk if child.get("children") else slots.append)(child)

    walk(data["tree"])
    leaves = [dict(slot) for slot in slots]
    random.Random(seed).shuffle(leaves)
    for slot, leaf in zip(slots, leaves, strict=True):
        slot.clear()
        slot.update(leaf)
    return Tree.from_dict(data)


COLUMNS = [
    ["source", "model", "{}"], ["classes compared", "classes", "{:,}"],
    ["level-1 groups built", "groups_l1", "{:,}"], ["ARI level 1", "ari_l1", "{:.3f}"],
    ["AMI level 1", "ami_l1", "{:.3f}"], ["ARI level 2", "ari_l2", "{:.3f}"],
    ["AMI level 2", "ami_l2", "{:.3f}"], ["LCA-depth Spearman", "lca_spearman", "{:.3f}"],
]  # fmt: skip


def store(results: dict[str, Any], model: str | None) -> None:
    """The sources as ``benchmarks/results/tree-sources.json``, the table report.py puts in the docs."""
    from results_store import invoked_command, write_results

    random_row = results["random"]
    # the random trees have Unicode's shape over every class; their summary keeps only the means
    shape = {"classes": results["flat"]["classes"], "groups_l1": GROUPS[0]}
    labels = {
        "wordnet": f"WordNet (names it knows, of {results['wordnet']['placed_of']:,})",
        "induced": f"induced (flat model `{model}`)",
        "random": f"random (Unicode's shape, classes shuffled; mean of {random_row['seeds']}, "
        f"ARI spread {random_row['spread_ari_l1']:.3f})",
        "flat": "flat",
    }
    write_results(
        "tree-sources",
        title=f"Tree sources against Unicode's emoji tree ({GROUPS[0]} groups, {GROUPS[1]} subgroups)",
        command=invoked_command(),
        notes="Only the induced row depends on a machine (the one its flat model was trained on).",
        setup={"reference": "emoji-unicode-l3", "groups": GROUPS, "seeds": random_row["seeds"],
               "arms": {name: {"label": labels[name]} for name in results}, "table": {"columns": COLUMNS}},
        runs=[{"model": name, **shape, **row} for name, row in results.items()],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a flat model trained on emoji (for the induced source)")
    parser.add_argument("--seeds", type=int, default=5, help="shuffles for the random baseline")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", action="store_true", help="store the sources' figures for report.py")
    args = parser.parse_args()
    unicode = shipped_tree("emoji-unicode-l3")
    entries = load_class_list("emoji")
    results: dict[str, Any] = {}

    start = time.perf_counter()
    known = [e for e in entries if place_class(e).synset is not None]
    placed = [ClassEntry(e.id, e.name, None, ()) for e in known]
    wordnet = build_tree("wordnet", placed, levels=3, groups=[min(9, len(placed)), min(99, len(placed))])
    results["wordnet"] = summary(compare_trees(unicode.subtree([e.id for e in known]), wordnet))
    results["wordnet"]["placed_of"] = len(entries)
    results["wordnet"]["seconds"] = round(time.perf_counter() - start, 1)

    if args.model:
        start = time.perf_counter()
        weights, model_entries = classifier_weights(args.model)
        induced = build_tree("induced", model_entries, levels=3, groups=GROUPS, class_weights=weights)
        results["induced"] = summary(compare_trees(unicode, induced))
        results["induced"]["seconds"] = round(time.perf_counter() - start, 1)

    chance = [summary(compare_trees(unicode, shuffled(unicode, seed))) for seed in range(args.seeds)]
    results["random"] = {
        key: round(statistics.mean(r[key] for r in chance), 4)
        for key in ("ari_l1", "ami_l1", "ari_l2", "lca_spearman")
    }
    results["random"]["spread_ari_l1"] = round(
        max(r["ari_l1"] for r in chance) - min(r["ari_l1"] for r in chance), 4
    )
    results["random"]["seeds"] = args.seeds
    results["flat"] = summary(compare_trees(unicode, build_tree("flat", entries)))
    if args.results:
        store(results, args.model)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"against emoji-unicode-l3 ({len(unicode.classes)} classes), group counts {GROUPS}")
    for name, row in results.items():
        print(f"{name:8s} " + "  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
