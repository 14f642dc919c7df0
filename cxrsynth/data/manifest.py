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

Without label columns, labels come from the report labeler. Labels in another vocabulary (NIH
ChestX-ray14's 15 names, as columns or as one "Finding Labels" column of "|"-joined findings)
are read with `labels="nih"` and mapped onto the 14 (`cxrsynth.data.label_maps`). Report columns
are optional: a manifest of images and label columns alone makes a report-free dataset. A
manifest with neither labels nor reports is refused. Unknown columns are refused (a misspelt
label column would otherwise be dropped without a word), unless named in `ignore`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cxrsynth.data.dataset import (
    MANIFEST,
    DatasetReport,
    checked_rows,
    csv_rows,
    load_png,
    parse_label,
    read_csv_row,
    read_dataset,
)
from cxrsynth.data.dicom import pseudonym, to_uint8, view_of
from cxrsynth.data.label_maps import LabelVocabulary, norm, vocabulary
from cxrsynth.data.labeler import label_report
from cxrsynth.data.records import LABELS, SPLITS, VIEWS, Record, empty_labels
from cxrsynth.data.report_text import read_report_file, sections
from cxrsynth.data.stream import ImageError, RecordView, SpanFile, label_codes, labels_of_codes
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


_norm = norm
REPORT_MEANINGS = ("report", "report_path", "findings", "impression")
LIST = "label list"  # the key of a "|"-joined findings column among the label columns


def read_manifest(
    path: str | Path,
    *,
    key: bytes,
    site: str = "",
    strict: bool = False,
    report: Optional[DatasetReport] = None,
    labels: str = "chexpert",
    ignore: Sequence[str] = (),
) -> tuple[list[Record], DatasetReport]:
    """A dataset directory (manifest.csv in the dataset format) or a site manifest CSV.
    `labels` (the vocabulary of the label columns) and `ignore` (columns to leave unread) apply
    to a site manifest only: a dataset directory is in the dataset format already."""
    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return read_dataset(path, strict=strict, report=report)
        raise InputError(f"{path}: no {MANIFEST} here; give a dataset directory or a site manifest CSV file.")
    if not path.is_file():
        raise InputError(f"{path}: no such file; --source manifest takes a dataset directory or a CSV file.")
    return read_site_manifest(path, key=key, site=site, strict=strict, report=report, labels=labels, ignore=ignore)


def _columns(
    path: Path, header: list[str], vocab: LabelVocabulary, ignore: Sequence[str] = ()
) -> tuple[dict[str, str], dict[str, str]]:
    """(meaning -> column, source label -> column) for a site manifest header; InputError on
    unknown columns, on an `ignore` name the header lacks, and on a header that gives neither
    labels nor reports."""
    by_norm = {}
    for col in header:
        by_norm.setdefault(_norm(col), col)
    absent = [c for c in ignore if _norm(c) not in by_norm]
    if absent:
        raise InputError(
            f"{path}: --ignore-columns names {absent}, which the header {header} does not have; check the spelling."
        )
    skip = {_norm(c) for c in ignore}
    lists = {_norm(c) for c in vocab.list_columns}
    cols, labels, unknown = {}, {}, []
    for n, col in by_norm.items():
        meaning = next((m for m, names in ALIASES.items() if n in names), None)
        if n in skip:
            continue
        if meaning:
            cols.setdefault(meaning, col)
        elif vocab.find(col) is not None:
            labels[vocab.find(col)] = col
        elif n in lists:
            labels[LIST] = col
        else:
            unknown.append(col)
    names = (
        f"the {len(vocab.names)} label names {vocab.names}"
        if vocab.name == "chexpert"
        else f"the {vocab.name} label names {vocab.names}"
    )
    if vocab.list_columns:
        names += f" (or one column {vocab.list_columns[0]!r} of findings joined by '|')"
    if unknown:
        hint = " Columns the ingest should not read (demographics, notes) go in --ignore-columns; labels in another vocabulary need --labels (e.g. nih)."
        raise InputError(
            f"{path}: unknown column(s) {unknown}; a site manifest takes {sorted(ALIASES)} (any case/spacing) and {names}.{hint}"
        )
    if "image" not in cols:
        raise InputError(
            f"{path}: no image column; name the column holding each study's frontal image path 'image_path'."
        )
    if LIST in labels and len(labels) > 1:
        raise InputError(
            f"{path}: labels given twice, as the findings list {labels[LIST]!r} and as label columns {sorted(c for k, c in labels.items() if k != LIST)}; keep one (or name the other in --ignore-columns)."
        )
    if not labels and not any(m in cols for m in REPORT_MEANINGS):
        raise InputError(
            f"{path}: no label columns and no report column, so nothing says what the images show. A site manifest needs label columns "
            f"({names}) or report text (a report, findings/impression or report_path column), or both."
        )
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


def read_site_manifest(
    path: Path,
    *,
    key: bytes,
    site: str = "",
    strict: bool = False,
    report: Optional[DatasetReport] = None,
    labels: str = "chexpert",
    ignore: Sequence[str] = (),
) -> tuple[Sequence[Record], DatasetReport]:
    """A site manifest's studies, as a sequence that reads each one again (its row, report file and
    images) when it is asked for. Every row is checked here, its images decoded once and let go,
    so a bad row is reported before anything is written and memory holds no image or text."""
    report = report or DatasetReport()
    vocab = vocabulary(labels)
    reader = csv_rows(path)
    cols, label_cols = _columns(path, list(reader.fieldnames or []), vocab, ignore)
    ds = SiteManifest(path, list(reader.fieldnames or []), cols, label_cols, key, site, vocab)
    dropped: dict[str, list[str]] = {}  # record id -> its positive findings with no counterpart, until kept
    counts = {s: 0 for s in vocab.dropped if s in label_cols or LIST in label_cols}
    make = lambda row: ds.record(row, dropped=dropped)  # noqa: E731
    for i, _, rec in checked_rows(reader, make, path, report, strict, duplicate="study"):
        ds.keep(i, reader.span, rec)
        for s in dropped.pop(rec.record_id, ()):
            if s in counts:
                counts[s] += 1
    ds.close_columns()
    report.notes["labels"] = {
        "vocabulary": vocab.name,
        "columns": sorted(label_cols.values()),
        **({"dropped_positives": counts, "not_stated": vocab.not_stated} if vocab.name != "chexpert" else {}),
    }
    return RecordView(ds), report


class SiteManifest:
    """The checked rows of a site manifest CSV, read again when asked for (`RecordView` of it:
    with images, or `metadata` without). Memory holds what ingest's split and counts read (ids,
    split, view, the 14 labels as int8) and each row's byte range in the CSV."""

    def __init__(self, path: Path, fieldnames: list[str], cols: dict, label_cols: dict, key: bytes, site, vocab):
        self.path, self.fieldnames = Path(path), fieldnames
        self.cols, self.label_cols, self.key, self.site, self.vocab = cols, label_cols, key, site, vocab
        self.source = SpanFile(self.path)
        self.rows: list[int] = []
        self.spans: list[tuple[int, int]] = []
        self.ids: list[str] = []  # record pseudonyms, to tell a changed file
        self.views: list[str] = []  # as read first (a DICOM header's view is not read again)
        self.labels = bytearray()

    def record(self, row: dict, images: bool = True, known: Optional[tuple[str, dict]] = None, dropped=None) -> Record:
        return _site_row(
            row,
            self.cols,
            self.label_cols,
            self.path.parent,
            self.key,
            self.site,
            self.vocab,
            {} if dropped is None else dropped,
            images=images,
            known=known,
        )

    def keep(self, row: int, span: tuple[int, int], rec: Record) -> None:
        self.rows.append(row)
        self.spans.append(span)
        self.ids.append(rec.record_id)
        self.views.append(sys.intern(rec.view))
        self.labels += label_codes(rec.labels)

    def close_columns(self) -> None:
        self.label_array = np.frombuffer(bytes(self.labels), dtype=np.int8).reshape(-1, len(LABELS))
        self.labels = bytearray()
        self.span_array = np.array(self.spans, dtype=np.int64).reshape(-1, 2)
        self.spans = []

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, i: int, images: bool) -> Record:
        if not 0 <= i < len(self):
            raise IndexError(i)
        row = read_csv_row(self.path, self.fieldnames, self.source.read(*self.span_array[i].tolist()))
        try:
            rec = self.record(row, images=images, known=(self.views[i], labels_of_codes(self.label_array[i])))
        except ValueError as e:
            raise ImageError(str(self.path), self.rows[i], str(e)) from None
        if rec.record_id != self.ids[i]:
            raise InputError(f"{self.path}, row {self.rows[i]}: the file changed while it was read; run again.")
        return rec

    def metadata(self, i: int) -> Record:
        """Study i without its images (ids, report, labels, split, view, PHI header fields)."""
        return self._read(i, images=False)

    def __getitem__(self, i: int) -> Record:
        return self._read(i, images=True)


