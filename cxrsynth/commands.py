"""Handlers of `cxrsynth train`, `pretrain` and `generate`: the pipeline layer, above privacy."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cxrsynth.config import load_config
from cxrsynth.errors import InputError
from cxrsynth.progress import Progress


def train(args: argparse.Namespace) -> int:
    overrides: dict = {}
    if args.data:
        overrides.setdefault("data", {})["path"] = args.data
    if args.steps is not None:
        overrides.setdefault("train", {})["steps"] = args.steps
    cfg = load_config(args.config, overrides)
    if getattr(args, "dry_run", False):
        from cxrsynth.dryrun import dry_run

        if args.dry_run_batch < 1:
            raise InputError(f"--dry-run-batch {args.dry_run_batch}: expected a batch of at least 1.")
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        for line in dry_run(cfg, batch=args.dry_run_batch).lines():
            print(line)
        return 0
    out = Path(args.out) if args.out else cfg.train.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; a checkpoint is a folder.")
    privatize = None
    if cfg.dp.enabled:
        from cxrsynth.privacy.dp import privatize
    from cxrsynth.train import train as run_train

    run_train(cfg, out if args.out else None, resume=args.resume, privatize=privatize, progress=Progress(args.quiet))
    return 0


def pretrain(args: argparse.Namespace) -> int:
    from cxrsynth.output import check_out
    from cxrsynth.pretrained import pretrain as run_pretrain

    overrides: dict = {"dp": {"enabled": False}}
    if args.steps is not None:
        overrides["train"] = {"steps": args.steps}
    cfg = load_config(args.config, overrides)
    out = Path(args.out)
    check_out(out, hint="empty it first: a base checkpoint is written to a folder of its own")
    if args.data:
        from cxrsynth.data.dataset import read_dataset

        records, report = read_dataset(args.data)
        if report.skipped:
            print(f"{args.data}: {report.skipped} row(s) skipped, {report.kept} kept")
        source = f"public dataset {Path(args.data).resolve()}: {len(records)} studies"
    else:
        from cxrsynth.pretrained import public_phantom

        vocabulary = None if args.phantom_labels == "all" else args.phantom_labels
        if args.phantom_styles is not None and args.phantom_styles < 1:
            raise InputError(f"--phantom-styles {args.phantom_styles}: expected at least 1 acquisition style.")
        styles = {} if args.phantom_styles is None else {"sites": args.phantom_styles}
        records, source = public_phantom(cfg, args.phantom or 3000, args.seed, vocabulary=vocabulary, **styles)
    card = run_pretrain(cfg, records, out, source, progress=Progress(args.quiet))
    print(card.sha256)
    return 0


def generate(args: argparse.Namespace) -> int:
    from cxrsynth.generate import generate as run_generate
    from cxrsynth.models.condition import Condition
    from cxrsynth.output import check_out

    if args.n < 1:
        raise InputError(f"--n {args.n}: expected the number of synthetic records to write, at least 1.")
    check_out(Path(args.out), args.replace)
    conditions = None
    if args.prompts:
        try:
            prompts = [ln.strip() for ln in Path(args.prompts).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{args.prompts}: cannot read prompts ({e}).") from None
        if not prompts:
            raise InputError(f"{args.prompts}: no prompts in the file; write one prompt a line.")
        conditions = [Condition(prompt=prompts[i % len(prompts)]) for i in range(args.n)]
    elif args.labels_from:
        from cxrsynth.data.dataset import read_dataset

        recs, _ = read_dataset(args.labels_from, load_images=False)
        conditions = [Condition(labels=recs[i % len(recs)].labels) for i in range(args.n)] if recs else None
    given = {"guidance": args.guidance, "sample_steps": args.sample_steps}
    run_generate(
        args.checkpoint,
        args.n,
        args.out,
        seed=args.seed,
        conditions=conditions,
        progress=Progress(args.quiet),
        replace=args.replace,
        sampling={k: v for k, v in given.items() if v is not None},
    )
    return 0
