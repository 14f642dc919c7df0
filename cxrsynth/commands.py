"""Handlers of `cxrsynth train` and `cxrsynth generate`."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from cxrsynth.config import load_config
from cxrsynth.progress import Progress


def train(args: argparse.Namespace) -> int:
    overrides: dict = {}
    if args.data:
        overrides.setdefault("data", {})["path"] = args.data
    if args.steps:
        overrides.setdefault("train", {})["steps"] = args.steps
    cfg = load_config(args.config, overrides)
    privatize = None
    if cfg.dp.enabled:
        # privacy.dp sits above cxrsynth in the dependency order; found by name, not imported.
        privatize = importlib.import_module("privacy.dp").privatize
    from cxrsynth.train import train as run_train

    run_train(cfg, Path(args.out) if args.out else None, resume=args.resume, privatize=privatize, progress=Progress(args.quiet))
    return 0


def generate(args: argparse.Namespace) -> int:
    from cxrsynth.generate import generate as run_generate

    conditions = None
    if args.prompts:
        from cxrsynth.errors import InputError

        try:
            prompts = [ln.strip() for ln in Path(args.prompts).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{args.prompts}: cannot read prompts ({e}).") from None
        if not prompts:
            raise InputError(f"{args.prompts}: no prompts in the file; write one prompt a line.")
        conditions = [prompts[i % len(prompts)] for i in range(args.n)]
    elif args.labels_from:
        from cxrsynth.data.dataset import read_dataset

        recs, _ = read_dataset(args.labels_from, load_images=False)
        conditions = [recs[i % len(recs)].labels for i in range(args.n)] if recs else None
    run_generate(args.checkpoint, args.n, args.out, seed=args.seed, conditions=conditions, progress=Progress(args.quiet))
    return 0
