"""Handlers of `cxrsynth deid run` and `cxrsynth deid eval`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cxrsynth.errors import InputError
from cxrsynth.privacy.deid.batch import DeidItem, deidentify_batch
from cxrsynth.privacy.deid.config import load_deid_config
from cxrsynth.privacy.deid.deidentifier import HEADER_FIELDS, cached_deidentifier
from cxrsynth.privacy.deid.evaluate import evaluate_gold, format_table
from cxrsynth.privacy.deid.jsonl import read_jsonl
from cxrsynth.privacy.deid.page import write_page
from cxrsynth.progress import Progress


def read_items(path: str | Path) -> list[DeidItem]:
    """`{"id", "text", "meta"?}` a line; a malformed line is refused with its line number."""
    path = Path(path)
    items, seen = [], set()
    for i, row in read_jsonl(path, "input"):
        if not isinstance(row.get("id"), (str, int)) or not isinstance(row.get("text"), str):
            raise InputError(
                f'{path}, line {i}: expected an object {{"id": str, "text": str, "meta": {{...}} (optional)}}.'
            )
        meta = row.get("meta") or {}
        if not isinstance(meta, dict) or any(not isinstance(v, (str, int)) for v in meta.values()):
            raise InputError(
                f"{path}, line {i}: key 'meta' must map header fields ({', '.join(HEADER_FIELDS)}) to strings."
            )
        rid = str(row["id"])
        if rid in seen:
            raise InputError(f"{path}, line {i}: id {rid!r} appears twice; ids must be unique.")
        seen.add(rid)
        meta = {k: str(v) for k, v in meta.items()}
        items.append(DeidItem(rid, row["text"], meta, meta.get("PatientID")))
    return items


def run(args: argparse.Namespace) -> int:
    config = load_deid_config(args.config)
    progress = Progress(getattr(args, "quiet", False))
    items = read_items(args.input)
    out = Path(args.out)
    audit = Path(args.audit_log) if args.audit_log else out.with_name(out.name + ".audit.jsonl")
    progress.say(
        f"deid: {len(items)} reports from {args.input}, mode {config.mode}, {args.workers} worker(s); loading {config.spacy_model}"
    )
    cached_deidentifier(config)
    t0 = time.perf_counter()
    results = deidentify_batch(items, config, audit, args.workers, progress)
    elapsed = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for it, r in zip(items, results):
            f.write(
                json.dumps({"id": it.id, "text": r.text, "status": r.status, "reason": r.reason}, ensure_ascii=False)
                + "\n"
            )
    quarantined = sum(r.status != "ok" for r in results)
    progress.say(
        f"deid: {len(items) - quarantined} ok, {quarantined} quarantined -> {out}; audit log {audit}; "
        f"{len(items) / max(elapsed, 1e-9):.1f} reports/s"
    )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    config = load_deid_config(args.config)
    deid = cached_deidentifier(config)
    result = evaluate_gold(args.gold, deid)
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = json.loads(config.model_dump_json())
        out.write_text(
            json.dumps({**result, "versions": deid.versions(), "config": settings}, indent=2), encoding="utf-8"
        )
        write_page(result, out.with_suffix(".html"), deid.versions(), settings)
    return 0


def dicom(args: argparse.Namespace) -> int:
    """`cxrsynth deid dicom --in DIR --out DIR`: one de-identified file per input, same relative path."""
    from cxrsynth.privacy.deid.dicom_files import deidentify_folder

    config = load_deid_config(args.config)
    progress = Progress(getattr(args, "quiet", False))
    src, out = Path(args.input), Path(args.out)
    audit = Path(args.audit_log) if args.audit_log else out.with_name(out.name + ".audit.jsonl")
    summary = deidentify_folder(src, out, config, audit, progress)
    progress.say(
        f"deid dicom: {summary['written']} written, {summary['quarantined']} quarantined, {summary['flagged']} flagged -> {out}; audit log {audit}"
    )
    return 0
