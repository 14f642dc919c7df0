"""Handlers of `cxrsynth data phantom` and `cxrsynth data ingest`."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrsynth.errors import InputError
from cxrsynth.progress import Progress


def phantom(args: argparse.Namespace) -> int:
    from cxrsynth.config import PhantomConfig, validate
    from cxrsynth.data.dataset import write_dataset, write_phi_headers
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.data.split import split_by_patient
    from cxrsynth.output import check_out, fresh_dir

    validate(
        PhantomConfig,
        {"n": args.n, "sites": args.sites, "seed": args.seed, "image_size": args.size},
        "data phantom (--n, --sites, --seed, --size)",
    )
    if not 0.0 <= args.holdout < 1.0:
        raise InputError(f"data phantom: --holdout {args.holdout}: expected a share of patients in [0, 1).")
    out = Path(args.out)
    check_out(out, args.replace)
    progress = Progress(args.quiet)
    progress.say(f"drawing {args.n} phantom studies over {args.sites} site(s), seed {args.seed}")
    records = make_phantom(args.n, sites=args.sites, seed=args.seed, image_size=args.size, lateral=not args.no_lateral)
    if args.holdout > 0:
        records = split_by_patient(records, args.holdout, args.seed)
    from cxrsynth.data.page import write_page

    with fresh_dir(out, args.replace) as tmp:
        write_dataset(tmp, records, progress=progress)
        write_phi_headers(tmp, records)
        write_page(tmp, records, title=f"Phantom data: {args.n} studies, {args.sites} sites, seed {args.seed}")
    progress.say(
        f"wrote {len(records)} records to {out}; PHI header fields in {out / 'phi_headers.jsonl'} (site-only: never ship it)"
    )
    return 0


def ingest(args: argparse.Namespace) -> int:
    from cxrsynth.data.ingest import ingest as run_ingest

    report = run_ingest(
        args.source,
        args.source_path,
        args.out,
        site=args.site,
        size=args.size,
        holdout=args.holdout,
        seed=args.seed,
        strict=args.strict,
        replace=args.replace,
        labels=args.labels,
        ignore=[c.strip() for c in args.ignore_columns.split(",") if c.strip()],
        progress=Progress(args.quiet),
    )
    if report.read and not report.kept:
        raise InputError(
            f"{args.source_path}: none of the {report.read} item(s) read could be ingested; the reasons are in {Path(args.out) / 'ingest_report.json'}."
        )
    return 0
