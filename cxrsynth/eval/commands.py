"""`cxrsynth evaluate --synthetic DIR --real DIR --out DIR`."""

from __future__ import annotations

import argparse

from cxrsynth.config import validate
from cxrsynth.eval.config import EvalConfig
from cxrsynth.eval.evaluate import run_evaluation, summary_lines
from cxrsynth.progress import Progress


def evaluate(args: argparse.Namespace) -> int:
    cfg = validate(EvalConfig, {"classifier_steps": args.classifier_steps, "seeds": args.seeds}, "cxrsynth evaluate")
    metrics = run_evaluation(args.synthetic, args.real, args.out, cfg, extractor=args.extractor, checkpoint=args.checkpoint, progress=Progress(args.quiet), baseline_dir=args.baseline)
    for line in summary_lines(metrics):
        print(line)
    print(f"metrics: {args.out}/metrics.json  page: {args.out}/index.html")
    return 0
