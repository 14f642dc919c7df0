"""`cxrsynth data ingest`: a site's files -> a dataset directory, with an ingest report.

Reads a manifest (dataset format or site manifest CSV), a MIMIC-CXR-JPG tree or a DICOM folder;
resizes if asked; splits by patient (train/holdout) when the source does not, and refuses a
source split that puts a patient on both sides; writes the dataset, `phi_headers.jsonl`
(site-only) and `ingest_report.json` (read / kept / skipped by reason, each problem with file and
row). Nothing is written until reading has finished (not even the site's pseudonym key), so a
failed ingest leaves no trace. `--out` is a new or empty folder, written whole; an earlier
ingest's dataset, which is added to (its records kept, a record ingested again replaced); or,
with `--replace`, any folder, replaced whole (the site's pseudonym key is carried over, so
patients keep their pseudonyms).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from cxrsynth.data.dataset import (
    MANIFEST,
    DatasetReport,
    read_dataset,
    require_patient_split,
    write_dataset,
    write_phi_headers,
)
from cxrsynth.data.records import Record
from cxrsynth.data.split import split_by_patient
from cxrsynth.errors import InputError
from cxrsynth.output import check_out, fresh_dir
from cxrsynth.progress import Progress

log = logging.getLogger(__name__)

SOURCES = ("manifest", "mimic", "dicom")
REPORT = "ingest_report.json"
SECRET = "site_secret.key"
UNITS = {"mimic": "studies", "dicom": "files", "manifest": "rows"}  # what `read` counts


MAX_SIZE = 1024  # --size: the largest model preset's side; larger resizes only exhaust memory


def site_key(out: Path) -> bytes:
    """The site's pseudonym key of an output directory, or a new one (written by `save_site_key`
    once the ingest succeeds). Site-only, like the PHI headers."""
    path = out / SECRET
    if path.is_file():
        return path.read_bytes()
    return os.urandom(32)


def save_site_key(folder: Path, key: bytes) -> None:
    path = folder / SECRET
    if path.is_file():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)


def square_resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Pad to a square (edge value, so no aspect distortion) and resize to size x size."""
    h, w = arr.shape
    side = max(h, w)
    pad = ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2)
    sq = np.pad(arr, pad, mode="edge")
    return np.asarray(Image.fromarray(sq).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def read_source(
    source: str, path: Path, key: bytes, site: str, strict: bool, progress: Progress, labels: str = "chexpert", ignore: Sequence[str] = ()
) -> tuple[list[Record], DatasetReport]:
    if source != "manifest" and (labels != "chexpert" or ignore):
        raise InputError(f"--labels and --ignore-columns read a site manifest's columns; --source {source} has none (its labels come from its own tables or the reports).")
    if source == "mimic":
        from cxrsynth.data.mimic import read_mimic

        return read_mimic(path, site=site, strict=strict, progress=progress)
    if source == "dicom":
        from cxrsynth.data.dicom import read_dicom_folder

        return read_dicom_folder(path, key=key, site=site, strict=strict)
    if source == "manifest":
        from cxrsynth.data.manifest import read_manifest

        # A dataset directory carries its pseudonyms already; only a site manifest CSV needs the key.
        return read_manifest(path, key=key if path.is_file() else b"", site=site, strict=strict, labels=labels, ignore=ignore)
    raise InputError(f"--source {source!r} is not one of {list(SOURCES)}.")


def _is_dataset(out: Path) -> bool:
    return (out / MANIFEST).is_file()


def ingest(
    source: str,
    path: str | Path,
    out: str | Path,
    *,
    site: str = "site0",
    size: int = 0,
    holdout: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    replace: bool = False,
    labels: str = "chexpert",
    ignore: Sequence[str] = (),
    progress: Optional[Progress] = None,
) -> DatasetReport:
    """`labels`: the vocabulary of a site manifest's label columns (`cxrsynth.data.label_maps`);
    `ignore`: its columns to leave unread."""
    progress = progress or Progress(quiet=True)
    path, out = Path(path), Path(out)
    if not path.exists():
        raise InputError(f"{path}: does not exist; --path names the {source} to ingest.")
    if not 0.0 <= holdout < 1.0:
        raise InputError(f"--holdout {holdout}: expected a share of patients in [0, 1).")
    if size and not 16 <= size <= MAX_SIZE:
        raise InputError(f"--size {size}: expected 0 (keep the images' size) or a side from 16 to {MAX_SIZE} pixels.")
    if out.resolve() == path.resolve():
        raise InputError(f"{out}: --out must differ from --path; ingest writes a new dataset directory.")
    hint = "give an earlier ingest's dataset to add to, or pass --replace to replace the folder whole"
    check_out(out, replace, _is_dataset, hint)
    merge = _is_dataset(out) and not replace
    key = site_key(out) if out.is_dir() else os.urandom(32)
    progress.say(f"reading {source} at {path}")
    records, report = read_source(source, path, key, site, strict, progress, labels, ignore)
    if not report.read:
        where = path / MANIFEST if source == "manifest" and path.is_dir() else path
        raise InputError(f"{where}: no {UNITS[source]} to ingest (nothing after the header, or no files of that kind); nothing was written.")
    for r in records:
        r.site = r.site or site
    if size:
        records = [r.with_(image=square_resize(r.image, size), lateral=None if r.lateral is None else square_resize(r.lateral, size)) for r in records]
    if not any(r.split for r in records):
        records = split_by_patient(records, holdout, seed)
    kept_before = []
    if merge:
        # Strict: a row of the existing dataset that no longer reads would otherwise vanish on rewrite.
        previous, _ = read_dataset(out, strict=True)
        new_ids = {r.record_id for r in records}
        kept_before = [r for r in previous if r.record_id not in new_ids]
    require_patient_split(kept_before + records, f"{path}" + (f" with the records already in {out}" if kept_before else ""))
    if merge:
        _write(out, kept_before, records, report, key, source, path, site, progress)
    else:
        with fresh_dir(out, replace, _is_dataset, hint) as tmp:
            _write(tmp, kept_before, records, report, key, source, path, site, progress)
    for p in report.problems[:20]:
        log.warning("skipped %s", p)
    if report.skipped > 20:
        log.warning("... and %d more; all are listed in %s", report.skipped - 20, out / REPORT)
    progress.say(f"ingest: read {report.read}, kept {report.kept}, skipped {report.skipped} -> {out}")
    if records and not report.notes["with_report_text"]:
        progress.say("no record has report text: train with a report-free setting (README, \"Bring a labelled image folder without reports\")")
    return report


def _write(folder: Path, kept_before: list, records: list, report: DatasetReport, key: bytes, source: str, path: Path, site: str, progress: Progress) -> None:
    from cxrsynth.data.page import write_page

    save_site_key(folder, key)
    write_dataset(folder, kept_before + records, progress=progress)
    write_phi_headers(folder, records, keep_existing=True)
    report.notes.update(with_report_text=sum(bool(r.report.strip()) for r in records), with_labels=sum(r.has_labels() for r in records))
    summary = report.as_dict()
    summary.update(unit=UNITS[source], source=source, path=str(path), site=site, already_in_output=len(kept_before), total_in_output=len(kept_before) + len(records))
    (folder / REPORT).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_page(folder, kept_before + records, report, title=f"Ingest of {path} ({source}) for {site}")
