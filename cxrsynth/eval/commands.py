"""`cxrsynth evaluate --synthetic DIR --real DIR --out DIR`."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from cxrsynth.config import format_validation_error
from cxrsynth.errors import ConfigError
from cxrsynth.eval.config import EvalConfig
from cxrsynth.eval.evaluate import run_evaluation, summary_lines
from cxrsynth.progress import Progress


def evaluate(args: argparse.Namespace) -> int:
    try:
        cfg = EvalConfig(classifier_steps=args.classifier_steps, seeds=args.seeds)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "cxrsynth evaluate")) from None
    metrics = run_evaluation(args.synthetic, args.real, args.out, cfg, extractor=args.extractor, checkpoint=args.checkpoint, progress=Progress(args.quiet))
    for line in summary_lines(metrics):
        print(line)
    print(f"metrics: {args.out}/metrics.json  page: {args.out}/index.html")
    return 0
