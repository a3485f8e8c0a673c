"""The results study of docs/results.md: the papers' claims measured with nhl on Fashion-MNIST.

Every experiment is a sequence of ``nhl`` commands (printed as they run), so each row of
docs/results.md can be re-run by hand. Models and per-experiment JSON go to ``--workdir``; a
finished step is not redone, so an interrupted study continues where it stopped.

    python benchmarks/results_study.py all --all-seeds        # every part and seed, then the report
    python benchmarks/results_study.py classification --seeds 3   # 3 seeds for flat and N2HL, 1 for the rest
    python benchmarks/results_study.py cutouts  # attention, frozen, gates, long, controls, matched, induced
    python benchmarks/results_study.py report                 # tables (Markdown) and plots

Parts: ``classification`` (paper 003, Table 3: flat against PHL small/big/lateSP/1branch and
N2HL-N4HL on one trunk, and ResNet18 cut where N2HL branches with one linear layer, the
control for the NHL's dropped stage; 3 seeds for the main rows, flat and N2HL), ``cutouts`` (Table 2:
experts against flat models trained on all classes and on the subset only), ``attention``
(section 4.4, the curve in one pass per level),
``frozen`` (paper 000: a frozen ImageNet-trained EfficientNet-Lite0 trunk with NHL and flat
heads), ``gates`` (paper 004: hinge against cross-entropy d-gates), ``long`` (flat, N2HL and the
cut-trunk flat for the recipe's full 10 epochs, 3 seeds, with the intervals for N2HL against
each), ``controls`` (top-down attention's controls on the seed-0 pair of ``long``), ``matched``
(each subset's expert from ``long``'s N2HL against ``long``'s flat network pruned to the
expert's GMACs and fine-tuned, on all classes and on the subset). The ImageNet-scale
architecture cost (paper 000, Table 1) is ``benchmarks/bench_experts.py table1``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from evidence import difference, judge, verdict

from nhlcli.demo import recipe_args
from nhlcli.model.files import read_metadata

EPOCHS = 2  # what fits a 2-hour study on a 2-core CPU; --epochs 10 for the 92% recipe
FLAT_TREE = "fm-flat-tree.json"
L4_TREE = "fm-wordnet-l4.json"

# name -> (nhl train options, main row: trained with every seed). The papers' models: NHL rows name
# the paper's shape (--variant nhl), not nhl train's default.
CLASSIFICATION: dict[str, tuple[list[str], bool]] = {
    "flat ResNet18": (["--flat"], True),
    "PHL small": (["--variant", "phl-small", "--hierarchy", FLAT_TREE], False),
    "PHL big": (["--variant", "phl-big", "--hierarchy", FLAT_TREE], False),
    "PHL lateSP": (["--variant", "phl-latesp", "--hierarchy", FLAT_TREE], False),
    "PHL 1branch": (["--variant", "phl-1branch", "--hierarchy", FLAT_TREE], False),
    "N2HL (WordNet)": (["--variant", "nhl", "--hierarchy", "fashion-mnist-wordnet-l2"], True),
    "N3HL (WordNet)": (["--variant", "nhl", "--hierarchy", "fashion-mnist-wordnet-l3"], False),
    "N4HL (WordNet)": (["--variant", "nhl", "--hierarchy", L4_TREE], False),
    # the control for the NHL's saving: ResNet18 cut where the N2HL branches, one linear layer
    "flat, cut trunk": (["--variant", "flat-trunk"], False),
}
FLAT, N2HL, CUT = "flat ResNet18", "N2HL (WordNet)", "flat, cut trunk"
INDUCED = "N2HL (induced)"  # NBDT's tree: grouped by the flat network's classifier rows
INDUCED_TREE = "fm-induced-l2.json"
LONG_ROWS = (FLAT, N2HL, CUT)  # trained again for the recipe's full 10 epochs
EQUAL_MARGIN = 0.5  # points: a claim that two models match holds when the 95% interval lies within it
SUBSETS: dict[str, list[str]] = {
    "lower 5": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"],
    "upper 5": ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "footwear": ["Sandal", "Sneaker", "Ankle boot"],
}
ATTEND_SCALES = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)
FROZEN_ROWS: dict[str, list[str]] = {  # name -> head options on the frozen trunk
    "Lite0 frozen + flat head": ["--flat"],
    "Lite0 frozen + N2HL head": ["--variant", "nhl", "--hierarchy", "fashion-mnist-wordnet-l2"],
}
FROZEN_SIZE = "64"  # EfficientNet-Lite0 at 64 px: 0.033 GMACs, like ResNet18 at 32 px
BENCH = Path(__file__).resolve().parent


class Study:
    """Runs ``nhl`` commands in a work directory, each result cached as JSON."""

    def __init__(self, workdir: Path, epochs: int, log: bool = True) -> None:
        self.workdir = workdir
        self.epochs = epochs
        self.log = log
        (workdir / "models").mkdir(parents=True, exist_ok=True)
        (workdir / "runs").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ plumbing
    def nhl(self, *args: str, as_json: bool = True) -> Any:
        """Run one ``nhl`` command (in the work directory), echo it, return its JSON output."""
        cmd = ["nhl", *args] + (["--json"] if as_json else [])
        if self.log:
            print("$ " + shlex.join(cmd), flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "nhlcli", *cmd[1:]], cwd=self.workdir, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"failed: {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout) if as_json else proc.stdout

    def cached(self, name: str, make: Any) -> Any:
        """The JSON result ``name`` from an earlier run, or ``make()`` stored under that name."""
        path = self.workdir / "runs" / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        start = time.perf_counter()
        result = make()
        result["wall_s"] = round(time.perf_counter() - start, 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)
        return result

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Print a part's wall time (the report sums the cached steps' times instead)."""
        start = time.perf_counter()
        yield
        print(f"# {part}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    def train(
        self, tag: str, options: Sequence[str], seed: int = 0, epochs: int | None = None
    ) -> dict[str, Any]:
        """Train one model with the default recipe (``--epochs`` here, or ``epochs``) unless it exists."""
        out = f"models/{tag}-s{seed}.safetensors"

        def make() -> dict[str, Any]:
            args = ["train", "--data", "fashion-mnist", *recipe_with(epochs or self.epochs, options)]
            summary = self.nhl(*args, "--seed", str(seed), "-o", out)
            cost = read_metadata(self.workdir / out)["cost"]
            return {
                "command": "nhl " + shlex.join([*args, "--seed", str(seed), "-o", out]),
                "model": out,
                "test_top1": summary["val_top1"],
                "test_top5": summary["val_top5"],
                "history": summary["history"],
                "params": cost["params"],
                "gmacs": cost["gmacs"],
            }

        return self.cached(f"train-{tag}-s{seed}", make)

    def trees(self) -> None:
        """The flat tree (PHL) and the 4-level WordNet tree, built once."""
        if not (self.workdir / FLAT_TREE).exists():
            self.nhl(
                "hierarchy",
                "build",
                "--source",
                "flat",
                "--classes",
                "fashion-mnist",
                "-o",
                FLAT_TREE,
                as_json=False,
            )
        if not (self.workdir / L4_TREE).exists():
            self.nhl(
                "hierarchy",
                "build",
                "--source",
                "wordnet",
                "--classes",
                "fashion-mnist",
                "--levels",
                "4",
                "-o",
                L4_TREE,
                as_json=False,
            )

    # ------------------------------------------------------------------ parts
    def classification(self, seeds: int, all_seeds: bool = False) -> dict[str, Any]:
        """Paper 003, Table 3: every variant on the same trunk and epochs; the main rows (or all,
        ``all_seeds``) with every seed, the others with seed 0."""
        self.trees()
        rows = {}
        for name, (options, main) in CLASSIFICATION.items():
            runs = [self.train(tag(name), options, seed) for seed in range(seeds if main or all_seeds else 1)]
            rows[name] = summarise(runs)
        return rows

    def long_training(self, seeds: int, epochs: int) -> dict[str, Any]:
        """The main rows and the cut-trunk control trained for ``epochs`` (the recipe's 10) with
        every seed: whether the 2-epoch verdict survives full training, with the intervals."""
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in LONG_ROWS}
        for seed in range(seeds):  # seed by seed, so that a stopped study leaves both rows alike
            for name in LONG_ROWS:
                runs[name].append(self.train(f"{tag(name)}-e{epochs}", CLASSIFICATION[name][0], seed, epochs))
        rows = {name: summarise(found) for name, found in runs.items()}
        return {"epochs": epochs, "rows": rows, "differences": long_differences(rows)}

    def induced(self, seeds: int, epochs: int) -> dict[str, Any]:
        """NBDT's question: is N2HL more accurate on the tree induced from the ``long`` flat
        network's classifier rows (seed 0) than on WordNet's? Both trained ``epochs`` with every
        seed, the N2HL-WordNet runs shared with ``long``."""
        flat_model = self.train(f"{tag(FLAT)}-e{epochs}", CLASSIFICATION[FLAT][0], 0, epochs)["model"]
        if not (self.workdir / INDUCED_TREE).exists():
            self.nhl("hierarchy", "build", "--source", "induced", "--model", flat_model,
                     "--levels", "2", "-o", INDUCED_TREE, as_json=False)  # fmt: skip
        trees = self.cached(
            "induced-tree",
            lambda: {
                "tree": json.loads((self.workdir / INDUCED_TREE).read_text()),
                "against_wordnet": self.nhl("hierarchy", "compare", INDUCED_TREE, "fashion-mnist-wordnet-l2"),
            },
        )
        options = ["--variant", "nhl", "--hierarchy", INDUCED_TREE]
        runs: dict[str, list[dict[str, Any]]] = {N2HL: [], INDUCED: []}
        for seed in range(seeds):
            runs[N2HL].append(self.train(f"{tag(N2HL)}-e{epochs}", CLASSIFICATION[N2HL][0], seed, epochs))
            runs[INDUCED].append(self.train(f"{tag(INDUCED)}-e{epochs}", options, seed, epochs))
        rows = {name: summarise(found) for name, found in runs.items()}
        return {"epochs": epochs, "rows": rows, "trees": trees, "difference": induced_difference(rows)}

    def cost(self, model: str) -> dict[str, Any]:
        """``nhl profile``: params, GMACs and latency at batch 1 and 32 (median, this machine's threads)."""
        return self.nhl("profile", model, "--batch-size", "32")["cost"]

    def evaluate(self, model: str, classes: str | None = None) -> float:
        """Test top-1 of ``nhl eval MODEL [--classes C]``, run in this process (the same library
        call, without dozens of process start-ups)."""
        from nhlcli.evaluation import evaluate_file

        args = ["eval", model] + (["--classes", classes] if classes else [])
        if self.log:
            print("$ " + shlex.join(["nhl", *args]), flush=True)
        selection = classes.split(",") if classes else None
        return evaluate_file(self.workdir / model, "fashion-mnist", classes=selection, workers=1)["top1"]

    def cutouts(self, seeds: int) -> dict[str, Any]:
        """Paper 003, Table 2: for each subset, the expert cut from the 10-class N2HL, the full
        N2HL and the flat model (both trained on all 10) restricted to the subset, and a flat
        model trained on the subset alone; top-1 on the subset's test images and the cost."""
        nhl_name, flat_name = "N2HL (WordNet)", "flat ResNet18"
        rows: dict[str, Any] = {}
        for subset, classes in SUBSETS.items():
            selection = ",".join(classes)

            def make(classes: str = selection, subset: str = subset) -> dict[str, Any]:
                row: dict[str, Any] = {"classes": classes, "seeds": {}}
                for seed in range(seeds):
                    nhl_model = self.train(tag(nhl_name), CLASSIFICATION[nhl_name][0], seed)["model"]
                    flat_model = self.train(tag(flat_name), CLASSIFICATION[flat_name][0], seed)["model"]
                    expert = f"models/{tag(subset)}-expert-s{seed}.safetensors"
                    timed = ["--batch-size", "32"] if seed == 0 else ["--no-latency"]  # seed 0's is shown
                    cut = self.nhl("cutout", nhl_model, "--classes", classes, "-o", expert, *timed)
                    row["seeds"][seed] = {
                        "expert": self.evaluate(expert),
                        "full_nhl": self.evaluate(nhl_model, classes),
                        "flat_all": self.evaluate(flat_model, classes),
                    }
                    if seed == 0:
                        row["expert_cost"], row["parent_cost"] = cut["expert_cost"], cut["parent_cost"]
                        row["flat_all_cost"] = self.cost(flat_model)
                only = self.train(f"flat-{tag(subset)}", ["--flat", "--classes", classes])
                row["flat_subset"] = self.evaluate(only["model"])
                row["flat_subset_cost"] = self.cost(only["model"])
                row["flat_subset_command"] = only["command"]
                return row

            rows[subset] = self.cached(f"cutout-{tag(subset)}", make)
        return rows

    def matched(self, seeds: int, epochs: int) -> dict[str, Any]:
        """Each subset's expert, cut from the ``long`` part's N2HL, against the ``long`` flat
        network pruned to the expert's GMACs and fine-tuned, on all classes and on the subset
        only (``benchmarks/matched_controls.py``); seed by seed, each seed's models paired."""
        rows: dict[str, list[dict[str, Any]]] = {subset: [] for subset in SUBSETS}
        for seed in range(seeds):
            nhl_model = self.train(f"{tag(N2HL)}-e{epochs}", CLASSIFICATION[N2HL][0], seed, epochs)["model"]
            flat_model = self.train(f"{tag(FLAT)}-e{epochs}", CLASSIFICATION[FLAT][0], seed, epochs)["model"]
            for subset, classes in SUBSETS.items():
                expert = f"models/{tag(subset)}-expert-e{epochs}-s{seed}.safetensors"
                pair = partial(self.matched_pair, nhl_model, flat_model, ",".join(classes), expert, seed)
                rows[subset].append(self.cached(f"matched-{tag(subset)}-e{epochs}-s{seed}", pair))
        return rows

    def matched_pair(
        self, nhl_model: str, flat_model: str, classes: str, expert: str, seed: int
    ) -> dict[str, Any]:
        """One expert cut and measured against both pruned controls."""
        import matched_controls

        cut = self.nhl("cutout", nhl_model, "--classes", classes, "-o", expert, "--no-latency")
        print(
            f"$ python benchmarks/matched_controls.py --flat {flat_model} --expert {expert} --seed {seed}",
            flush=True,
        )
        controls = matched_controls.measure(
            self.workdir / flat_model, self.workdir / expert, "fashion-mnist", seed, matched_controls.LR
        )
        return {"expert": self.evaluate(expert), "expert_cost": cut["expert_cost"], **controls}

    def attention(self) -> dict[str, Any]:
        """Paper 003, 4.4: ``nhl eval --attend-truth 0.5,...,20`` (one pass over the test set per
        level) on N2HL, N3HL and PHL small; x1 is the unattended model."""
        from nhlcli.evaluation import attention_curve_file

        scales = ",".join(f"{s:g}" for s in ATTEND_SCALES)
        rows = {}
        for name in ("N2HL (WordNet)", "N3HL (WordNet)", "PHL small"):
            model = self.train(tag(name), CLASSIFICATION[name][0])["model"]

            def make(model: str = model) -> dict[str, Any]:
                curves = {}
                for level in ("last", "path"):
                    args = ["eval", model, "--attend-truth", scales]
                    args += ["--attend-level", "path"] if level == "path" else []
                    print("$ " + shlex.join(["nhl", *args]), flush=True)
                    report = attention_curve_file(
                        self.workdir / model,
                        "fashion-mnist",
                        ATTEND_SCALES,
                        workers=1,
                        attend_level="path" if level == "path" else None,
                    )
                    curves[level] = [{"scale": p["scale"], "top1": p["top1"]} for p in report["curve"]]
                unattended = next(p["top1"] for p in curves["last"] if p["scale"] == 1)
                return {"model": model, "unattended": unattended, "curves": curves}

            rows[name] = self.cached(f"attention-{tag(name)}", make)
        return rows

    def attention_controls(self, epochs: int) -> dict[str, Any]:
        """The controls of ``benchmarks/attention_controls.py`` on the seed-0 flat and N2HL models
        of the ``long`` part: the same logit transform on a flat network, and cues that name a
        group (always right, or right for 80% of the images)."""
        import attention_controls

        models = {
            name: self.train(f"{tag(name)}-e{epochs}", CLASSIFICATION[name][0], 0, epochs)["model"]
            for name in (FLAT, N2HL)
        }
        flat, nhl = (self.workdir / models[name] for name in (FLAT, N2HL))

        def make() -> dict[str, Any]:
            print(f"$ python benchmarks/attention_controls.py --nhl {models[N2HL]} --flat "
                  f"{models[FLAT]}", flush=True)  # fmt: skip
            return attention_controls.measure(nhl, flat, "fashion-mnist", 1, attention_controls.SCALES)

        return self.cached(f"attention-controls-e{epochs}", make)

    def frozen(self, lite0: Path) -> dict[str, Any]:
        """Paper 000's frozen-trunk study: the ImageNet-trained EfficientNet-Lite0 trunk frozen,
        with an NHL head (N2HL) and with its own last stage and a flat classifier trained."""
        if not lite0.is_file():
            sys.path.insert(0, str(BENCH))
            from prepare_lite0 import convert

            print(f"$ python benchmarks/prepare_lite0.py -o {lite0.name}", flush=True)
            convert(lite0)
        common = [
            "--backbone",
            "tf_efficientnet_lite0",
            "--pretrained-file",
            os.path.relpath(lite0, self.workdir),
            "--freeze-trunk",
            "--in-chans",
            "3",
            "--input-size",
            FROZEN_SIZE,
        ]
        rows = {}
        for name, options in FROZEN_ROWS.items():
            run = self.train(tag(name), [*options, *common])
            rows[name] = {
                **summarise([run]),
                "trainable": trainable_params(self.workdir / run["model"]),
            }
        return rows

    def gates(self) -> dict[str, Any]:
        """Paper 004: ``benchmarks/bench_gates.py`` on the N2HL and flat models of seed 0."""
        nhl_model = self.train(tag("N2HL (WordNet)"), CLASSIFICATION["N2HL (WordNet)"][0])["model"]
        flat_model = self.train(tag("flat ResNet18"), CLASSIFICATION["flat ResNet18"][0])["model"]

        def make() -> dict[str, Any]:
            out = self.workdir / "runs" / "gates-bench.json"
            cmd = [
                sys.executable,
                str(BENCH / "bench_gates.py"),
                "--nhl",
                nhl_model,
                "--flat",
                flat_model,
                "--plot",
                "gates.png",
                "--json",
                str(out),
            ]
            print("$ " + shlex.join(["python", "benchmarks/bench_gates.py", *cmd[2:]]), flush=True)
            subprocess.run(cmd, cwd=self.workdir, check=True, capture_output=True)
            return json.loads(out.read_text())

        return self.cached("gates", make)

    def imagenet_cost(self) -> dict[str, Any]:
        """Paper 000, Table 1 (no training): ``benchmarks/bench_experts.py table1``."""

        def make() -> dict[str, Any]:
            cmd = [sys.executable, str(BENCH / "bench_experts.py"), "table1", "--json"]
            print("$ python benchmarks/bench_experts.py table1 --json", flush=True)
            proc = subprocess.run(cmd, cwd=self.workdir, check=True, capture_output=True, text=True)
            return {"rows": json.loads(proc.stdout)}

        return self.cached("imagenet-cost", make)


