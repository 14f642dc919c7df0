"""De-identified DICOM files for a whole folder, with the on-site audit log of `deid run`.

Every file under the input folder is read; each DICOM file is de-identified per Table E.1-1
(`dicom.deidentify_dataset`) and written under the output folder at the same relative path with
its pixel data. Fail closed, as for report text: a file that cannot be read, raises an error,
says its pixels carry burned-in annotation, or still holds an identifying header value after
the table is quarantined, and nothing is written for it. A file whose header does not say
whether annotation is burned in (common for CR/DX) is written and flagged in the audit log for
a person to look at. File and folder names are kept as they are: rename them before the run if
they hold PHI.

The audit log (JSON lines, append) stays on site and holds no PHI: per run the configuration
hash, where the secret came from and the versions; per file a keyed hash of its relative path,
status, reason, flags and time.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Optional

import pydicom
from pydicom.errors import InvalidDicomError

from cxrsynth.errors import InputError
from cxrsynth.privacy.deid.config import DeidConfig, config_hash
from cxrsynth.privacy.deid.dicom import TABLE_MODULE, deidentify_dataset
from cxrsynth.privacy.deid.keys import keyed_hex, load_secret
from cxrsynth.progress import Progress

# Flags that quarantine a file; the others are written and flagged.
QUARANTINE_FLAGS = ("burned_in_annotation", "phi_remaining")


def deidentify_file(path: Path, secret: bytes, config: DeidConfig) -> tuple[Optional[pydicom.Dataset], str, list[str]]:
    """(dataset or None when quarantined, reason, flags) for one file."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError) as e:
        return None, f"not a readable DICOM file ({type(e).__name__})", []
    try:
        ds, flags = deidentify_dataset(ds, secret, config.dicom_dates, config.max_shift_days, config.dicom_device)
    except Exception as e:  # fail closed: the message may quote header values, so only the type is kept
        return None, f"error: {type(e).__name__}", []
    stop = [f for f in flags if f.startswith(QUARANTINE_FLAGS)]
    if stop:
        return None, "quarantined: " + ", ".join(stop), flags
    return ds, "", flags


def deidentify_folder(
    src: Path, out: Path, config: DeidConfig, audit_log: Path, progress: Optional[Progress] = None
) -> dict:
    progress = progress or Progress(quiet=True)
    if not src.is_dir():
        raise InputError(f"{src}: no such folder (--in); expected a folder of DICOM files.")
    if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()):
        raise InputError(
            f"{out}: the output folder (--out) must lie outside the input folder {src}, so originals are never overwritten."
        )
    secret, source = load_secret(config.secret_file, config.ephemeral_secret)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    task = progress.task("deid dicom", len(files))
    records, written, flagged = [], 0, 0
    t0 = time.perf_counter()
    for path in files:
        rel = path.relative_to(src)
        t1 = time.perf_counter()
        ds, reason, flags = deidentify_file(path, secret, config)
        status = "quarantined" if ds is None else "ok"
        if ds is not None:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                ds.save_as(target)
                written += 1
            except Exception as e:  # a header the table left unwritable: nothing half-written stays
                target.unlink(missing_ok=True)
                status, reason = "quarantined", f"cannot write ({type(e).__name__})"
        flagged += bool(flags)
        records.append(
            {
                "kind": "file",
                "key": keyed_hex(secret, "audit", str(rel)),
                "status": status,
                "reason": reason,
                "flags": flags,
                "ms": round(1000 * (time.perf_counter() - t1), 1),
            }
        )
        task.advance(1)
    summary = {
        "kind": "run",
        "command": "deid dicom",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": config_hash(config),
        "secret_source": source,
        "versions": {
            "pydicom": pydicom.__version__,
            "dicom-anonymizer": metadata.version("dicom-anonymizer"),
            "table": TABLE_MODULE.rsplit(".", 1)[-1],
        },
        "files": len(files),
        "written": written,
        "quarantined": sum(r["status"] != "ok" for r in records),
        "flagged": flagged,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    audit_log.parent.mkdir(parents=True, exist_ok=True)
    with audit_log.open("a", encoding="utf-8") as f:
        f.write(json.dumps(summary) + "\n")
        for r in records:
            f.write(json.dumps(r) + "\n")
    return summary
