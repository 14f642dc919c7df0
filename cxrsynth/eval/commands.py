"""`cxrsynth evaluate --synthetic DIR --real DIR --out DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrsynth.config import validate
from cxrsynth.errors import InputError
from cxrsynth.eval.config import EvalConfig
from cxrsynth.eval.evaluate import run_evaluation, summary_lines
from cxrsynth.progress import Progress


def evaluate(args: argparse.Namespace) -> int:
    cfg = validate(
        EvalConfig,
        {"classifier_steps": args.classifier_steps, "seeds": args.seeds, "bootstrap": args.bootstrap},
        "cxrsynth evaluate",
    )
    # Checked before any work: a missing file found in a later stage would only mark that stage failed.
    if args.extractor != "classifier" and not Path(args.extractor).is_file():
        raise InputError(
            f"--extractor {args.extractor}: no such file; give `classifier` or a local .safetensors, .pt2 or TorchScript file."
        )
    if args.checkpoint and not (Path(args.checkpoint) / "run.yaml").is_file():
        raise InputError(
            f"--checkpoint {args.checkpoint}: not a checkpoint directory (no run.yaml); give the directory `cxrsynth train` wrote."
        )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out}: is a file; evaluate writes metrics.json and index.html into a folder.")
    metrics = run_evaluation(
        args.synthetic,
        args.real,
        args.out,
        cfg,
        extractor=args.extractor,
        checkpoint=args.checkpoint,
        progress=Progress(args.quiet),
        baseline_dir=args.baseline,
    )
    for line in summary_lines(metrics):
        print(line)
    print(f"metrics: {args.out}/metrics.json  page: {args.out}/index.html")
    return 0
