"""Top-down attention curves (paper 003, 4.4): one pass over the data against one evaluation per scale.

``nhl eval --attend-truth 0.5,1,...,20`` sends each batch through the trunk once and through the
branches once per scale; the plain way is one ``nhl eval --attend-truth S`` per scale. Both run
here side by side on the same model and test set, at the last level and along the whole path;
the script prints their wall times, the speed-up and the largest top-1 difference between them
(0: the curve is the same numbers, only cheaper).

    python benchmarks/bench_attention.py --model models/n2hl-wordnet-s0.safetensors
    python benchmarks/bench_attention.py            # an untrained N2HL (ResNet18, 32 px): timing only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nhlcli.evaluation import attention_curve_file, evaluate_file

SCALES = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)


def untrained_n2hl(folder: Path) -> Path:
    """The demo's N2HL on Fashion-MNIST, freshly initialised: cost and timing need no training."""
    from nhlcli.model.files import save_model
    from nhlcli.model.nhl import with_input_size
    from nhlcli.model.registry import create_model
    from nhlcli.model.trunk import TrunkConfig
    from nhlcli.taxonomy import shipped_tree

    torch.manual_seed(0)
    model = create_model(shipped_tree("fashion-mnist-wordnet-l2"), "nhl", TrunkConfig("resnet18", None, 1))
    model.input_config = with_input_size(model.input_config, 32)
    path = folder / "n2hl-untrained.safetensors"
    save_model(model, path)
    return path


def compare(model: Path, data: str, level: str | None, workers: int) -> dict:
    start = time.perf_counter()
    curve = attention_curve_file(model, data, SCALES, workers=workers, attend_level=level)["curve"]
    one_pass = time.perf_counter() - start
    start = time.perf_counter()
    each = [evaluate_file(model, data, workers=workers, attend_truth=s, attend_level=level) for s in SCALES]
    per_scale = time.perf_counter() - start
    return {
        "level": level or "last",
        "scales": len(SCALES),
        "images": curve[0]["images"],
        "one_pass_s": round(one_pass, 1),
        "per_scale_s": round(per_scale, 1),
        "speedup": round(per_scale / one_pass, 2),
        "max_top1_difference": max(abs(p["top1"] - e["top1"]) for p, e in zip(curve, each, strict=True)),
        "best_scale": max(curve, key=lambda p: p["top1"])["scale"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="an NHL model file (default: an untrained N2HL)")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or untrained_n2hl(Path(tmp))
        rows = [compare(model, args.data, level, args.workers) for level in (None, "path")]
    print(f"threads: {torch.get_num_threads()}")
    for r in rows:
        print(
            f"{r['level']:>4}: {r['scales']} scales over {r['images']} images: one pass {r['one_pass_s']} s, "
            f"one evaluation per scale {r['per_scale_s']} s (x{r['speedup']}); "
            f"largest top-1 difference {r['max_top1_difference']:.2g}"
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