def trainable_params(model_file: Path) -> int:
    """Parameters a frozen-trunk run trained: the model's minus the frozen trunk's."""
    from nhlcli.model.loading import open_model

    model = open_model(model_file)
    groups = model.parameter_groups()
    if model.kind == "nhl":
        return groups["branches"]
    frozen = set(model.freeze_trunk())
    return sum(p.numel() for n, p in model.model.named_parameters() if n not in frozen)


def recipe_with(epochs: int, options: Sequence[str]) -> list[str]:
    """The default recipe's ``nhl train`` options, those that ``options`` set again replaced."""
    recipe = recipe_args(epochs)
    pairs = [recipe[i : i + 2] for i in range(0, len(recipe), 2)]
    return [arg for flag, value in pairs if flag not in options for arg in (flag, value)] + list(options)


def tag(name: str) -> str:
    """A file-name tag for a row name."""
    keep = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
    return "-".join(part for part in keep.split("-") if part)


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread (sample standard deviation) of top-1 over seeds, with the model's cost."""
    top1 = [r["test_top1"] for r in runs]
    return {
        "seeds": len(runs),
        "top1": top1,
        "top1_mean": statistics.fmean(top1),
        "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
        "params": runs[0]["params"]["total"],
        "gmacs": runs[0]["gmacs"],
        "train_s": [r["wall_s"] for r in runs],
        "command": runs[0]["command"],
    }


