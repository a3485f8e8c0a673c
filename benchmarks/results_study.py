"""The results study of docs/results.md: the papers' claims measured with nhl on Fashion-MNIST.

Every experiment is a sequence of ``nhl`` commands (printed as they run), so each row of
docs/results.md can be re-run by hand. Models and per-step JSON go to ``--workdir``; a
finished step is not redone, so an interrupted study continues where it stopped. ``report``
stores each finished part's per-seed figures under ``benchmarks/results/`` and draws the plots;
it judges nothing: the verdicts are ``benchmarks/report.py``'s, from ``benchmarks/claims.py``.

    python benchmarks/results_study.py all --all-seeds        # every part and seed, then the report
    python benchmarks/results_study.py classification --seeds 3   # 3 seeds for flat and N2HL, 1 for the rest
    python benchmarks/results_study.py cutouts  # frozen, cost, long, controls, matched, induced
    python benchmarks/results_study.py report                 # results files and plots
    python benchmarks/report.py --write                        # then the tables and verdicts in docs/

Parts: ``classification`` (paper 003, Table 3: flat against PHL small/big/lateSP/1branch and
N2HL-N4HL on one trunk, and ResNet18 cut where N2HL branches with one linear layer, the
control for the NHL's dropped stage; 3 seeds for the main rows, flat and N2HL), ``cutouts`` (Table 2:
experts against flat models trained on all classes and on the subset only),
``frozen`` (paper 000: a frozen ImageNet-trained EfficientNet-Lite0 trunk with NHL and flat
heads), ``long`` (flat, N2HL and the
cut-trunk flat for the recipe's full 10 epochs, 3 seeds), ``controls`` (top-down attention's
controls on the seed-0 pair of ``long``), ``matched``
(each subset's expert from ``long``'s N2HL against ``long``'s flat network pruned to the
expert's GMACs and fine-tuned, on all classes and on the subset). The ImageNet-scale
architecture cost (paper 000, Table 1) is ``benchmarks/bench_experts.py table1``; the d-gates
and the attention scale, whose thresholds and scale must be chosen on data the figure is not
measured on, are ``benchmarks/holdout_choices.py`` (models trained without a hold-out of the
training images, every choice made on it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from results_store import RESULTS_DIR, write_results

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
        return {"epochs": epochs, "rows": {name: summarise(found) for name, found in runs.items()}}

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
        return {
            "epochs": epochs,
            "rows": {name: summarise(found) for name, found in runs.items()},
            "trees": trees,
        }

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


ARM_KEYS = {  # the study's row names -> the arm names of benchmarks/results (claims.py reads them)
    "flat ResNet18": "flat",
    "PHL small": "phl-small",
    "PHL big": "phl-big",
    "PHL lateSP": "phl-latesp",
    "PHL 1branch": "phl-1branch",
    "N2HL (WordNet)": "n2hl",
    "N3HL (WordNet)": "n3hl",
    "N4HL (WordNet)": "n4hl",
    "flat, cut trunk": "flat-cut-trunk",
    "N2HL (induced)": "n2hl-induced",
    "Lite0 frozen + flat head": "lite0-frozen-flat",
    "Lite0 frozen + N2HL head": "lite0-frozen-n2hl",
}
FASHION = {"data": "fashion-mnist", "train_images": 60000, "test_images": 10000, "evaluated_on": "test"}


def seeded(runs: Path, name: str) -> list[tuple[int, dict[str, Any]]]:
    """The cached training runs of one row, with the seed each ran."""
    found = []
    for path in sorted(runs.glob(f"train-{name}-s*.json")):
        seed = re.fullmatch(rf"train-{re.escape(name)}-s(\d+)\.json", path.name)
        if seed:
            found.append((int(seed[1]), json.loads(path.read_text())))
    return found


def arm_records(
    rows: dict[str, list[tuple[int, dict[str, Any]]]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each row's label and cost, and one record per seed: what a results file holds."""
    arms, records = {}, []
    for name, found in rows.items():
        if not found:
            continue
        first = found[0][1]
        arms[ARM_KEYS[name]] = {
            "label": name,
            "params_m": round(first["params"]["total"] / 1e6, 2),
            "gmacs": round(first["gmacs"], 4),
            "train_s_median": round(statistics.median(run["wall_s"] for _, run in found)),
        }
        records += [
            {
                "model": ARM_KEYS[name],
                "seed": seed,
                "top1": round(100 * run["test_top1"], 2),
                "top5": round(100 * run["test_top5"], 2),
                "train_s": run["wall_s"],
                "command": run["command"],
            }
            for seed, run in found
        ]
    return arms, records


