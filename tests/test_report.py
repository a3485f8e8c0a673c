"""benchmarks/report.py: docs/results.md is what the stored per-seed figures give, verdicts follow
each claim's declared design, and one changed figure changes every place it shows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "benchmarks" / "report.py"
sys.path.insert(0, str(REPO / "benchmarks"))

import claims as claims_module  # noqa: E402
import report  # noqa: E402
from results_store import SCHEMA, add_runs, load_results, write_results  # noqa: E402


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPORT), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def copy(tmp_path: Path) -> tuple[Path, Path]:
    """The committed results and docs, copied where a test may change them."""
    results, docs = tmp_path / "results", tmp_path / "docs"
    shutil.copytree(REPO / "benchmarks" / "results", results)
    docs.mkdir()
    for name in report.DOCS:
        shutil.copy(REPO / "docs" / name, docs / name)
    return results, docs


@pytest.fixture
def loaded() -> dict:
    """The committed results, read afresh, for a test that changes them in memory only."""
    return load_results(REPO / "benchmarks" / "results")


def declared(claim_id: str) -> claims_module.Claim:
    return next(c for c in claims_module.CLAIMS if c.id == claim_id)


def set_figure(results: Path, experiment: str, model: str, seed: int, top1: float) -> float:
    path = results / f"{experiment}.json"
    document = json.loads(path.read_text())
    run = next(r for r in document["runs"] if r["model"] == model and r.get("seed") == seed)
    old, run["top1"] = run["top1"], top1
    path.write_text(json.dumps(document))
    return old


def block(text: str, name: str) -> str:
    start = text.index(f"<!-- report:{name} -->")
    return text[start : text.index(f"<!-- /report:{name} -->", start)]


def claim_row(text: str, claim_text: str) -> str:
    return next(line for line in block(text, "claims").splitlines() if f"| {claim_text} |" in line)


def test_committed_docs_equal_what_the_committed_results_give():
    run = run_report("--check")
    assert run.returncode == 0, run.stderr


def test_one_changed_seed_changes_the_verdict_and_the_figure_everywhere(copy):
    results, docs = copy
    before = (docs / "results.md").read_text()
    assert "**held**" in claim_row(before, "N2HL matches a flat ResNet18 (10 epochs)")
    set_figure(results, "fm-long", "n2hl", 0, 90.00)

    stale = run_report("--check", "--results", str(results), "--docs", str(docs))
    assert stale.returncode == 1
    assert "results.md" in stale.stderr and "--write" in stale.stderr

    assert run_report("--write", "--results", str(results), "--docs", str(docs)).returncode == 0
    after = (docs / "results.md").read_text()
    row = claim_row(after, "N2HL matches a flat ResNet18 (10 epochs)")
    assert "no detectable difference" in row and "**held**" not in row
    assert "90.00, 92.18, 92.16" in block(after, "fm-long")  # the per-seed table
    assert "91.45% ± 1.25" in row  # the mean the claims table quotes
    # the sentence under the table says the same as the claims table
    assert "no detectable difference: N2HL (WordNet) 91.45%" in block(after, "claim.nhl-matches-flat-10ep")
    # the cut-trunk comparison reads the same runs, so it moves too
    control = "N2HL beats a flat classifier on its own cut trunk (10 epochs): its edge comes from its "
    control += "branches"
    assert "91.45%" in claim_row(after, control)
    assert run_report("--check", "--results", str(results), "--docs", str(docs)).returncode == 0


def test_a_small_test_set_widens_the_interval_and_can_withdraw_a_verdict(loaded):
    claim = declared("lean-not-worse-emoji-e20")
    assert claim.with_test_error  # 608 test images
    outcome = report.compare(loaded, claim)
    seed_low, seed_high = outcome["seed_interval"]
    low, high = outcome["interval"]
    assert low < seed_low and high > seed_high
    # the seeds alone would say held; with the test set's sampling error the runs cannot tell
    assert report.verdict(outcome["seed_interval"], "not-worse", claim.margin) == "held"
    assert outcome["verdict"] == "no detectable difference"


def test_pairing_follows_the_declared_design_not_the_runs(loaded):
    paired = declared("nhl-matches-flat-2ep")
    assert report.compare(loaded, paired)["test"] == "paired t"
    welch = claims_module.Claim(**{**paired.__dict__, "design": "welch"})
    assert report.compare(loaded, welch)["test"] == "Welch t"
    # a seed only one arm ran has no partner: the pairs are the seeds both ran, and the row says so
    loaded["fm-classification"]["runs"] = [
        r for r in loaded["fm-classification"]["runs"] if not (r["model"] == "flat" and r["seed"] == 2)
    ]
    outcome = report.compare(loaded, paired)
    assert outcome["seeds"] == [0, 1] and outcome["n"] == (2, 2)
    assert "seeds 0, 1 (the seeds both arms ran)" in report.judge(loaded, paired)["evidence"]
    # arms with no seed in common cannot be paired: refused, not quietly unpaired
    for run in loaded["fm-classification"]["runs"]:
        if run["model"] == "flat":
            run["seed"] += 10
    with pytest.raises(report.ReportError, match="declared paired"):
        report.compare(loaded, paired)


def test_one_run_a_side_gives_no_verdict(loaded):
    claim = declared("frozen-nhl-beats-flat-head")
    assert report.judge(loaded, claim)["verdict"] == "no verdict (one run)"


def test_every_doc_marker_is_a_block_the_program_makes(copy):
    results, docs = copy
    text = (docs / "results.md").read_text()
    (docs / "results.md").write_text(
        text + "\n<!-- report:no-such-table -->\n<!-- /report:no-such-table -->\n"
    )
    run = run_report("--check", "--results", str(results), "--docs", str(docs))
    assert run.returncode == 2
    assert "no-such-table" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_file_that_is_not_a_results_file_is_refused_in_one_line(copy):
    results, docs = copy
    (results / "stray.json").write_text(json.dumps({"schema": "something-else", "name": "stray"}))
    run = run_report("--check", "--results", str(results), "--docs", str(docs))
    assert run.returncode == 2
    assert "stray.json" in run.stderr and "Traceback" not in run.stderr


def test_results_files_are_written_whole_with_their_machine(tmp_path):
    path = write_results(
        "demo-run",
        title="t",
        command="python benchmarks/x.py",
        setup={"test_images": 10},
        runs=[{"model": "a", "seed": 0, "top1": 50.0}],
        date="2026-12-06",
        directory=tmp_path,
    )
    document = json.loads(path.read_text())
    assert document["schema"] == SCHEMA and document["runs"][0]["top1"] == 50.0
    assert {"cpu", "threads", "torch"} <= set(document["machine"])
    assert [p.name for p in tmp_path.iterdir()] == ["demo-run.json"]  # no temporary left beside it
    with pytest.raises(ValueError, match="model"):
        write_results(
            "bad", title="t", command="c", setup={}, runs=[{"seed": 0}], date="d", directory=tmp_path
        )


def test_runs_added_one_process_at_a_time_build_one_results_file(tmp_path):
    facts = {"cpu": "test cpu", "threads": 2}
    common = dict(title="t", command="c", date="2026-12-06", directory=tmp_path, machine_facts=facts)
    add_runs(
        "budget",
        [{"model": "nhl", "seed": 0, "top1": 30.0}],
        setup={"arms": {"nhl": {"label": "N"}}},
        **common,
    )
    add_runs(
        "budget",
        [{"model": "flat", "seed": 0, "top1": 10.0}],
        setup={"arms": {"flat": {"label": "F"}}},
        **common,
    )
    add_runs(
        "budget", [{"model": "nhl", "seed": 0, "top1": 31.0}], **common
    )  # a rerun replaces its own record
    document = json.loads((tmp_path / "budget.json").read_text())
    assert sorted((r["model"], r["top1"]) for r in document["runs"]) == [("flat", 10.0), ("nhl", 31.0)]
    assert document["setup"]["arms"] == {"nhl": {"label": "N"}, "flat": {"label": "F"}}
    other = {**common, "machine_facts": {"cpu": "another cpu", "threads": 2}}
    with pytest.raises(ValueError, match="another name"):
        add_runs("budget", [{"model": "flat", "seed": 1, "top1": 9.0}], **other)


def test_the_study_stores_its_cached_runs_as_the_results_report_reads(tmp_path):
    import results_study

    study = results_study.Study(tmp_path / "work", epochs=2, log=False)
    runs = study.workdir / "runs"
    for name, top1 in (("flat-resnet18", (0.8889, 0.8894)), ("n2hl-wordnet", (0.8919, 0.8913))):
        for seed, value in enumerate(top1):
            model = f"models/{name}-s{seed}.safetensors"
            cached = {"command": f"nhl train ... --seed {seed}", "model": model,
                      "test_top1": value, "test_top5": 0.99, "history": [], "params": {"total": 3_610_000},
                      "gmacs": 0.0303, "wall_s": 150.0 + seed}  # fmt: skip
            (runs / f"train-{name}-s{seed}.json").write_text(json.dumps(cached))
    latency = [{"median_ms": 2.9}, {"median_ms": 11.5}]
    cost = {"params": {"total": 3_190_000}, "gmacs": 0.0287, "latency": latency}
    cutout = {"classes": "Sandal,Sneaker,Ankle boot", "expert_cost": cost, "parent_cost": cost,
              "flat_all_cost": cost, "flat_subset": 0.9533, "flat_subset_cost": cost,
              "seeds": {"0": {"expert": 0.9593, "full_nhl": 0.9593, "flat_all": 0.9533}}}  # fmt: skip
    (runs / "cutout-footwear.json").write_text(json.dumps(cutout))

    written = results_study.store(study, long_epochs=10, directory=tmp_path / "results")
    assert sorted(p.name for p in written) == ["fm-classification.json", "fm-cutouts.json"]
    stored = load_results(tmp_path / "results")
    table = "\n".join(report.arms_table(stored, "fm-classification"))
    assert "| flat ResNet18 | 2 | 88.91% ± 0.04 | 88.89, 88.94 | 3.61M | 0.0303 | 150 s |" in table
    paired = declared("nhl-matches-flat-2ep")
    assert report.compare(stored, paired)["seeds"] == [0, 1]
    footwear = [r for r in stored["fm-cutouts"]["runs"] if r["subset"] == "footwear"]
    assert {r["model"] for r in footwear} == {"expert", "flat-all-10", "flat-subset-only", "cost"}
    assert stored["fm-cutouts"]["setup"]["subsets"]["footwear"]["test_images"] == 3000


def test_a_results_file_can_declare_its_own_table(copy):
    results, docs = copy
    write_results(
        "bench-x",
        title="t",
        command="python benchmarks/bench_x.py --results",
        setup={"arms": {"a": {"label": "model A"}},
               "table": {"columns": [["model", "model", "{}"], ["images/s", "ips", "{:.1f}"]]}},
        runs=[{"model": "a", "ips": 1234.56}, {"model": "b", "ips": 7.0}],
        date="2026-12-06",
        directory=results,
    )  # fmt: skip
    blocks = report.render(load_results(results))
    assert "| model A | 1234.6 |" in blocks["bench-x"] and "| b | 7.0 |" in blocks["bench-x"]
    assert "Rerun: `python benchmarks/bench_x.py --results`" in blocks["bench-x"]
    # a block no doc holds is an error, so a stored table cannot go unshown
    run = run_report("--check", "--results", str(results), "--docs", str(docs))
    assert run.returncode == 2 and "bench-x" in run.stderr


def test_a_severity_claim_reads_levels_and_widens_by_the_stored_bootstraps(loaded):
    claim = declared("hierarchy-emoji-severity")
    assert claim.unit == "levels" and claim.with_test_error  # 608 test images
    outcome = report.compare(loaded, claim)
    seed_low, seed_high = outcome["seed_interval"]
    low, high = outcome["interval"]
    assert low < seed_low and high > seed_high
    evidence = report.judge(loaded, claim)["evidence"]
    means = evidence.split(": ")[0]  # "flat ResNet18 1.697 ± 0.004 (3 runs) against N3HL ..."
    assert "±" in means and "%" not in means  # levels of the tree, not percentages
    assert " levels, 95% interval " in evidence
    assert "from the per-seed bootstraps" in evidence
    # the test-set error is the bootstraps' own: twice as wide bootstraps widen the verdict's interval
    for seed in loaded[claim.b.experiment]["setup"]["per_seed_bootstrap"]:
        lo, hi = seed["mistake_severity"]["ci95"]
        seed["mistake_severity"]["ci95"] = [2 * lo - hi, 2 * hi - lo]  # about the same centre, wider
    wider = report.compare(loaded, claim)["interval"]
    assert wider[0] < low and wider[1] > high
    # a results file that kept no bootstrap cannot give that error: refused with what to do
    del loaded[claim.b.experiment]["setup"]["per_seed_bootstrap"]
    with pytest.raises(report.ReportError, match="per-seed bootstrap"):
        report.compare(loaded, claim)


def test_a_guarantee_holds_only_if_every_budget_stays_within_its_share_of_halvings(loaded):
    claim = declared("gates-guarantee-fm")
    assert report.judge(loaded, claim)["verdict"] == "held"
    guaranteed = [r for r in loaded["gates-guarantee-fm"]["runs"] if r["model"] == "guaranteed, test set"]
    guaranteed[-1]["exceeded_share"] = guaranteed[-1]["delta"] + 0.025  # one halving too many at one budget
    outcome = report.judge(loaded, claim)
    assert outcome["verdict"] == "did not hold" and "12.5% over" in outcome["evidence"]
