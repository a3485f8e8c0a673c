"""Time tree builds as a user runs them: ImageNet-1k from WordNet (cold) and an LLM rebuild (warm cache).

Each run is a fresh ``nhl hierarchy build`` process, so the times include Python start-up, the
imports and loading WordNet: what a user waits for. The warm-cache LLM rebuild runs with no API
key and an unreachable server address, so it proves that a rebuild makes no network call; its
output is checked to be byte-identical to the first build's.

    python benchmarks/bench_hierarchy.py [--runs 5] [--json] [--results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nhlcli.taxonomy import load_class_list, shipped_tree
from nhlcli.taxonomy.llm import AnswerCache, LLMSettings, cache_key, class_labels, grouping_messages

GOAL_COLD_S = 5.0
GOAL_WARM_S = 1.0
ROWS = {
    "wordnet-cold": "ImageNet-1k, 3 levels from WordNet, cold",
    "llm-warm": "ImageNet-1k, 3 levels from an LLM, warm cache",
}


def nhl_build(args: list[str], env: dict[str, str]) -> float:
    """Wall time of one ``nhl hierarchy build`` process; fails loudly if the command fails."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "nhlcli", "hierarchy", "build", *args], capture_output=True, text=True, env=env
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build failed: {proc.stderr.strip()}")
    return elapsed


def answer_from_tree(tree_name: str, labels: dict[str, str]) -> str:
    """A valid LLM grouping answer with the shape of a shipped tree (what a good LLM would send)."""
    tree = shipped_tree(tree_name)

    def group(node_id: str) -> dict:
        kids = tree.children(node_id)
        if tree.node(kids[0]).is_leaf:
            return {"name": tree.node(node_id).name, "classes": [labels[k] for k in kids]}
        return {"name": tree.node(node_id).name, "groups": [group(k) for k in kids]}

    return json.dumps({"groups": [group(k) for k in tree.children(tree.root)]})


def warm_cache(path: Path, levels: int, model: str) -> None:
    """Write the cache a first LLM build would leave behind (one validated answer)."""
    entries = load_class_list("imagenet-1k")
    labels = class_labels(entries)
    messages = grouping_messages(labels, levels)
    answer = answer_from_tree(
        f"imagenet-1k-wordnet-l{levels}", dict(zip([e.id for e in entries], labels, strict=True))
    )
    cache = AnswerCache(path)
    cache.put(
        cache_key(model, messages), {"model": model, "messages": messages, "answer": answer, "attempts": 1}
    )


def store(result: dict) -> None:
    """The medians as ``benchmarks/results/tree-builds.json``, the table report.py puts in the docs."""
    from results_store import machine, write_results

    write_results(
        "tree-builds",
        title="ImageNet-1k tree builds as fresh nhl processes",
        command=f"python benchmarks/bench_hierarchy.py --runs {result['runs']} --results",
        machine_facts={**machine(), "threads": None},  # no torch computation: no thread count applies
        setup={
            "runs": result["runs"],
            "arms": {name: {"label": label} for name, label in ROWS.items()},
            "table": {"columns": [
                ["what", "model", "{}"],
                [f"median of {result['runs']}", "median_s", "{:.2f} s"],
                ["goal", "goal_s", "< {:g} s"],
                ["rebuilds byte-identical", "byte_identical", "{}"],
            ]},
        },
        runs=[
            {"model": "wordnet-cold", "median_s": result["wordnet_cold_median_s"],
             "all_s": result["wordnet_cold_all_s"], "goal_s": GOAL_COLD_S},
            {"model": "llm-warm", "median_s": result["llm_warm_median_s"], "all_s": result["llm_warm_all_s"],
             "goal_s": GOAL_WARM_S, "byte_identical": "yes" if result["llm_warm_byte_identical"] else "no"},
        ],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each build (median reported)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--results", action="store_true", help="store the medians for report.py")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    settings = LLMSettings()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cold = [
            nhl_build(["-s", "wordnet", "-c", "imagenet-1k", "-l", "3", "-o", str(out / "wn.json")], env)
            for _ in range(args.runs)
        ]
        cache = out / "cache.json"
        warm_cache(cache, 3, settings.model)
        llm_args = [
            "-s",
            "llm",
            "-c",
            "imagenet-1k",
            "-l",
            "3",
            "--cache",
            str(cache),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            settings.model,
        ]
        warm, outputs = [], []
        for i in range(args.runs):
            target = out / f"llm{i}.json"
            warm.append(nhl_build([*llm_args, "-o", str(target)], env))
            outputs.append(target.read_bytes())
        identical = all(o == outputs[0] for o in outputs)

    result = {
        "runs": args.runs,
        "wordnet_cold_median_s": round(statistics.median(cold), 3),
        "wordnet_cold_all_s": [round(t, 3) for t in cold],
        "llm_warm_median_s": round(statistics.median(warm), 3),
        "llm_warm_all_s": [round(t, 3) for t in warm],
        "llm_warm_byte_identical": identical,
        "goal_cold_s": GOAL_COLD_S,
        "goal_warm_s": GOAL_WARM_S,
        "cpu_count": os.cpu_count(),
    }
    if args.results:
        store(result)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"ImageNet-1k, 3 levels, {args.runs} fresh processes each ({os.cpu_count()} CPUs)")
    print(
        f"  WordNet build (cold):      median {result['wordnet_cold_median_s']:.2f} s  goal < {GOAL_COLD_S} s"
    )
    print(f"  LLM rebuild (warm cache):  median {result['llm_warm_median_s']:.2f} s  goal < {GOAL_WARM_S} s")
    print(f"  warm rebuilds byte-identical: {identical}; no API key set, server address unreachable")


if __name__ == "__main__":
    main()