def store(study: Study, long_epochs: int, directory: Path = RESULTS_DIR) -> list[Path]:
    """Every finished part's per-seed figures as ``benchmarks/results/fm-*.json``, which
    ``benchmarks/report.py`` turns into the tables and verdicts of docs/results.md."""
    runs = study.workdir / "runs"
    today = time.strftime("%Y-%m-%d", time.gmtime())
    written = []

    def save(name: str, title: str, part: str, setup: dict[str, Any], records: list[dict[str, Any]]) -> None:
        if records:
            command = f"python benchmarks/results_study.py {part}"
            written.append(
                write_results(
                    name,
                    title=title,
                    command=command,
                    setup=setup,
                    runs=records,
                    date=today,
                    directory=directory,
                )
            )

    arms, records = arm_records({name: seeded(runs, tag(name)) for name in CLASSIFICATION})
    save(
        "fm-classification",
        f"Fashion-MNIST, {study.epochs} epochs: flat, PHL and NHL shapes",
        "classification --all-seeds",
        {**FASHION, "epochs": study.epochs, "arms": arms},
        records,
    )
    arms, records = arm_records({name: seeded(runs, f"{tag(name)}-e{long_epochs}") for name in LONG_ROWS})
    save(
        "fm-long",
        f"Fashion-MNIST, {long_epochs} epochs: flat, N2HL and the cut-trunk control",
        f"long --seeds 3 --long-epochs {long_epochs}",
        {**FASHION, "epochs": long_epochs, "arms": arms},
        records,
    )
    arms, records = arm_records({INDUCED: seeded(runs, f"{tag(INDUCED)}-e{long_epochs}")})
    if (trees := runs / "induced-tree.json").exists():
        agreement = json.loads(trees.read_text())["against_wordnet"]
        save(
            "fm-induced",
            f"Fashion-MNIST, {long_epochs} epochs: N2HL on NBDT's induced tree",
            "induced --seeds 3",
            {**FASHION, "epochs": long_epochs, "arms": arms, "tree_agreement": agreement},
            records,
        )
    arms, records = arm_records({name: seeded(runs, tag(name)) for name in FROZEN_ROWS})
    for name, arm in zip(FROZEN_ROWS, arms.values(), strict=False):
        arm["trained_params_m"] = round(
            trainable_params(study.workdir / seeded(runs, tag(name))[0][1]["model"]) / 1e6, 2
        )
    save(
        "fm-frozen",
        f"Fashion-MNIST, {study.epochs} epochs: a frozen ImageNet Lite0 trunk with a flat or N2HL head",
        "frozen",
        {**FASHION, "epochs": study.epochs, "input_px": int(FROZEN_SIZE), "arms": arms},
        records,
    )
    save(
        "fm-cutouts",
        f"Fashion-MNIST, {study.epochs} epochs: experts cut from N2HL against flat networks",
        "cutouts",
        {**FASHION, "epochs": study.epochs, "subsets": subset_setup(), "arms": CUTOUT_ARMS},
        cutout_records(runs),
    )
    save(
        "fm-matched",
        f"Fashion-MNIST, {long_epochs}-epoch models: experts against the flat network pruned to their GMACs",
        "matched --seeds 3",
        {**FASHION, "epochs": long_epochs, "subsets": subset_setup(), "arms": MATCHED_ARMS},
        matched_records(runs, long_epochs),
    )
    if (controls := runs / f"attention-controls-e{long_epochs}.json").exists():
        result = json.loads(controls.read_text())
        records = [
            {
                "model": row.replace(" ", "-"),
                "cue": cue,
                "scale": scale,
                "seed": 0,
                "top1": round(100 * top1, 2),
            }
            for key, curve in result["top1"].items()
            for cue, row in [key.split(" | ")]
            for scale, top1 in zip(result["scales"], curve, strict=True)
        ]
        labels = {
            row.replace(" ", "-"): {"label": row} for row in ("nhl branches", "nhl logits", "flat logits")
        }
        save(
            "fm-attention-controls",
            f"Fashion-MNIST, seed-0 {long_epochs}-epoch N2HL and flat: attention's controls",
            "controls",
            {**FASHION, "epochs": long_epochs, "scales": result["scales"], "arms": labels},
            records,
        )
    return written


CUTOUT_ARMS = {
    "expert": {"label": "the expert (= N2HL on the subset)"},
    "flat-all-10": {"label": "flat ResNet18 trained on all 10, on the subset"},
    "flat-subset-only": {"label": "flat ResNet18 trained on the subset only"},
}
MATCHED_ARMS = {
    "expert": {"label": "the expert"},
    "pruned-all-10": {"label": "pruned flat, tuned on all 10"},
    "pruned-subset": {"label": "pruned flat, tuned on the subset"},
}


