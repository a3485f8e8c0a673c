"""Every table and verdict of docs/results.md, and the run figures of docs/benchmarks.md that
results.md judges, computed by one program from the per-seed figures in ``benchmarks/results/``.

Each claim's design (paired or Welch, difference, match or non-inferiority, its margin, whether
the test set's sampling error counts) is declared once in ``benchmarks/claims.py``; this program
applies the verdict rule of results.md's legend to every claim the same way. The docs hold the
generated text between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->`` markers.

    python benchmarks/report.py            # print every block
    python benchmarks/report.py --write    # put them into docs/ (atomic rewrite)
    python benchmarks/report.py --check    # exit 1 if a doc differs from what the results give
    python benchmarks/report.py --json     # each claim's numbers and verdict, for scripts
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims import CLAIMS, Arm, Claim  # noqa: E402
from evidence import difference, test_set_error, verdict, welch_from_summaries, widen  # noqa: E402
from results_store import RESULTS_DIR, load_results  # noqa: E402

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
DOCS = ("results.md", "benchmarks.md")
LEVEL = 0.95
KIND_WORDS = {
    "better": "difference",
    "equal": "match within ±{margin:g} pt",
    "not-worse": "non-inferiority, margin {margin:g} pt",
    "within-model": "one model, two scorings",
    "exact": "exact",
    "bound": "bound",
}
BLOCK = re.compile(r"<!-- report:(?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- /report:(?P=name) -->", re.S)


class ReportError(Exception):
    """A results file or a claim that the report cannot use, with what to fix."""


# --- the figures ---------------------------------------------------------------------------------


def arm_runs(results: dict[str, Any], arm: Arm) -> list[dict[str, Any]]:
    if arm.experiment not in results:
        raise ReportError(f"no results file {arm.experiment}.json in benchmarks/results")
    runs = [
        r
        for r in results[arm.experiment]["runs"]
        if r.get("model") == arm.model and all(r.get(k) == v for k, v in arm.where.items())
    ]
    if not runs:
        raise ReportError(f"{arm.experiment}.json has no runs of {arm.model} {arm.where or ''}".rstrip())
    if arm.scale != 1:  # a figure stored as a fraction: in points
        runs = [{**r, arm.metric: r[arm.metric] * arm.scale} for r in runs]
    return runs


def arm_label(results: dict[str, Any], arm: Arm) -> str:
    if arm.label:
        return arm.label
    arms = results[arm.experiment]["setup"].get("arms", {})
    label = arms.get(arm.model, {}).get("label", arm.model)
    extras = [
        f"x{v:g}" if k == "scale" else str(v) for k, v in arm.where.items() if k not in ("seed", "subset")
    ]
    return f"{label} ({', '.join(extras)})" if extras else label


def summary(runs: list[dict[str, Any]], metric: str) -> tuple[float, float | None, int]:
    """Mean, sd and run count of ``metric``, from per-seed runs or a kept summary."""
    if len(runs) == 1 and f"{metric}_mean" in runs[0]:
        return runs[0][f"{metric}_mean"], runs[0][f"{metric}_sd"], runs[0]["n"]
    values = [r[metric] for r in runs]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def compare(results: dict[str, Any], claim: Claim, level: float = LEVEL) -> dict[str, Any]:
    """``b - a`` for one claim with the interval its design asks for, and the verdict."""
    assert claim.a is not None and claim.b is not None
    runs_a, runs_b = arm_runs(results, claim.a), arm_runs(results, claim.b)
    stats_a, stats_b = summary(runs_a, claim.a.metric), summary(runs_b, claim.b.metric)
    seeds_a = [r.get("seed") for r in runs_a]
    seeds_b = [r.get("seed") for r in runs_b]
    if claim.kind == "within-model":
        return within_model(claim, stats_a, stats_b, seeds_b, level)
    if claim.design == "paired":
        order = sorted(set(seeds_a) & set(seeds_b) - {None})
        if not order:
            raise ReportError(
                f"claim {claim.id} is declared paired, but its arms ran seeds {seeds_a} and {seeds_b}, none "
                "in common: rerun them on the same seeds, or declare design='welch' in benchmarks/claims.py"
            )
        by_seed_a = {r["seed"]: r[claim.a.metric] for r in runs_a}
        by_seed_b = {r["seed"]: r[claim.b.metric] for r in runs_b}
        result = difference([by_seed_a[s] for s in order], [by_seed_b[s] for s in order], True, level)
        seeds_b = order  # the pairs: a seed only one arm ran has no partner
    elif stats_a[1] is not None and stats_b[1] is not None and "top1_mean" in (runs_a[0] | runs_b[0]):
        result = welch_from_summaries(stats_a, stats_b, level)  # type: ignore[arg-type]
    else:
        values_a = [r[claim.a.metric] for r in runs_a]
        values_b = [r[claim.b.metric] for r in runs_b]
        result = difference(values_a, values_b, False, level)
    seed_interval = result["interval"]
    if claim.with_test_error and seed_interval is not None:
        assert claim.test_images is not None
        if claim.unit == "points":
            error = test_set_error(stats_a[0], stats_b[0], claim.test_images)
        else:
            error = bootstrap_error(results, claim)
        result = widen(result, error, level)
    said = verdict(result["interval"], claim.kind, claim.margin)
    return {
        **result,
        "seed_interval": seed_interval,
        "a": stats_a,
        "b": stats_b,
        "seeds": sorted(s for s in seeds_b if s is not None),
        "verdict": said,
    }


def bootstrap_error(results: dict[str, Any], claim: Claim) -> float:
    """The test set's sampling error of ``b - a`` for a metric other than top-1: the mean standard
    error of the per-seed paired bootstraps over the test images that the results file keeps
    (``setup.per_seed_bootstrap``, each a 95% interval of the difference on one seed's models)."""
    assert claim.b is not None
    seeds = results[claim.b.experiment]["setup"].get("per_seed_bootstrap")
    if not seeds or any(claim.b.metric not in seed for seed in seeds):
        raise ReportError(
            f"claim {claim.id} adds the test-set error of {claim.b.metric}, but "
            f"{claim.b.experiment}.json keeps no per-seed bootstrap of it: rerun its benchmark, or "
            "declare test_error=False in benchmarks/claims.py"
        )
    z = 1.959963984540054
    halves = [(seed[claim.b.metric]["ci95"][1] - seed[claim.b.metric]["ci95"][0]) / 2 for seed in seeds]
    return statistics.mean(halves) / z * claim.b.scale


def within_model(
    claim: Claim,
    stats_a: tuple[float, Any, int],
    stats_b: tuple[float, Any, int],
    seeds: list[Any],
    level: float,
) -> dict[str, Any]:
    """One model scored two ways on the same images: no seeds to spread, so the interval is the
    test set's sampling error alone, and the verdict is that of a difference."""
    if stats_a[2] != 1 or stats_b[2] != 1 or claim.test_images is None:
        raise ReportError(
            f"claim {claim.id} is within-model: each arm must be one scoring, with test_images set"
        )
    diff = stats_b[0] - stats_a[0]
    base = {"diff": diff, "sd": None, "interval": (diff, diff), "test": "one model", "n": (1, 1)}
    result = widen(base, test_set_error(stats_a[0], stats_b[0], claim.test_images), level)
    return {
        **result,
        "seed_interval": None,
        "a": stats_a,
        "b": stats_b,
        "seeds": [s for s in seeds if s is not None],
        "verdict": verdict(result["interval"], claim.rule, claim.margin),
    }


def judge(results: dict[str, Any], claim: Claim) -> dict[str, Any]:
    """One claim's verdict and the evidence sentence that carries it."""
    if claim.kind in ("exact", "bound"):
        assert claim.check is not None
        said, evidence = claim.check(results)
        return {"id": claim.id, "verdict": said, "evidence": evidence, "interval": None}
    outcome = compare(results, claim)
    return {"id": claim.id, **outcome, "evidence": evidence_sentence(results, claim, outcome)}


def _digits(unit: str) -> int:
    """Points of top-1 read to 0.01; a metric's own unit (levels of the tree) to 0.001."""
    return 2 if unit == "points" else 3


def _figure(value: float, unit: str) -> str:
    return f"{value:.2f}%" if unit == "points" else f"{value:.3f}"


def _change(value: float, unit: str) -> str:
    return f"{value:+.{_digits(unit)}f} {unit}"


def _mean_sd(stats: tuple[float, float | None, int], unit: str = "points") -> str:
    mean, sd, n = stats
    runs = "one run" if n == 1 else f"{n} runs"
    spread = "" if sd is None else f" ± {sd:.{_digits(unit)}f}"
    return _figure(mean, unit) + spread + f" ({runs})"


def _interval(interval: tuple[float, float], unit: str = "points") -> str:
    digits = _digits(unit)
    return f"{interval[0]:+.{digits}f} to {interval[1]:+.{digits}f}"


def evidence_sentence(results: dict[str, Any], claim: Claim, outcome: dict[str, Any]) -> str:
    assert claim.a is not None and claim.b is not None
    unit = claim.unit
    if outcome["test"] == "one model":
        images = f"{claim.test_images:,}"
        interval = _interval(outcome["interval"], unit)
        return (
            f"{arm_label(results, claim.b)} {_figure(outcome['b'][0], unit)} against "
            f"{arm_label(results, claim.a)} {_figure(outcome['a'][0], unit)}: "
            f"{_change(outcome['diff'], unit)}, "
            f"95% interval {interval} from the sampling error of {images} test images (one model)"
        )
    text = (
        f"{arm_label(results, claim.b)} {_mean_sd(outcome['b'], unit)} against {arm_label(results, claim.a)} "
        f"{_mean_sd(outcome['a'], unit)}: {_change(outcome['diff'], unit)}"
    )
    if outcome["seed_interval"] is None:
        return text + ", one run a side, no interval"
    test = outcome["test"]
    if test == "paired t":
        ran = (outcome["a"][2], outcome["b"][2])
        both = " (the seeds both arms ran)" if len(outcome["seeds"]) < max(ran) else ""
        test += f", seeds {_seed_list(outcome['seeds'])}{both}"
    text += f", 95% interval {_interval(outcome['seed_interval'], unit)} ({test})"
    if "test_error" in outcome:
        half = 1.96 * outcome["test_error"]
        images = f"{claim.test_images:,}"
        widened = _interval(outcome["interval"], unit)
        source = "" if unit == "points" else ", from the per-seed bootstraps"
        error = f"±{half:.{_digits(unit)}f}{source}"
        text += f"; with the sampling error of {images} test images ({error}) {widened}"
    return text


def _seed_list(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def verdict_word(said: str) -> str:
    """Bold where the evidence decided, plain where it could not."""
    return f"**{said}**" if said.startswith(("held", "did not hold")) else said


# --- the blocks ----------------------------------------------------------------------------------


def claim_rows(results: dict[str, Any], judged: dict[str, dict[str, Any]], claims: list[Claim]) -> list[str]:
    lines = ["| source | claim | design | verdict | evidence | rerun |", "|---|---|---|---|---|---|"]
    for claim in claims:
        outcome = judged[claim.id]
        kind = KIND_WORDS[claim.kind].format(margin=claim.margin)
        single = claim.kind in ("exact", "bound", "within-model")
        design = kind if single else f"{kind}, {claim.design}"
        if claim.with_test_error and not single:
            design += ", + test-set error"
        experiments = claim.experiments or tuple(dict.fromkeys(a.experiment for a in (claim.a, claim.b) if a))
        rerun = "<br>".join(f"`{results[e]['command']}`" for e in experiments)
        lines.append(
            f"| {claim.source} | {claim.text} | {design} | {verdict_word(outcome['verdict'])} | "
            f"{outcome['evidence']} | {rerun} |"
        )
    return lines


def family_note(results: dict[str, Any], judged: dict[str, dict[str, Any]], claims: list[Claim]) -> list[str]:
    """How many intervals the table reads, how many would cross by chance, and which verdicts a
    Bonferroni correction over the family would change."""
    family = [c for c in claims if judged[c.id].get("interval") is not None]
    level = 1 - (1 - LEVEL) / len(family)
    moved = []
    for claim in family:
        strict = compare(results, claim, level)["verdict"]
        if strict != judged[claim.id]["verdict"]:
            moved.append(f"{claim.text} ({judged[claim.id]['verdict']} -> {strict})")
    decided = sum(judged[c.id]["verdict"].startswith(("held", "did not hold")) for c in family)
    text = (
        f"The table reads {len(family)} intervals at 95%. Were every claim's true difference exactly on its "
        f"line, about {len(family) * (1 - LEVEL):.1f} of them would cross it by chance; {decided} of the "
        f"{len(family)} decided a verdict. Read at the Bonferroni level for the family "
        f"({100 * level:.2f}% each), "
    )
    if moved:
        text += f"{len(moved)} verdicts would change: " + "; ".join(moved) + "."
    else:
        text += "no verdict would change."
    return [text]


def arms_table(results: dict[str, Any], experiment: str) -> list[str]:
    """One row per arm: seeds, mean ± sd, the per-seed figures and the arm's costs."""
    document = results[experiment]
    arms = document["setup"].get("arms", {})
    names = list(dict.fromkeys(r["model"] for r in document["runs"]))
    columns = [
        ("params", "params_m", lambda v: f"{v:.2f}M"),
        ("GMACs", "gmacs", lambda v: f"{v:.4f}"),
        ("train time (median)", "train_s_median", lambda v: f"{v:.0f} s"),
        ("train images/s (median)", "train_images_per_s_median", lambda v: f"{v:.0f}"),
    ]
    columns = [c for c in columns if any(c[1] in arms.get(n, {}) for n in names)]
    split = "hold-out" if document["setup"].get("evaluated_on") == "holdout" else "test"
    header = ["model", "seeds", f"{split} top-1 (mean ± sd)", "per seed"] + [c[0] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        runs = [r for r in document["runs"] if r["model"] == name]
        mean, sd, n = summary(runs, "top1")
        per_seed = ", ".join(f"{r['top1']:.2f}" for r in runs) if "top1" in runs[0] else "not kept"
        cells = [
            arms.get(name, {}).get("label", name),
            str(n),
            f"{mean:.2f}%" + (f" ± {sd:.2f}" if sd else ""),
            per_seed,
        ]
        cells += [fmt(arms[name][key]) if key in arms.get(name, {}) else "" for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: the header row, its rule, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def _mean_top1(runs: list[dict[str, Any]]) -> str:
    return f"{statistics.mean(r['top1'] for r in runs):.2f}%"


def _cost(params_m: float, gmacs: float | None = None) -> str:
    return f"{params_m:.2f}M" + (f" / {gmacs:.4f}" if gmacs is not None else "")


def _ms(b1: float, b32: float) -> str:
    return f"{b1:.2f} / {b32:.2f} ms"


def cutouts_table(results: dict[str, Any]) -> list[str]:
    document = results["fm-cutouts"]
    header = [
        "subset", "expert (= full N2HL), mean of 3", "flat (all 10) on the subset, mean of 3",
        "flat (subset only), seed 0", "expert params / GMACs", "expert latency b1 / b32", "full N2HL",
        "flat (all 10)", "flat (subset only)",
    ]  # fmt: skip
    rows, per_seed = [], []
    for key, subset in document["setup"]["subsets"].items():
        runs = {m: _runs_of(document, m, key) for m in ("expert", "flat-all-10", "flat-subset-only", "cost")}
        c = runs["cost"][0]
        rows.append([
            f"{subset['label']} ({subset['classes']})",
            _mean_top1(runs["expert"]),
            _mean_top1(runs["flat-all-10"]),
            _mean_top1(runs["flat-subset-only"]),
            _cost(c["expert_params_m"], c["expert_gmacs"]),
            _ms(c["expert_ms_b1"], c["expert_ms_b32"]),
            f"{_cost(c['full_params_m'], c['full_gmacs'])}, {_ms(c['full_ms_b1'], c['full_ms_b32'])}",
            f"{_cost(c['flat_params_m'], c['flat_gmacs'])}, {_ms(c['flat_ms_b1'], c['flat_ms_b32'])}",
            f"{_cost(c['flat_subset_params_m'])}, {_ms(c['flat_subset_ms_b1'], c['flat_subset_ms_b32'])}",
        ])  # fmt: skip
        pairs = zip(runs["expert"], runs["flat-all-10"], strict=True)
        figures = ", ".join(f"{e['top1']:.2f}/{f['top1']:.2f}" for e, f in pairs)
        per_seed.append(f"{subset['label']} {figures}")
    return md_table(header, rows) + ["", "Per seed (expert / flat on all 10): " + "; ".join(per_seed) + "."]


def _runs_of(document: dict[str, Any], model: str, subset: str) -> list[dict[str, Any]]:
    return [r for r in document["runs"] if r["model"] == model and r["subset"] == subset]


def matched_table(results: dict[str, Any], judged: dict[str, dict[str, Any]]) -> list[str]:
    document = results["fm-matched"]
    arms = ("expert", "pruned-all-10", "pruned-subset")
    header = [
        "subset", "expert (no training)", "pruned, tuned on all 10", "pruned, tuned on the subset",
        "expert - pruned (all 10)", "expert - pruned (subset)", "GMACs expert / pruned",
        "params expert / pruned",
    ]  # fmt: skip
    rows, per_seed = [], []
    for key, subset in document["setup"]["subsets"].items():
        cells = []
        for tuned in ("all-10", "subset"):
            outcome = judged[f"expert-not-worse-than-pruned-{tuned}-{key}"]
            mark = " (with test-set error)" if "test_error" in outcome else ""
            interval = _interval(outcome["interval"])
            cells.append(f"{outcome['diff']:+.2f} ({interval}{mark}): {outcome['verdict']}")
        c = _runs_of(document, "cost", key)[0]
        rows.append([
            f"{subset['label']} ({subset['classes']})",
            *(_mean_top1(_runs_of(document, arm, key)) for arm in arms),
            *cells,
            f"{c['expert_gmacs']:.4f} / {c['pruned_gmacs']:.4f}",
            f"{c['expert_params_m']:.2f}M / {c['pruned_params_m']:.2f}M",
        ])  # fmt: skip
        seeds = zip(*(_runs_of(document, arm, key) for arm in arms), strict=True)
        figures = ", ".join("/".join(f"{r['top1']:.2f}" for r in seed) for seed in seeds)
        per_seed.append(f"{subset['label']} {figures}")
    return md_table(header, rows) + [
        "",
        "Per seed (expert / pruned all 10 / pruned subset): " + "; ".join(per_seed) + ".",
    ]


def equal_budget_table(results: dict[str, Any]) -> list[str]:
    document = results["emoji1861-equal-budget"]
    arms = document["setup"]["arms"]
    header = [
        "model", "seed", "epochs in the budget", "images seen", "images/s (in the loop)", "test top-1",
        "test top-5", "peak memory per image",
    ]  # fmt: skip
    rows = [
        [arms[r["model"]]["label"], str(r["seed"]), str(r["epochs"]), f"{r['images_seen']:,}",
         f"{r['images_per_s']:.1f}", f"{r['top1']:.2f}%", f"{r['top5']:.2f}%",
         f"{r['peak_mb_per_image']:.1f} MB"]
        for r in document["runs"]
    ]  # fmt: skip
    return md_table(header, rows)


def emoji_experts_table(results: dict[str, Any]) -> list[str]:
    document = results["emoji1861-experts"]
    header = ["model", "classes", "params", "GMACs", "latency batch 1 / 64 (ms)", "file"]
    header.append("same answers (test images)")
    names = {"flat": "flat ResNet18 (base network)", "full": "full `nhl-scale`"}
    rows = [
        [names.get(r["model"], f"expert, {r.get('which', '')}"), f"{r['classes']:,}", f"{r['params_m']:.2f}M",
         f"{r['gmacs']:.4f}", f"{r['ms_b1']:.1f} / {r['ms_b64']:.1f}", f"{r['file_mb']:.1f} MB",
         f"{r['same_answers']:,} / {r['answers']:,}" if "answers" in r else ""]
        for r in document["runs"]
    ]  # fmt: skip
    return md_table(header, rows)


def attention_controls_table(results: dict[str, Any]) -> list[str]:
    """Top-1 at each scale, and its change over the same model at x1, for every cue and target."""
    document = results["fm-attention-controls"]
    scales = document["setup"]["scales"]
    rows = []
    for cue, model in dict.fromkeys((r["cue"], r["model"]) for r in document["runs"]):
        curve = {r["scale"]: r["top1"] for r in document["runs"] if r["cue"] == cue and r["model"] == model}
        label = document["setup"]["arms"][model]["label"]
        rows.append([cue, label, *(f"{curve[s]:.2f} ({curve[s] - curve[1]:+.1f})" for s in scales)])
    return md_table(["cue", "attention on", *(f"x{s:g}" for s in scales)], rows)


def imagenet_table(results: dict[str, Any]) -> list[str]:
    """Paper 000's Table 1 beside each nhl shape: the full model, its named expert, and the
    plain network over the same classes (the paper's figures on its own shape's rows)."""
    header = [
        "model", "shape", "params paper / nhl", "GMACs paper / nhl", "expert", "expert params paper / nhl",
        "expert GMACs paper / nhl", "expert GMACs / full", "plain network params / GMACs",
        "expert GMACs / plain",
    ]  # fmt: skip
    rows = []
    for r in results["imagenet-table1"]["runs"]:
        paper = r["paper"] if r["variant"] == "nhl" else dict.fromkeys(r["paper"], "-")
        rows.append([
            r["model"], f"`{r['variant']}`", f"{paper['params']} / {r['params_m']:.2f}M",
            f"{paper['gmacs']} / {r['gmacs']:.2f}", f'"{r["expert"]}" ({r["expert_classes"]})',
            f"{paper['expert_params']} / {r['expert_params_m']:.2f}M",
            f"{paper['expert_gmacs']} / {r['expert_gmacs']:.2f}", f"{r['expert_gmacs'] / r['gmacs']:.2f}x",
            f"{r['base_params_m']:.2f}M / {r['base_gmacs']:.2f}",
            f"{r['expert_gmacs'] / r['base_gmacs']:.2f}x",
        ])  # fmt: skip
    return md_table(header, rows)


def gates_table(results: dict[str, Any]) -> list[str]:
    """Each operating point chosen on the hold-out: what it lost there, and once on the test split."""
    document = results["fm-gates-holdout"]
    arms = document["setup"]["arms"]
    header = [
        "model", "gates", "chosen on the hold-out", "hold-out drop", "test top-1 full / gated", "test drop",
        "GMACs saved (test)", "img/s gated / ungated",
    ]  # fmt: skip
    rows = []
    for test in (r for r in document["runs"] if r["split"] == "test"):
        held = next(
            r for r in document["runs"]
            if r["split"] == "holdout" and all(r[k] == test[k] for k in ("model", "loss", "budget_points"))
        )  # fmt: skip
        rule = "<= 0.25 pt lost" if test["budget_points"] == 0.25 else "most saved at <= 0.5 pt"
        rows.append([
            arms[test["model"]]["label"], test["loss"], rule, f"{held['drop_points']:.2f} pt",
            f"{test['top1_full']:.2f}% / {test['top1_gated']:.2f}%", f"{test['drop_points']:.2f} pt",
            f"{test['gmacs_saved_pct']:.1f}%",
            f"{test['images_per_s_gated']:.0f} / {test['images_per_s_full']:.0f}",
        ])  # fmt: skip
    return md_table(header, rows)


def attention_holdout_table(results: dict[str, Any]) -> list[str]:
    """The oracle curve on the hold-out (where the scale is chosen) and on the test split."""
    document = results["fm-attention-holdout"]
    curves = [r for r in document["runs"] if r["kind"] == "curve"]
    scales = sorted({r["scale"] for r in curves})
    rows = []
    for level in document["setup"]["levels"]:
        choice = next(r for r in document["runs"] if r["kind"] == "choice" and r["level"] == level)
        for split in ("holdout", "test"):
            curve = {r["scale"]: r for r in curves if r["level"] == level and r["split"] == split}
            cells = [f"{curve[x]['top1']:.2f} ({curve[x]['gain_points']:+.1f})" for x in scales]
            chosen = f"x{choice['scale']:g}" if split == "holdout" else ""
            rows.append([level, "hold-out" if split == "holdout" else "test", *cells, chosen])
    return md_table(["level", "split", *(f"x{x:g}" for x in scales), "chosen"], rows)


EXPERT_COLUMNS = {
    "expert_10_random_x_base": "expert of 10 random classes",
    "expert_10_of_a_subgroup_x_base": "expert of 10 classes of one subgroup",
    "expert_cat5_x_base": "cat-5 expert",
    "expert_20_random_x_base": "20 random classes",
}


def _against(row: dict[str, Any], base: dict[str, Any], key: str, shape: str) -> str:
    """A figure, and its multiple of the base network's beside it (none on the base's own row)."""
    text = shape.format(row[key])
    return text if row is base else f"{text} ({row[key] / base[key]:.2f}x)"


def cost_table(results: dict[str, Any], experiment: str) -> list[str]:
    """Each model's cost as measured side by side with its base network (``flat``, the same
    backbone), and each as a multiple of it."""
    document = results[experiment]
    arms = document["setup"]["arms"]
    runs = document["runs"]
    experts = [key for key in EXPERT_COLUMNS if any(key in r for r in runs)]
    backbones = list(dict.fromkeys(r["backbone"] for r in runs))
    header = ["backbone"] * (len(backbones) > 1) + [
        "model", "params", "GMACs (x base)", "train images/s (x base)", "backward memory per image (x base)",
    ] + [f"{EXPERT_COLUMNS[key]} (GMACs x base)" for key in experts]  # fmt: skip
    rows = []
    for backbone in backbones:
        base = next(r for r in runs if r["backbone"] == backbone and r["model"] == "flat")
        for r in (r for r in runs if r["backbone"] == backbone):
            rows.append([backbone] * (len(backbones) > 1) + [
                arms[r["model"]]["label"], f"{r['params_m']:.2f}M",
                _against(r, base, "gmacs", "{:.4f}"),
                _against(r, base, "train_images_per_s", "{:.1f}"),
                _against(r, base, "backward_mb_per_image", "{:.2f} MB"),
            ] + [f"{r[key]:.2f}x" if key in r else "" for key in experts])  # fmt: skip
    return md_table(header, rows)


def declared_table(document: dict[str, Any]) -> list[str]:
    """The table a results file declares for itself (``setup.table.columns``: header, record
    key and Python format per column; ``model`` shows the arm's label), one row per run: how a
    benchmark's single-run figures (timings, sizes, counts) reach the docs without a renderer
    of their own."""
    arms = document["setup"].get("arms", {})
    columns = document["setup"]["table"]["columns"]
    rows = []
    for run in document["runs"]:
        cells = []
        for _, key, shape in columns:
            value = run.get(key)
            if key == "model":
                value = arms.get(value, {}).get("label", value)
            cells.append("" if value is None else shape.format(value))
        rows.append(cells)
    return md_table([header for header, _, _ in columns], rows)


def provenance(results: dict[str, Any], experiment: str) -> list[str]:
    """The line under every table: where and when its runs ran, and how to rerun them."""
    document = results[experiment]
    m = document["machine"]
    where = m.get("cpu", "machine not recorded")
    if m.get("cores"):
        where += f", {m['cores']} cores"
    if m.get("flags"):
        where += f", flags {' '.join(m['flags'])}"
    if m.get("threads"):
        where += f", {m['threads']} torch threads"
    if m.get("torch"):
        where += f", torch {m['torch']}"
    return [f"({document['date']}; {where}; `{experiment}.json`. Rerun: `{document['command']}`.)"]


def render(results: dict[str, Any], claims: list[Claim] = CLAIMS) -> dict[str, str]:
    """Every block by name, as the docs should hold it."""
    judged = {claim.id: judge(results, claim) for claim in claims}
    blocks: dict[str, list[str]] = {
        "claims": claim_rows(results, judged, claims),
        "family": family_note(results, judged, claims),
        "cutouts": cutouts_table(results) + [""] + provenance(results, "fm-cutouts"),
        "matched": matched_table(results, judged) + [""] + provenance(results, "fm-matched"),
        "emoji1861-equal-budget": equal_budget_table(results)
        + [""]
        + provenance(results, "emoji1861-equal-budget"),
        "fm-attention-controls": attention_controls_table(results)
        + [""]
        + provenance(results, "fm-attention-controls"),
        "fm-gates-holdout": gates_table(results) + [""] + provenance(results, "fm-gates-holdout"),
        "fm-attention-holdout": attention_holdout_table(results)
        + [""]
        + provenance(results, "fm-attention-holdout"),
        "emoji1861-cost": cost_table(results, "emoji1861-cost")
        + [""]
        + provenance(results, "emoji1861-cost"),
        "imagenet1000-cost": cost_table(results, "imagenet1000-cost")
        + [""]
        + provenance(results, "imagenet1000-cost"),
        "imagenet-table1": imagenet_table(results) + [""] + provenance(results, "imagenet-table1"),
        "emoji1861-experts": emoji_experts_table(results) + [""] + provenance(results, "emoji1861-experts"),
    }
    for claim in claims:
        outcome = judged[claim.id]
        blocks[f"claim.{claim.id}"] = [f"{verdict_word(outcome['verdict'])}: {outcome['evidence']}."]
    for experiment in (
        "fm-classification",
        "fm-long",
        "fm-induced",
        "fm-frozen",
        "fm-lean-vs-paper",
        "emoji152-lean-vs-paper-e8",
        "emoji152-lean-vs-paper-e20",
        "emoji152-scale-e20",
        "fm-recipe-holdout-e10",
        "fm-recipe-holdout-e2",
        "emoji152-shapes-holdout",
        "emoji152-widths-holdout",
    ):
        blocks[experiment] = arms_table(results, experiment) + [""] + provenance(results, experiment)
    for name, document in results.items():
        if "table" in document["setup"] and name not in blocks:
            blocks[name] = declared_table(document) + [""] + provenance(results, name)
    return {name: "\n".join(lines) + "\n" for name, lines in blocks.items()}


# --- the docs ------------------------------------------------------------------------------------


def place(text: str, blocks: dict[str, str]) -> tuple[str, set[str]]:
    """``text`` with every marked block replaced by its rendering, and the names it holds."""
    found: set[str] = set()

    def swap(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in blocks:
            raise ReportError(
                f"the docs mark a block {name!r} that report.py does not make: remove the marker"
            )
        found.add(name)
        return f"<!-- report:{name} -->\n{blocks[name]}<!-- /report:{name} -->"

    return BLOCK.sub(swap, text), found


def write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def sync(docs_dir: Path, blocks: dict[str, str], write: bool) -> list[str]:
    """The docs whose blocks differ from ``blocks`` (rewritten when ``write``), and an error for
    every block that no doc holds."""
    stale, placed = [], set()
    for name in DOCS:
        path = docs_dir / name
        text = path.read_text(encoding="utf-8")
        updated, found = place(text, blocks)
        placed |= found
        if updated != text:
            stale.append(name)
            if write:
                write_atomic(path, updated)
    missing = sorted(name for name in set(blocks) - placed if not name.startswith("claim."))
    if missing:
        raise ReportError(f"no doc holds the blocks {', '.join(missing)}: add <!-- report:NAME --> markers")
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="the folder of results files")
    parser.add_argument("--docs", type=Path, default=DOCS_DIR, help="the folder holding results.md")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the docs' blocks")
    action.add_argument("--check", action="store_true", help="exit 1 if a doc's block is stale")
    action.add_argument("--json", action="store_true", help="print every claim's figures and verdict")
    args = parser.parse_args()
    try:
        results = load_results(args.results)
        if args.json:
            judged = [judge(results, claim) for claim in CLAIMS]
            print(json.dumps(judged, indent=1, default=list))
            return 0
        blocks = render(results)
        if not (args.write or args.check):
            for name, body in blocks.items():
                print(f"<!-- report:{name} -->\n{body}<!-- /report:{name} -->\n")
            return 0
        stale = sync(args.docs, blocks, write=args.write)
    except (ReportError, ValueError, KeyError, OSError) as error:
        print(f"report.py: {error}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(
            f"report.py: {', '.join(stale)} differ from what benchmarks/results gives: "
            "run python benchmarks/report.py --write",
            file=sys.stderr,
        )
        return 1
    print(("rewrote " + ", ".join(stale)) if args.write and stale else "docs match the results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
