"""Real + synthetic under both augmentation protocols, on finished demo or bench_utility cells.

    python benchmarks/augmentation_protocols.py CELL_DIR [CELL_DIR ...]

A cell is a folder with `data/all` (the sites' real records with their split), `synthetic/` and
`eval/metrics.json` (its evaluation settings). Prints the macro AUROC of real-only and of real +
synthetic with paired batches (each step a real batch plus a synthetic batch) and with pooled
batches (drawn from the union), with the settings the cell was evaluated with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from cxrsynth.eval.config import EvalConfig
from cxrsynth.eval.evaluate import load_real, load_synthetic
from cxrsynth.eval.utility import utility


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print("| cell | real-only | real + synthetic, paired | real + synthetic, pooled |")
    print("|---|---|---|---|")
    for cell in map(Path, argv):
        settings = json.loads((cell / "eval" / "metrics.json").read_text(encoding="utf-8"))["settings"]
        train, holdout = load_real(cell / "data" / "all", EvalConfig(**settings))
        synthetic = load_synthetic(cell / "synthetic")
        row = {}
        for protocol in ("paired", "pooled"):
            cfg = EvalConfig(**{**settings, "augmentation": protocol})
            result, _ = utility(train, synthetic, holdout, cfg)
            row["real"] = result["arms"]["real"]["macro_auroc"]
            row[protocol] = result["arms"]["real+synthetic"]["macro_auroc"]
        print(f"| {cell} | {row['real']:.3f} | {row['paired']:.3f} | {row['pooled']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