def subset_setup() -> dict[str, Any]:
    return {
        tag(subset): {"label": subset, "classes": len(classes), "test_images": 1000 * len(classes)}
        for subset, classes in SUBSETS.items()
    }


def cutout_records(runs: Path) -> list[dict[str, Any]]:
    """Per subset and seed: the expert, the full N2HL and the flat model on the subset; seed 0's
    subset-only flat model, and the cost and latency of each (seed 0)."""
    records = []
    for subset in SUBSETS:
        path = runs / f"cutout-{tag(subset)}.json"
        if not path.exists():
            continue
        row, key = json.loads(path.read_text()), tag(subset)
        for seed, found in sorted(row["seeds"].items(), key=lambda item: int(item[0])):
            records.append(
                {
                    "model": "expert",
                    "subset": key,
                    "seed": int(seed),
                    "top1": round(100 * found["expert"], 2),
                    "top1_full_n2hl": round(100 * found["full_nhl"], 2),
                }
            )
            records.append(
                {
                    "model": "flat-all-10",
                    "subset": key,
                    "seed": int(seed),
                    "top1": round(100 * found["flat_all"], 2),
                }
            )
        records.append(
            {
                "model": "flat-subset-only",
                "subset": key,
                "seed": 0,
                "top1": round(100 * row["flat_subset"], 2),
            }
        )
        cost = {"model": "cost", "subset": key, "seed": 0}
        for prefix, report in (
            ("expert", row["expert_cost"]),
            ("full", row["parent_cost"]),
            ("flat", row["flat_all_cost"]),
            ("flat_subset", row["flat_subset_cost"]),
        ):
            b1, b32 = (r["median_ms"] for r in report["latency"])
            cost |= {
                f"{prefix}_params_m": round(report["params"]["total"] / 1e6, 2),
                f"{prefix}_gmacs": round(report["gmacs"], 4),
                f"{prefix}_ms_b1": b1,
                f"{prefix}_ms_b32": b32,
            }
        records.append(cost)
    return records


def matched_records(runs: Path, epochs: int) -> list[dict[str, Any]]:
    """Per subset and seed: the expert and the two pruned, fine-tuned flat networks."""
    records = []
    for subset in SUBSETS:
        key = tag(subset)
        for path in sorted(runs.glob(f"matched-{key}-e{epochs}-s*.json")):
            seed = int(path.stem.rsplit("-s", 1)[1])
            found = json.loads(path.read_text())
            records += [
                {"model": "expert", "subset": key, "seed": seed, "top1": round(100 * found["expert"], 2)},
                {
                    "model": "pruned-all-10",
                    "subset": key,
                    "seed": seed,
                    "top1": round(100 * found["pruned"]["top1"], 2),
                },
                {
                    "model": "pruned-subset",
                    "subset": key,
                    "seed": seed,
                    "top1": round(100 * found["pruned + subset"]["top1"], 2),
                },
            ]
            if seed == 0:
                records.append(
                    {
                        "model": "cost",
                        "subset": key,
                        "seed": 0,
                        "expert_gmacs": round(found["expert_cost"]["gmacs"], 4),
                        "pruned_gmacs": round(found["pruned"]["macs"] / 1e9, 4),
                        "expert_params_m": round(found["expert_cost"]["params"]["total"] / 1e6, 2),
                        "pruned_params_m": round(found["pruned"]["params"] / 1e6, 2),
                    }
                )
    return records


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


def report(study: Study, docs: Path, long_epochs: int) -> None:
    """Store every finished part's figures as results files and draw the plots under ``docs``;
    ``benchmarks/report.py --write`` then puts the tables and verdicts into docs/results.md."""
    runs = study.workdir / "runs"
    docs.mkdir(parents=True, exist_ok=True)
    for path in store(study, long_epochs):
        print(f"# stored {path}")
    classification = {
        name: summarise(found) for name in CLASSIFICATION if (found := sorted_runs(runs, tag(name)))
    }
    frozen = {name: summarise(found) for name in FROZEN_ROWS if (found := sorted_runs(runs, tag(name)))}
    if classification:
        accuracy_plot(classification, frozen, docs / "results-accuracy-gmacs.png")
        cost_plots(study, docs)
    print("# now: python benchmarks/report.py --write")


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
            "frozen",
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
        "frozen": lambda: study.frozen(study.workdir / args.lite0),
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
        report(study, args.docs, args.long_epochs)


if __name__ == "__main__":
    main()