def long_differences(rows: dict[str, Any]) -> dict[str, Any]:
    """N2HL against each flat row of ``long`` over seeds (points), with the verdict each interval
    supports for a match within EQUAL_MARGIN (rows not trained yet are left out)."""
    if N2HL not in rows:
        return {}
    nhl = [100 * t for t in rows[N2HL]["top1"]]
    found = {}
    for name in (FLAT, CUT):
        if name in rows:
            found[f"N2HL - {name}"] = judge([100 * t for t in rows[name]["top1"]], nhl, "equal", EQUAL_MARGIN)
    return found


def induced_difference(rows: dict[str, Any]) -> dict[str, Any]:
    """N2HL on the induced tree minus N2HL on WordNet's (points), with the verdict on NBDT's claim
    that the induced tree is the better one."""
    wordnet, induced = ([100 * t for t in rows[name]["top1"]] for name in (N2HL, INDUCED))
    return judge(wordnet, induced, "better")


# ---------------------------------------------------------------------------- report
def pct(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}%"


def latency_ms(cost: dict[str, Any]) -> str:
    """``b1 / b32`` median latency in ms from a cost report."""
    return " / ".join(f"{r['median_ms']:.2f}" for r in cost["latency"]) + " ms"


def classification_table(rows: dict[str, Any]) -> list[str]:
    lines = [
        "| model | seeds | test top-1 (mean ± sd) | per seed | params | GMACs | train time (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        spread = f" ± {100 * r['top1_std']:.2f}" if r["top1_std"] is not None else ""
        seeds = ", ".join(f"{100 * t:.2f}" for t in r["top1"])
        lines.append(
            f"| {name} | {r['seeds']} | {100 * r['top1_mean']:.2f}%{spread} | {seeds} | "
            f"{r['params'] / 1e6:.2f}M | {r['gmacs']:.4f} | {statistics.median(r['train_s']):.0f} s |"
        )
    return lines


def cutout_table(rows: dict[str, Any]) -> list[str]:
    lines = [
        "| subset | expert | full N2HL on the subset | flat (all 10) on the subset | flat (subset only) | "
        "expert params / GMACs | expert latency b1 / b32 | full N2HL | flat (all 10) | flat (subset only) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for subset, r in rows.items():
        cols = {key: [s[key] for s in r["seeds"].values()] for key in ("expert", "full_nhl", "flat_all")}
        cells = [f"{100 * statistics.fmean(v):.2f}%" for v in cols.values()]
        e, p, f, o = r["expert_cost"], r["parent_cost"], r["flat_all_cost"], r["flat_subset_cost"]

        def size(c: dict[str, Any]) -> str:
            return f"{c['params']['total'] / 1e6:.2f}M / {c['gmacs']:.4f}"

        lines.append(
            f"| {subset} ({len(r['classes'].split(','))}) | "
            + " | ".join(cells)
            + f" | {100 * r['flat_subset']:.2f}% | {size(e)} | {latency_ms(e)} | "
            f"{size(p)}, {latency_ms(p)} | {size(f)}, {latency_ms(f)} | {size(o)}, {latency_ms(o)} |"
        )
    return lines


def attention_table(rows: dict[str, Any]) -> list[str]:
    lines = [
        "| model | level | " + " | ".join(f"x{s:g}" for s in ATTEND_SCALES) + " | best |",
        "|---|---|" + "---|" * (len(ATTEND_SCALES) + 1),
    ]
    for name, r in rows.items():
        for level, curve in r["curves"].items():
            cells = [f"{100 * p['top1']:.2f} ({100 * (p['top1'] - r['unattended']):+.1f})" for p in curve]
            best = max(curve, key=lambda p: p["top1"])
            lines.append(f"| {name} | {level} | " + " | ".join(cells) + f" | x{best['scale']:g} |")
    return lines


def matched_table(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Expert against the pruned flat network at its GMACs: top-1 on the subset (mean of the
    seeds), the paired difference in points (95% interval) with its verdict for "the expert is
    not worse by more than EQUAL_MARGIN", and the cost."""
    lines = [
        "| subset | seeds | expert | pruned, tuned on all 10 | pruned, tuned on the subset | expert - pruned "
        "(all 10) | expert - pruned (subset) | GMACs expert / pruned | params expert / pruned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for subset, seeds in rows.items():
        if not seeds:
            continue
        expert = [100 * r["expert"] for r in seeds]
        cells = []
        for name in ("pruned", "pruned + subset"):
            other = [100 * r[name]["top1"] for r in seeds]
            result = difference(other, expert, paired=True)
            interval = result["interval"]
            spread = f"{interval[0]:+.2f} to {interval[1]:+.2f}" if interval else "one seed"
            said = verdict(interval, "not-worse", EQUAL_MARGIN)
            cells.append(f"{result['diff']:+.2f} ({spread}): {said}")
        mean = {k: statistics.fmean(100 * r[k]["top1"] for r in seeds) for k in ("pruned", "pruned + subset")}
        first = seeds[0]
        cost = first["expert_cost"]
        lines.append(
            f"| {subset} ({len(first['classes'])}) | {len(seeds)} | {statistics.fmean(expert):.2f}% | "
            f"{mean['pruned']:.2f}% | {mean['pruned + subset']:.2f}% | {cells[0]} | {cells[1]} | "
            f"{cost['gmacs']:.4f} / {first['pruned']['macs'] / 1e9:.4f} | "
            f"{cost['params']['total'] / 1e6:.2f}M / {first['pruned']['params'] / 1e6:.2f}M |"
        )
    return lines


def frozen_table(rows: dict[str, Any]) -> list[str]:
    lines = [
        "| model | test top-1 | params | trained params | GMACs | train time |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {100 * r['top1_mean']:.2f}% | {r['params'] / 1e6:.2f}M | "
            f"{r['trainable'] / 1e6:.2f}M | {r['gmacs']:.4f} | {r['train_s'][0]:.0f} s |"
        )
    return lines


def gates_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| model | gates | tuned top-1 (half 2) | full top-1 | drop | GMACs saved | img/s gated / ungated | "
        "held-out: most GMACs saved at <= 0.5 pt lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        curve = result["heldout"][f"{row['model']}, {row['loss']} gates"]
        ok = [p for p in curve if p["full_top1"] - p["top1"] <= 0.005]
        best = max((1 - p["gmacs"] / p["full_gmacs"] for p in ok), default=0.0)
        lines.append(
            f"| {row['model']} | {row['loss']} | {pct(row['top1'])} | {pct(row['full_top1'])} | "
            f"{row['drop_points']:.2f} pt | {row['gmacs_reduction_percent']:.1f}% | "
            f"{row['images_per_s']:.0f} / {row['ungated_images_per_s']:.0f} | {100 * best:.1f}% |"
        )
    return lines


def imagenet_table(result: dict[str, Any]) -> list[str]:
    """Paper 000's Table 1 beside ours: each model shape, its named expert, the plain base network."""
    lines = [
        "| model | variant | params paper / nhl | GMACs paper / nhl | expert | expert params paper / nhl | "
        "expert GMACs paper / nhl | base network params / GMACs | expert GMACs / base |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]["table1"]:
        p = r["paper"]
        model = f"| {r['model']} | {r['variant']} | {p['params']}M / {r['params_m']}M | "
        model += f"{p['gmacs']} / {r['gmacs']} | "
        expert = f'"{r["expert"]}" ({r["expert_classes"]} classes) | '
        expert += (
            f"{p['expert_params']}M / {r['expert_params_m']}M | {p['expert_gmacs']} / {r['expert_gmacs']} | "
        )
        base = f"{r['base_params_m']}M / {r['base_gmacs']} | {r['expert_gmacs_x_base']}x |"
        lines.append(model + expert + base)
    return lines


def study_times(runs: Path) -> dict[str, float]:
    """Seconds each part took, summed from its cached steps' wall times (so a resumed study
    counts each step once, as it ran)."""

    def wall(pattern: str) -> float:
        return sum(json.loads(p.read_text())["wall_s"] for p in runs.glob(pattern))

    return {
        "classification": sum(wall(f"train-{tag(name)}-s*.json") for name in CLASSIFICATION),
        "cutouts": wall("cutout-*.json"),
        "attention": wall("attention-*.json") - wall("attention-controls-*.json"),
        "frozen": sum(wall(f"train-{tag(name)}-s*.json") for name in FROZEN_ROWS),
        "gates": wall("gates.json"),
        "cost": wall("imagenet-cost.json"),
        "long": sum(wall(f"train-{tag(name)}-e*-s*.json") for name in LONG_ROWS),
        "controls": wall("attention-controls-*.json"),
        "matched": wall("matched-*.json"),
        "induced": wall(f"train-{tag(INDUCED)}-e*-s*.json"),
    }


def time_table(times: dict[str, float]) -> list[str]:
    lines = ["| part | wall time |", "|---|---|"]
    lines += [f"| {part} | {seconds / 60:.1f} min |" for part, seconds in times.items()]
    return [*lines, f"| **whole study** | **{sum(times.values()) / 60:.1f} min** |"]


def accuracy_plot(classification: dict[str, Any], frozen: dict[str, Any], output: Path) -> None:
    """Test top-1 against GMACs per image for every 10-class model (error bars: sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    points = []
    for rows, marker in ((classification, "o"), (frozen, "s")):
        for name, r in rows.items():
            kind = "tab:gray" if "flat" in name else "tab:blue" if "PHL" in name else "tab:red"
            x, y = r["gmacs"] * 1e3, 100 * r["top1_mean"]
            ax.errorbar(x, y, yerr=100 * (r["top1_std"] or 0), fmt=marker, color=kind, capsize=3)
            points.append((name, x, y))
    ax.margins(x=0.1)  # room for the labels of the outermost markers
    ax.autoscale_view()
    for name, x, y, offset, align in place_labels(ax, points):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, ha=align, fontsize=8)
    ax.set_xlabel("MMACs per image")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_title("Accuracy against cost (circles: ResNet18 trunk at 32 px; squares: frozen Lite0 at 64 px)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


LABEL_SPOTS = ((5, 4, "left"), (5, -11, "left"), (-5, 4, "right"), (-5, -11, "right"), (5, 13, "left"))


def place_labels(
    ax: Any, points: list[tuple[str, float, float]]
) -> list[tuple[str, float, float, tuple[int, int], str]]:
    """A label spot beside each marker (offset in points, alignment) where it overprints no
    marker and no earlier label: the models of one trunk crowd a few MMACs apart."""
    px_per_pt = ax.figure.dpi / 72
    marker = 4 * px_per_pt
    at = {name: ax.transData.transform((x, y)) for name, x, y in points}
    placed = [(px - marker, py - marker, px + marker, py + marker) for px, py in at.values()]
    out = []
    for name, x, y in sorted(points, key=lambda p: (-p[2], p[1])):
        px, py = at[name]
        width, height = 4.6 * len(name) * px_per_pt, 9 * px_per_pt
        for dx, dy, align in LABEL_SPOTS:
            left = px + dx * px_per_pt - (width if align == "right" else 0)
            box = (left, py + dy * px_per_pt, left + width, py + dy * px_per_pt + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        out.append((name, x, y, (dx, dy), align))
    return out


def cost_plots(study: Study, docs: Path) -> dict[str, Any]:
    """Expert params and GMACs against kept classes: the Fashion-MNIST N2HL and ResNet50-NHL
    over 100 ImageNet classes (untrained: cost needs no weights)."""
    sys.path.insert(0, str(BENCH))
    from bench_experts import imagenet100_tree

    from nhlcli.experts.curve import cost_curve, plot_cost_curve
    from nhlcli.model.loading import open_model
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig

    fm = open_model(study.workdir / sorted_runs(study.workdir / "runs", tag("N2HL (WordNet)"))[0]["model"])
    in100 = create_model(imagenet100_tree(), "nhl", TrunkConfig("resnet50")).eval()
    out = {}
    for key, model, title in (
        ("fashion-mnist-n2hl", fm, "Fashion-MNIST N2HL (ResNet18, 32 px)"),
        ("imagenet100-resnet50-nhl", in100, "ResNet50-NHL, 100 ImageNet classes (224 px)"),
    ):
        rows = cost_curve(model)
        plot_cost_curve(rows, docs / f"results-cost-{key}.png", f"{title}: expert cost against kept classes")
        out[key] = rows
    return out


def report(study: Study, docs: Path, long_epochs: int) -> str:
    """Every finished part as Markdown tables (stdout) and the plots under ``docs``."""
    runs = study.workdir / "runs"
    docs.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    classification = {
        name: summarise(found) for name in CLASSIFICATION if (found := sorted_runs(runs, tag(name)))
    }
    if classification:
        parts += ["## Classification", *classification_table(classification)]
    long_runs = {name: sorted_runs(runs, f"{tag(name)}-e{long_epochs}") for name in LONG_ROWS}
    long = {name: summarise(found) for name, found in long_runs.items() if found}
    if long:
        parts += [f"## Longer training ({long_epochs} epochs)", *classification_table(long)]
        margin = f"a match: within {EQUAL_MARGIN} points"
        for name, result in long_differences(long).items():
            parts += ["", f"{name}: {result['line']}: {result['verdict']} ({margin})."]
    induced = {name: sorted_runs(runs, f"{tag(name)}-e{long_epochs}") for name in (N2HL, INDUCED)}
    if all(induced.values()):
        rows = {name: summarise(found) for name, found in induced.items()}
        result = induced_difference(rows)
        parts += [f"## NBDT's induced hierarchy ({long_epochs} epochs)", *classification_table(rows), "",
                  f"induced - WordNet: {result['line']}: {result['verdict']} (NBDT: the induced tree is "
                  "better)."]  # fmt: skip
    if (controls := runs / f"attention-controls-e{long_epochs}.json").exists():
        import attention_controls

        parts += [f"## Top-down attention: controls ({long_epochs}-epoch models, seed 0)",
                  *attention_controls.table(json.loads(controls.read_text()))]  # fmt: skip
    matched = {s: sorted_json(runs, f"matched-{tag(s)}-e{long_epochs}-s*.json") for s in SUBSETS}
    if any(matched.values()):
        parts += [f"## Experts against pruned networks ({long_epochs}-epoch models)", *matched_table(matched)]
    if all((runs / f"cutout-{tag(s)}.json").exists() for s in SUBSETS):
        parts += [
            "## Cutouts",
            *cutout_table({s: json.loads((runs / f"cutout-{tag(s)}.json").read_text()) for s in SUBSETS}),
        ]
    attention = {
        n: json.loads(p.read_text())
        for n in ("N2HL (WordNet)", "N3HL (WordNet)", "PHL small")
        if (p := runs / f"attention-{tag(n)}.json").exists()
    }
    if attention:
        parts += ["## Top-down attention", *attention_table(attention)]
    frozen = {}
    for name in FROZEN_ROWS:
        path = runs / f"train-{tag(name)}-s0.json"
        if path.exists():
            run = json.loads(path.read_text())
            frozen[name] = {
                **summarise([run]),
                "trainable": trainable_params(study.workdir / run["model"]),
            }
    if frozen:
        parts += ["## Frozen pretrained trunk", *frozen_table(frozen)]
    if (runs / "gates.json").exists():
        parts += ["## Decision gates", *gates_table(json.loads((runs / "gates.json").read_text()))]
        if (plot := study.workdir / "gates.png").exists():
            shutil.copyfile(plot, docs / "results-gates.png")
    if (runs / "imagenet-cost.json").exists():
        parts += [
            "## ImageNet-scale cost",
            *imagenet_table(json.loads((runs / "imagenet-cost.json").read_text())),
        ]
    parts += ["## Study time (this machine)", *time_table(study_times(runs))]
    if classification:
        accuracy_plot(classification, frozen, docs / "results-accuracy-gmacs.png")
        cost_plots(study, docs)
    return "\n".join(parts)


def sorted_runs(runs: Path, name: str) -> list[dict[str, Any]]:
    return sorted_json(runs, f"train-{name}-s*.json")


def sorted_json(runs: Path, pattern: str) -> list[dict[str, Any]]:
    """The cached results whose names match ``pattern``, in name (seed) order."""
    return [json.loads(p.read_text()) for p in sorted(runs.glob(pattern))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "part",
        choices=[
            "classification",
            "cutouts",
            "attention",
            "frozen",
            "gates",
            "cost",
            "long",
            "controls",
            "matched",
            "induced",
            "report",
            "all",
        ],  # fmt: skip
    )
    parser.add_argument("--workdir", type=Path, default=Path("results-work"))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--long-epochs", type=int, default=10, help="epochs of the 'long' part's runs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the main rows (flat, N2HL)")
    parser.add_argument("--all-seeds", action="store_true", help="all classification rows, every seed")
    parser.add_argument(
        "--lite0",
        type=Path,
        default=Path("lite0.safetensors"),
        help="the converted trunk (benchmarks/prepare_lite0.py), relative to --workdir",
    )
    parser.add_argument("--docs", type=Path, default=BENCH.parent / "docs", help="where the plots go")
    args = parser.parse_args()
    study = Study(args.workdir.resolve(), args.epochs)
    steps = {
        "classification": lambda: study.classification(args.seeds, args.all_seeds),
        "cutouts": lambda: study.cutouts(args.seeds),
        "attention": study.attention,
        "frozen": lambda: study.frozen(study.workdir / args.lite0),
        "gates": lambda: study.gates()["rows"],
        "cost": study.imagenet_cost,
        "long": lambda: study.long_training(args.seeds, args.long_epochs),
        "controls": lambda: study.attention_controls(args.long_epochs),
        "matched": lambda: study.matched(args.seeds, args.long_epochs),
        "induced": lambda: study.induced(args.seeds, args.long_epochs),
    }
    for part, step in steps.items():
        if args.part in (part, "all"):
            with study.timed(part):
                print(json.dumps(step(), indent=2))
    if args.part in ("report", "all"):
        print(report(study, args.docs, args.long_epochs))


if __name__ == "__main__":
    main()
