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
from itertools import chain
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from cxrsynth.data.dataset import (
    MANIFEST,
    DatasetReport,
    DatasetWriter,
    require_patient_split,
    write_phi_headers,
)
from cxrsynth.data.records import Record
from cxrsynth.data.split import split_by_patient
from cxrsynth.data.stream import ImageError, ManifestDataset, RecordView, metadata_view
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
    source: str,
    path: Path,
    key: bytes,
    site: str,
    strict: bool,
    progress: Progress,
    labels: str = "chexpert",
    ignore: Sequence[str] = (),
) -> tuple[list[Record], DatasetReport]:
    if source != "manifest" and (labels != "chexpert" or ignore):
        raise InputError(
            f"--labels and --ignore-columns read a site manifest's columns; --source {source} has none (its labels come from its own tables or the reports)."
        )
    if source == "mimic":
        from cxrsynth.data.mimic import read_mimic

        return read_mimic(path, site=site, strict=strict, progress=progress)
    if source == "dicom":
        from cxrsynth.data.dicom import read_dicom_folder

        return read_dicom_folder(path, key=key, site=site, strict=strict)
    if source == "manifest":
        from cxrsynth.data.manifest import read_manifest

        # A dataset directory carries its pseudonyms already; only a site manifest CSV needs the key.
        return read_manifest(
            path, key=key if path.is_file() else b"", site=site, strict=strict, labels=labels, ignore=ignore
        )
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
    if source == "manifest" and (path / MANIFEST).is_file():
        # A dataset directory is read lazily: its rows now, each image when it is written.
        dataset, report = ManifestDataset.open(path, strict=strict, with_phi=True)
        records: Sequence[Record] = RecordView(dataset)
    else:
        records, report = read_source(source, path, key, site, strict, progress, labels, ignore)
    if not report.read:
        where = path / MANIFEST if source == "manifest" and path.is_dir() else path
        raise InputError(
            f"{where}: no {UNITS[source]} to ingest (nothing after the header, or no files of that kind); nothing was written."
        )
    meta = metadata_view(records)
    split_here = not any(r.split for r in meta)

    def prepared(r: Record) -> Record:
        """A record as it is written: site filled in, split by patient, resized."""
        r = r.with_(site=r.site or site)
        if split_here:
            r = split_by_patient([r], holdout, seed)[0]
        if size and r.image is not None:
            r = r.with_(
                image=square_resize(r.image, size),
                lateral=None if r.lateral is None else square_resize(r.lateral, size),
            )
        return r

    new_ids = {r.record_id for r in meta}
    kept_before = []
    if merge:
        # The earlier dataset's rows that stay (a record ingested again is replaced); their files
        # stay as they are, and only their ids, patients and splits are read.
        previous, _ = ManifestDataset.open(out, strict=True)
        # Strict, every image decoded (one at a time): a row of the existing dataset that no longer
        # reads is refused now, as it would be by any later reading of the merged dataset.
        previous.check_images()
        kept_before = [i for i, rid in enumerate(previous.columns["record_id"]) if rid not in new_ids]
        before = (previous.metadata(i) for i in kept_before)
    else:
        before = iter(())
    require_patient_split(
        chain(before, (prepared(r) for r in meta)),
        f"{path}" + (f" with the records already in {out}" if kept_before else ""),
    )
    args = (records, prepared, new_ids, report, key, source, path, site, strict, progress)
    if merge:
        # Into the dataset itself: new PNGs are written beside the earlier ones and the manifest is
        # replaced when all are written, so an ingest cut short leaves the earlier dataset as it
        # was (and the new files unlisted, written again by the next run).
        _write(out, *args)
    else:
        with fresh_dir(out, replace, _is_dataset, hint) as tmp:
            _write(tmp, *args)
    for p in report.problems[:20]:
        log.warning("skipped %s", p)
    if report.skipped > 20:
        log.warning("... and %d more; all are listed in %s", report.skipped - 20, out / REPORT)
    progress.say(f"ingest: read {report.read}, kept {report.kept}, skipped {report.skipped} -> {out}")
    if records and not report.notes["with_report_text"]:
        progress.say(
            'no record has report text: train with a report-free setting (README, "Bring a labelled image folder without reports")'
        )
    return report


def _write(
    folder: Path,
    records: Sequence[Record],
    prepared,
    new_ids: set,
    report: DatasetReport,
    key: bytes,
    source: str,
    path: Path,
    site: str,
    strict: bool,
    progress: Progress,
) -> None:
    """Write the records one at a time (a lazy source decodes each image here), after the rows of
    the folder's earlier dataset that are not ingested again."""
    from cxrsynth.data.page import write_page

    save_site_key(folder, key)
    writer = DatasetWriter(folder, keep=lambda row: row["record_id"].strip() not in new_ids)
    task = progress.task("writing images", len(records))
    written: list[int] = []
    n_text = n_labels = 0
    for i in range(len(records)):
        task.advance()
        try:
            rec = prepared(records[i])
        except ImageError as e:  # a corrupt image of a lazily read dataset: a bad row, as on reading
            if strict:
                raise
            report.add(e.file, e.row, e.reason)
            report.kept -= 1
            continue
        writer.add(rec)
        written.append(i)
        n_text += bool(rec.report.strip())
        n_labels += rec.has_labels()
    writer.close()
    meta = metadata_view(records)
    write_phi_headers(folder, (meta[i] for i in written), keep_existing=True)
    report.notes.update(with_report_text=n_text, with_labels=n_labels)
    summary = report.as_dict()
    summary.update(
        unit=UNITS[source],
        source=source,
        path=str(path),
        site=site,
        already_in_output=writer.kept,
        total_in_output=writer.kept + len(written),
    )
    (folder / REPORT).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    dataset, _ = ManifestDataset.open(folder)
    write_page(folder, RecordView(dataset), report, title=f"Ingest of {path} ({source}) for {site}")