def _source_labels(row: dict, label_cols: dict, vocab: LabelVocabulary) -> dict[str, Optional[int]]:
    """The row's labels in the site's vocabulary; ValueError names the column."""
    if LIST in label_cols:
        try:
            return vocab.from_list(row.get(label_cols[LIST]) or "")
        except ValueError as e:
            raise ValueError(f"column {label_cols[LIST]!r}: unknown label value: {e}") from None
    values = {}
    for name, col in label_cols.items():
        try:
            values[name] = parse_label(row.get(col) or "")
        except ValueError as e:
            raise ValueError(f"column {col!r}: unknown {e}") from None
    return values


def _site_row(
    row: dict,
    cols: dict,
    label_cols: dict,
    base: Path,
    key: bytes,
    site: str,
    vocab: LabelVocabulary,
    dropped: dict,
    images: bool = True,
    known: Optional[tuple[str, dict]] = None,
) -> Record:
    """A site manifest row as a record; ValueError names the column. `images`: decode them (else
    the record has none); `known`: (view, labels) of a row read before, so neither the DICOM header
    nor the report labeler is read again."""
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
        text = "\n".join(
            s
            for s in (f"FINDINGS: {findings}" if findings else "", f"IMPRESSION: {impression}" if impression else "")
            if s
        )
    labels = empty_labels()
    source = {}
    if known is not None:
        labels = known[1]
    elif label_cols:
        source = _source_labels(row, label_cols, vocab)
        labels = vocab.convert(source)
    elif text:
        labels = label_report(text)
    image = lateral = header_view = None
    if images:
        image, header_view = _image(base, get("image"), cols["image"])
        lateral = _image(base, get("lateral"), cols["lateral"])[0] if get("lateral") else None
    view = known[0] if known is not None else (get("view") or header_view or "PA").upper()
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
    record_id = pseudonym(study_raw, key, "r")
    dropped[record_id] = [s for s in vocab.dropped if source.get(s) == 1]
    return Record(
        record_id=record_id,
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
