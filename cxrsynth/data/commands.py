"""Handlers of `cxrsynth data phantom` and `cxrsynth data ingest`."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrsynth.errors import InputError
from cxrsynth.progress import Progress


def phantom(args: argparse.Namespace) -> int:
    from cxrsynth.data.dataset import write_dataset, write_phi_headers
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.data.split import split_by_patient

    if args.n < 1 or args.sites < 1 or args.size < 16:
        raise InputError(f"data phantom: --n and --sites must be >= 1 and --size >= 16 (got {args.n}, {args.sites}, {args.size}).")
    progress = Progress(args.quiet)
    progress.say(f"drawing {args.n} phantom studies over {args.sites} site(s), seed {args.seed}")
    records = make_phantom(args.n, sites=args.sites, seed=args.seed, image_size=args.size, lateral=not args.no_lateral)
    if args.holdout > 0:
        records = split_by_patient(records, args.holdout, args.seed)
    out = Path(args.out)
    write_dataset(out, records, progress=progress)
    phi = write_phi_headers(out, records)
    from cxrsynth.data.overview import write_overview

    write_overview(out, records, title=f"Phantom data: {args.n} studies, {args.sites} sites, seed {args.seed}")
    progress.say(f"wrote {len(records)} records to {out}; PHI header fields in {phi} (site-only: never ship it)")
    return 0


def ingest(args: argparse.Namespace) -> int:
    from cxrsynth.data.ingest import ingest as run_ingest

    report = run_ingest(
        args.source, args.source_path, args.out, site=args.site, size=args.size, holdout=args.holdout,
        seed=args.seed, strict=args.strict, progress=Progress(args.quiet),
    )
    if report.read and not report.kept:
        raise InputError(f"{args.source_path}: none of the {report.read} item(s) read could be ingested; the reasons are in {Path(args.out) / 'ingest_report.json'}.")
    return 0
