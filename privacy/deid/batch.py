"""Many reports at once: a worker pool, the on-site audit log, and de-identified records.

The audit log stays on site and holds no PHI: per report a keyed hash of its id, counts per
entity type, status, reason and time; per run the configuration hash, the secret's source (never
the secret) and the Presidio/spaCy/model versions.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from cxrsynth.data.records import Record
from cxrsynth.privacy.deid.config import DeidConfig, config_hash
from cxrsynth.privacy.deid.deidentifier import Deidentifier, DeidResult, cached_deidentifier
from cxrsynth.privacy.deid.keys import keyed_hex
from cxrsynth.progress import Progress

# Findings and impression are de-identified as one text (shared context for the NER model) and
# split again at this line; a report whose marker did not survive intact is quarantined.
SECTION_MARK = "\n\n=== IMPRESSION ===\n\n"


@dataclass(frozen=True)
class DeidItem:
    id: str
    text: str
    meta: dict = field(default_factory=dict)
    patient_key: Optional[str] = None


def _work(config: DeidConfig, items: list[DeidItem]) -> list[DeidResult]:
    deid = cached_deidentifier(config)
    artifacts = deid.nlp_batch([it.text for it in items])
    return [deid.deidentify_text(it.text, it.meta or None, it.patient_key, a) for it, a in zip(items, artifacts)]


def _init_worker() -> None:
    # Two CPU cores are shared: each worker runs single-threaded.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def deidentify_batch(
    items: list[DeidItem],
    config: DeidConfig,
    audit_log_path: Optional[str | Path] = None,
    workers: int = 1,
    progress: Optional[Progress] = None,
) -> list[DeidResult]:
    """De-identify `items` (in order), with `workers` processes, and append to the audit log."""
    progress = progress or Progress(quiet=True)
    deid = cached_deidentifier(config)  # loaded before forking, so workers inherit it
    chunks = [items[i : i + config.batch_size] for i in range(0, len(items), config.batch_size)]
    task = progress.task("deid", len(items))
    t0 = time.perf_counter()
    results: list[DeidResult] = []
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            results += _work(config, chunk)
            task.advance(len(chunk))
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=mp.get_context(method), initializer=_init_worker
        ) as pool:
            for chunk, res in zip(chunks, pool.map(_work, [config] * len(chunks), chunks)):
                results += res
                task.advance(len(chunk))
    elapsed = time.perf_counter() - t0
    if audit_log_path is not None:
        write_audit_log(audit_log_path, deid, items, results, elapsed, workers)
    return results


def write_audit_log(
    path: str | Path,
    deid: Deidentifier,
    items: list[DeidItem],
    results: list[DeidResult],
    elapsed: float,
    workers: int,
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for r in results:
        for k, v in r.counts.items():
            counts[k] = counts.get(k, 0) + v
    run = {
        "kind": "run",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": config_hash(deid.config),
        "mode": deid.config.mode,
        "secret_source": deid.secret_source,
        "versions": deid.versions(),
        "reports": len(results),
        "quarantined": sum(r.status != "ok" for r in results),
        "counts": counts,
        "seconds": round(elapsed, 3),
        "workers": workers,
        "host_pid": os.getpid(),
    }
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(run) + "\n")
        for it, r in zip(items, results):
            f.write(
                json.dumps(
                    {
                        "kind": "report",
                        "key": keyed_hex(deid.secret, "audit", it.id),
                        "status": r.status,
                        "reason": r.reason,
                        "counts": r.counts,
                        "ms": round(1000 * r.seconds, 1),
                    }
                )
                + "\n"
            )


def deidentify_records(
    records: list[Record],
    config: Optional[DeidConfig] = None,
    audit_log_path: Optional[str | Path] = None,
    workers: int = 1,
    progress: Optional[Progress] = None,
) -> tuple[list[Record], list[str]]:
    """(clean records with empty phi_meta, ids of quarantined records). Quarantined records are left out."""
    config = config or DeidConfig()
    items = [
        DeidItem(
            r.record_id,
            r.findings + SECTION_MARK + r.impression,
            dict(r.phi_meta),
            r.phi_meta.get("PatientID") or r.patient_id,
        )
        for r in records
    ]
    results = deidentify_batch(items, config, audit_log_path, workers, progress)
    clean, quarantined = [], []
    for rec, res in zip(records, results):
        parts = res.text.split(SECTION_MARK) if res.status == "ok" else []
        if len(parts) != 2:
            quarantined.append(rec.record_id)
            continue
        clean.append(rec.with_(findings=parts[0], impression=parts[1], phi_meta={}))
    return clean, quarantined
