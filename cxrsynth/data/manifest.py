"""Manifests -> records: the dataset format, or the looser "site manifest" CSV a hospital brings.

A site manifest is one CSV row per study with an image path, report text and optional labels.
Column names are matched loosely (case, spaces, underscores and hyphens ignored):

| meaning | accepted names |
|---|---|
| frontal image (PNG, JPEG or DICOM; relative to the CSV) | image, image_path, path, file, filename, frontal |
| lateral image (optional) | lateral, lateral_path |
| report text, or a report file | report, text, report_text; report_path, report_file |
| report sections instead | findings, impression |
| patient / study (PHI: pseudonymised, originals kept for de-identification) | patient_id, patient, mrn, subject_id; study_id, study, accession, accession_number |
| view, split | view, view_position; split |
| labels (1, 0, -1 or empty) | the 14 label names, e.g. "Pleural Effusion" or pleural_effusion |

Without label columns, labels come from the report labeler. Unknown columns are refused (a
misspelt label column would otherwise be dropped without a word).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from cxrsynth.data.dataset import MANIFEST, DatasetReport, collect_rows, csv_rows, load_png, parse_label, read_dataset
from cxrsynth.data.dicom import pseudonym, to_uint8, view_of
from cxrsynth.data.labeler import label_report
from cxrsynth.data.records import LABELS, SPLITS, VIEWS, Record, empty_labels
from cxrsynth.data.report_text import read_report_file, sections
from cxrsynth.errors import InputError

ALIASES = {
    "image": ("image", "imagepath", "path", "file", "filename", "frontal", "frontalpath"),
    "lateral": ("lateral", "lateralpath"),
    "report": ("report", "text", "reporttext"),
    "report_path": ("reportpath", "reportfile"),
    "findings": ("findings",),
    "impression": ("impression",),
    "patient": ("patientid", "patient", "mrn", "subjectid"),
    "study": ("studyid", "study", "accession", "accessionnumber"),
    "view": ("view", "viewposition"),
    "split": ("split",),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name or "").lower()


LABEL_KEYS = {_norm(n): n for n in LABELS}


def read_manifest(path: str | Path, *, key: bytes, site: str = "", strict: bool = False, report: Optional[DatasetReport] = None) -> tuple[list[Record], DatasetReport]:
    """A dataset directory (manifest.csv in the dataset format) or a site manifest CSV."""
    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return read_dataset(path, strict=strict, report=report)
        raise InputError(f"{path}: no {MANIFEST} here; give a dataset directory or a site manifest CSV file.")
    if not path.is_file():
        raise InputError(f"{path}: no such file; --source manifest takes a dataset directory or a CSV file.")
    return read_site_manifest(path, key=key, site=site, strict=strict, report=report)


def _columns(path: Path, header: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(meaning -> column, label -> column) for a site manifest header; InputError on unknown columns."""
    by_norm = {}
    for col in header:
        by_norm.setdefault(_norm(col), col)
    cols, labels, unknown = {}, {}, []
    for n, col in by_norm.items():
        meaning = next((m for m, names in ALIASES.items() if n in names), None)
        if meaning:
            cols.setdefault(meaning, col)
        elif n in LABEL_KEYS:
            labels[LABEL_KEYS[n]] = col
        else:
            unknown.append(col)
    if unknown:
        raise InputError(f"{path}: unknown column(s) {unknown}; a site manifest takes {sorted(ALIASES)} (any case/spacing) and the 14 label names {list(LABELS)}.")
    if "image" not in cols:
        raise InputError(f"{path}: no image column; name the column holding each study's frontal image path 'image_path'.")
    return cols, labels


def _image(base: Path, rel: str, column: str) -> tuple[object, Optional[str]]:
    """(uint8 image, view from a DICOM header or None). ValueError names the column and file."""
    p = Path(rel.strip())
    p = p if p.is_absolute() else base / p
    if p.suffix.lower() in (".dcm", ".dicom"):
        import pydicom

        try:
            ds = pydicom.dcmread(p)
            return to_uint8(ds), view_of(ds)
        except FileNotFoundError:
            raise ValueError(f"{column} {rel}: image file is missing") from None
        except Exception as e:
            raise ValueError(f"{column} {rel}: unreadable DICOM ({e.__class__.__name__})") from None
    try:
        return load_png(p), None
    except ValueError as e:
        raise ValueError(f"{column} {rel}: {e}") from None


def read_site_manifest(path: Path, *, key: bytes, site: str = "", strict: bool = False, report: Optional[DatasetReport] = None) -> tuple[list[Record], DatasetReport]:
    report = report or DatasetReport()
    reader = csv_rows(path)
    cols, label_cols = _columns(path, list(reader.fieldnames or []))
    base = path.parent
    records = collect_rows(reader, lambda row: _site_row(row, cols, label_cols, base, key, site), path, report, strict, duplicate="study")
    return records, report


def _site_row(row: dict, cols: dict, label_cols: dict, base: Path, key: bytes, site: str) -> Record:
    if None in row:
        raise ValueError(f"malformed row: {len(row[None])} more cell(s) than header columns")
    get = lambda m: (row.get(cols[m]) or "").strip() if m in cols else ""  # noqa: E731
    if not get("image"):
        raise ValueError(f"malformed row: column {cols['image']!r} is empty")
    if "report_path" in cols and get("report_path"):
        rp = Path(get("report_path"))
        try:
            text = read_report_file(rp if rp.is_absolute() else base / rp)
        except ValueError as e:
            raise ValueError(f"{cols['report_path']} {rp}: {e}") from None
    else:
        text = get("report")
    if text:
        findings, impression = sections(text)
    else:
        findings, impression = get("findings"), get("impression")
        text = "\n".join(s for s in (f"FINDINGS: {findings}" if findings else "", f"IMPRESSION: {impression}" if impression else "") if s)
    labels = empty_labels()
    if label_cols:
        for name, col in label_cols.items():
            try:
                labels[name] = parse_label(row.get(col) or "")
            except ValueError as e:
                raise ValueError(f"column {col!r}: unknown {e}") from None
    elif text:
        labels = label_report(text)
    image, header_view = _image(base, get("image"), cols["image"])
    lateral = _image(base, get("lateral"), cols["lateral"])[0] if get("lateral") else None
    view = (get("view") or header_view or "PA").upper()
    view = "LATERAL" if view in ("LL", "LAT") else view
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is not one of {list(VIEWS)}")
    split = get("split").lower()
    split = {"test": "holdout", "validate": "train", "val": "train"}.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of 'train', 'holdout' or empty")
    patient_raw = get("patient") or get("study") or get("image")
    study_raw = get("study") or f"{get('image')}"
    phi = {}
    if get("patient"):
        phi["PatientID"] = get("patient")
    if get("study") and cols.get("study", "").lower().startswith("acc"):
        phi["AccessionNumber"] = get("study")
    return Record(
        record_id=pseudonym(study_raw, key, "r"),
        patient_id=pseudonym(patient_raw, key, "p"),
        study_id=pseudonym(study_raw, key, "s"),
        site=site,
        split=split,
        view=view,
        findings=findings,
        impression=impression,
        labels=labels,
        image=image,
        lateral=lateral,
        phi_meta=phi,
    )
