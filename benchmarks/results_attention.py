"""Top-down attention (paper 003, 4.4): ``--attend-truth`` against scale on Fashion-MNIST.

Each test image's own class path is multiplied by SCALE at the last branch level, and on every
level of the path, without retraining (the paper's oracle experiment); the table reports top-1
against the unattended model and finds the scale of largest gain, as the paper did.

    python benchmarks/results_attention.py MODEL.safetensors
"""

from __future__ import annotations

import argparse
import json

from nhlcli.evaluation import evaluate_file

SCALES = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--scales", default=",".join(str(s) for s in SCALES))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    base = evaluate_file(args.model, args.data, workers=args.workers)["top1"]
    rows = []
    for level in ("last", "path"):
        for scale in (float(s) for s in args.scales.split(",")):
            report = evaluate_file(
                args.model,
                args.data,
                workers=args.workers,
                attend_truth=scale,
                attend_level=None if level == "last" else "path",
            )
            rows.append(
                {"level": level, "scale": scale, "top1": report["top1"], "gain": report["top1"] - base}
            )
            print(json.dumps(rows[-1]), flush=True)
    print("| level | " + " | ".join(f"x{r['scale']:g}" for r in rows if r["level"] == "last") + " |")
    print("|---|" + "---|" * (len(rows) // 2))
    for level in ("last", "path"):
        cells = [f"{100 * r['top1']:.2f}% ({100 * r['gain']:+.2f})" for r in rows if r["level"] == level]
        print(f"| {level} | " + " | ".join(cells) + " |")
    best = max(rows, key=lambda r: r["top1"])
    print(json.dumps({"unattended_top1": base, "best": best}))


if __name__ == "__main__":
    main()
