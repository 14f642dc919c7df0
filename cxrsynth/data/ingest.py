"""`cxrsynth data ingest`: a site's files -> a dataset directory, with an ingest report.

Reads a manifest (dataset format or site manifest CSV), a MIMIC-CXR-JPG tree or a DICOM folder;
resizes if asked; splits by patient (train/holdout) when the source does not; writes the dataset,
`phi_headers.jsonl` (site-only) and `ingest_report.json` (read / kept / skipped by reason, each
problem with file and row). Nothing is written until reading has finished, and records already in
the output directory are kept (a record ingested again is replaced), so a failed or partial
ingest never loses what was ingested before.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from cxrsynth.data.dataset import MANIFEST, DatasetReport, read_dataset, write_dataset, write_phi_headers
from cxrsynth.data.records import Record
from cxrsynth.data.split import split_by_patient
from cxrsynth.errors import InputError
from cxrsynth.progress import Progress

log = logging.getLogger(__name__)

SOURCES = ("manifest", "mimic", "dicom")
REPORT = "ingest_report.json"
SECRET = "site_secret.key"
UNITS = {"mimic": "studies", "dicom": "files", "manifest": "rows"}  # what `read` counts


def site_key(out: Path) -> bytes:
    """The site's pseudonym key, made once per output directory. Site-only, like the PHI headers."""
    path = out / SECRET
    if path.is_file():
        return path.read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def square_resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Pad to a square (edge value, so no aspect distortion) and resize to size x size."""
    h, w = arr.shape
    side = max(h, w)
    pad = ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2)
    sq = np.pad(arr, pad, mode="edge")
    return np.asarray(Image.fromarray(sq).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def read_source(source: str, path: Path, out: Path, site: str, strict: bool, progress: Progress) -> tuple[list[Record], DatasetReport]:
    if source == "mimic":
        from cxrsynth.data.mimic import read_mimic

        return read_mimic(path, site=site, strict=strict, progress=progress)
    if source == "dicom":
        from cxrsynth.data.dicom import read_dicom_folder

        return read_dicom_folder(path, key=site_key(out), site=site, strict=strict)
    if source == "manifest":
        from cxrsynth.data.manifest import read_manifest

        # A dataset directory carries its pseudonyms already; only a site manifest CSV needs the key.
        return read_manifest(path, key=site_key(out) if path.is_file() else b"", site=site, strict=strict)
    raise InputError(f"--source {source!r} is not one of {list(SOURCES)}.")


def ingest(source: str, path: str | Path, out: str | Path, *, site: str = "site0", size: int = 0, holdout: float = 0.2, seed: int = 0, strict: bool = False, progress: Optional[Progress] = None) -> DatasetReport:
    progress = progress or Progress(quiet=True)
    path, out = Path(path), Path(out)
    if not path.exists():
        raise InputError(f"{path}: does not exist; --path names the {source} to ingest.")
    if not 0.0 <= holdout < 1.0:
        raise InputError(f"--holdout {holdout}: expected a share of patients in [0, 1).")
    if out.resolve() == path.resolve():
        raise InputError(f"{out}: --out must differ from --path; ingest writes a new dataset directory.")
    progress.say(f"reading {source} at {path}")
    records, report = read_source(source, path, out, site, strict, progress)
    for r in records:
        r.site = r.site or site
    if size:
        records = [r.with_(image=square_resize(r.image, size), lateral=None if r.lateral is None else square_resize(r.lateral, size)) for r in records]
    if not any(r.split for r in records):
        records = split_by_patient(records, holdout, seed)
    kept_before = []
    if (out / MANIFEST).is_file():
        # Strict: a row of the existing dataset that no longer reads would otherwise vanish on rewrite.
        previous, _ = read_dataset(out, strict=True)
        new_ids = {r.record_id for r in records}
        kept_before = [r for r in previous if r.record_id not in new_ids]
    write_dataset(out, kept_before + records, progress=progress)
    write_phi_headers(out, records, keep_existing=True)
    summary = report.as_dict()
    summary.update(unit=UNITS[source], source=source, path=str(path), site=site, already_in_output=len(kept_before), total_in_output=len(kept_before) + len(records))
    (out / REPORT).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    from cxrsynth.data.overview import write_overview

    write_overview(out, kept_before + records, report, title=f"Ingest of {path} ({source}) for {site}")
    for p in report.problems[:20]:
        log.warning("skipped %s", p)
    if report.skipped > 20:
        log.warning("... and %d more; all are listed in %s", report.skipped - 20, out / REPORT)
    progress.say(f"ingest: read {report.read}, kept {report.kept}, skipped {report.skipped} -> {out}")
    return report
