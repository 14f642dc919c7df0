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

from cxrsynth.data.stream import concat_view
from cxrsynth.eval.classifier import train_classifier
from cxrsynth.eval.config import EvalConfig
from cxrsynth.eval.evaluate import load_real, load_synthetic
from cxrsynth.eval.utility import auroc_per_label, classifier_settings, macro


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print("| cell | real-only | real + synthetic, paired | real + synthetic, pooled |")
    print("|---|---|---|---|")
    for cell in map(Path, argv):
        cfg = EvalConfig(**json.loads((cell / "eval" / "metrics.json").read_text(encoding="utf-8"))["settings"])
        train, holdout = load_real(cell / "data" / "all", cfg)
        synthetic = load_synthetic(cell / "synthetic")
        # The utility arms' classifier settings, seed cfg.seed (its first seed).
        kw = classifier_settings(cfg, seed=cfg.seed)
        arms = {
            "real": train_classifier(train, **kw),
            "paired": train_classifier(train, extra=synthetic, **kw),
            "pooled": train_classifier(concat_view(train, synthetic), **kw),
        }
        row = {arm: macro(auroc_per_label(model, holdout, cfg.uncertain_as)) for arm, model in arms.items()}
        print(f"| {cell} | {row['real']:.3f} | {row['paired']:.3f} | {row['pooled']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
