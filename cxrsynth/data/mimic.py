"""A MIMIC-CXR-JPG tree -> records, one per study (frontal image paired with a lateral when present).

Layout (Johnson et al., MIMIC-CXR-JPG v2.0.0):
  files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg   images
  files/pXX/pNNNNNNNN/sNNNNNNNN.txt              the study's report (from MIMIC-CXR)
  mimic-cxr-2.0.0-metadata.csv[.gz]              dicom_id -> ViewPosition (PA, AP, LATERAL, LL, ...)
  mimic-cxr-2.0.0-chexpert.csv[.gz]              study labels: 1.0, 0.0, -1.0 or blank
  mimic-cxr-2.0.0-split.csv[.gz]                 dicom_id -> train / validate / test
The official test split becomes `holdout`; train and validate become `train`.
"""

from __future__ import annotations

import gzip
import re
import sys
import zlib
from pathlib import Path
from typing import Iterator, Optional, Sequence

from cxrsynth.data.dataset import CsvRows, DatasetReport, load_png, parse_label
from cxrsynth.data.labeler import label_report
from cxrsynth.data.records import LABELS, Record, empty_labels
from cxrsynth.data.report_text import read_report_file
from cxrsynth.data.stream import RecordView, label_codes
from cxrsynth.data.studies import StudyFiles, report_digest
from cxrsynth.errors import InputError
from cxrsynth.progress import Progress

METADATA = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
FRONTAL_ORDER = ("PA", "AP")  # a PA is preferred as the study's frontal image
LATERAL_VIEWS = ("LATERAL", "LL")
SPLIT_MAP = {"train": "train", "validate": "train", "test": "holdout"}
_STUDY_DIR = re.compile(r"^s\d+$")


def _find(root: Path, name: str) -> Optional[Path]:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based data row, row) of a CSV or CSV.GZ; InputError naming the file when it is not UTF-8."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(
                f"{path}: not a readable gzip file ({e.__class__.__name__}: {e}); it should be the file as distributed, or its unpacked .csv."
            ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: not UTF-8 text (line {line}); it should be the CSV as distributed.") from None
    yield from enumerate(CsvRows(path, text), start=1)


def _short(row: dict) -> Optional[str]:
    """Why a CSV row is malformed (fewer or more cells than the header), or None."""
    if None in row:
        return f"malformed row: {len(row[None])} more cell(s) than header columns"
    missing = [k for k, v in row.items() if v is None]
    return f"malformed row: {len(missing)} cell(s) fewer than header columns" if missing else None


def _require(path: Path, header_row: dict, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in header_row]
    if missing:
        raise InputError(f"{path}: lacks column(s) {missing}; is this the MIMIC-CXR-JPG file of that name?")


def _read_tables(root: Path, report: DatasetReport, strict: bool) -> tuple[dict, dict, dict, bool]:
    meta_path = _find(root, METADATA)
    if meta_path is None:
        raise InputError(
            f"{root}: no {METADATA}; it gives each image's view (PA/AP/LATERAL) and must sit at the tree's top."
        )
    views: dict[str, str] = {}
    for i, row in _rows(meta_path):
        if i == 1:
            _require(meta_path, row, ("dicom_id", "ViewPosition"))
        if not row.get("dicom_id"):
            _table_problem(meta_path, i, "malformed row: no dicom_id", report, strict)
            continue
        views[row["dicom_id"]] = sys.intern((row.get("ViewPosition") or "").strip().upper())
    labels: dict[str, Optional[bytes]] = {}  # study -> label codes (None: a bad row, the study skipped)
    chex_path = _find(root, CHEXPERT)
    if chex_path is not None:
        for i, row in _rows(chex_path):
            if i == 1:
                _require(chex_path, row, ("study_id",) + tuple(n for n in LABELS))
            short = _short(row)
            if short or not (row.get("study_id") or "").strip():
                _table_problem(chex_path, i, short or "malformed row: no study_id", report, strict)
                if (row.get("study_id") or "").strip():
                    labels[row["study_id"].strip()] = None  # the study is skipped, not labelled wrongly
                continue
            try:
                # As int8 codes: a dict of 14 labels a study would be most of what the tables hold.
                labels[row["study_id"].strip()] = label_codes({n: parse_label(row.get(n) or "") for n in LABELS})
            except ValueError as e:
                bad = next(n for n in LABELS if _bad_label(row.get(n) or ""))
                msg = f"column {bad!r}: {e}"
                if strict:
                    raise InputError(f"{chex_path}, row {i}: {msg}") from None
                report.add(str(chex_path), i, f"unknown label value: {msg}")
                labels[row["study_id"].strip()] = None  # the study is skipped, not labelled wrongly
    splits: dict[str, str] = {}
    split_path = _find(root, SPLIT)
    if split_path is not None:
        for _, row in _rows(split_path):
            splits[row.get("dicom_id", "")] = SPLIT_MAP.get((row.get("split") or "").strip(), "")
    return views, labels, splits, chex_path is not None


def _table_problem(path: Path, row: int, reason: str, report: DatasetReport, strict: bool) -> None:
    if strict:
        raise InputError(f"{path}, row {row}: {reason}")
    report.add(str(path), row, reason)


def _bad_label(value: str) -> bool:
    try:
        parse_label(value)
        return False
    except ValueError:
        return True


def read_mimic(
    root: str | Path,
    *,
    site: str = "",
    strict: bool = False,
    report: Optional[DatasetReport] = None,
    progress: Optional[Progress] = None,
) -> tuple[Sequence[Record], DatasetReport]:
    """The tree's studies, each checked here (its images decoded once and let go, its report
    read) and served again from its files (`StudyFiles`): memory holds no image or report."""
    root = Path(root)
    files = root / "files"
    if not files.is_dir():
        raise InputError(f"{root}: no files/ folder; a MIMIC-CXR-JPG tree has files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg.")
    report = report or DatasetReport()
    views, study_labels, splits, have_labels = _read_tables(root, report, strict)
    # As strings: a Path object a study would be most of what reading holds.
    study_dirs = sorted(str(d) for d in files.glob("p*/p*/s*") if d.is_dir() and _STUDY_DIR.match(d.name))
    task = (progress or Progress(quiet=True)).task("mimic studies", len(study_dirs))
    studies = StudyFiles(load_png, site)

    def problem(path, row, reason):
        if strict:
            raise InputError(f"{path}{'' if row is None else f', row {row}'}: {reason}")
        report.add(str(path), row, reason)

    for d in map(Path, study_dirs):
        task.advance()
        report.read += 1
        subject, study = d.parent.name[1:], d.name[1:]
        if study in study_labels and study_labels[study] is None:
            continue  # already reported with its row
        images = {"frontal": [], "lateral": []}
        for jpg in sorted(d.glob("*.jpg")):
            view = views.get(jpg.stem)
            if view is None:
                problem(jpg, None, f"image not listed in {METADATA}; its view is unknown")
                continue
            if view in FRONTAL_ORDER:
                images["frontal"].append((FRONTAL_ORDER.index(view), jpg, view))
            elif view in LATERAL_VIEWS:
                images["lateral"].append((LATERAL_VIEWS.index(view), jpg, "LATERAL"))
            else:
                report.warn(
                    str(jpg), None, f"view {view or '(blank)'!r} is neither frontal nor lateral; image not used"
                )
        chosen = {}
        for slot in ("frontal", "lateral"):
            for _, jpg, view in sorted(images[slot]):
                try:
                    load_png(jpg)  # decoded to check it, read again when the study is written
                    chosen[slot] = (jpg, view)
                    break
                except ValueError as e:
                    problem(jpg, None, str(e))
        if "frontal" not in chosen:
            problem(d, None, "study has no readable frontal (PA/AP) image")
            continue
        text = ""
        report_path = d.parent / f"{d.name}.txt"
        if report_path.is_file():
            try:
                text = read_report_file(report_path)
            except ValueError as e:
                problem(report_path, None, str(e))
                continue
        else:
            report.warn(str(report_path), None, "no report file; the study is kept without report text")
        if study in study_labels:
            codes = study_labels[study]
        else:
            if have_labels:
                report.warn(str(d), None, f"study not in {CHEXPERT}; labels come from the report labeler")
            codes = label_codes(label_report(text) if text else empty_labels())
        study_id = f"s{study}"
        studies.add(
            record_id=study_id,
            patient_id=f"p{subject}",
            study_id=study_id,  # one string for both
            split=splits.get(chosen["frontal"][0].stem, ""),
            view=chosen["frontal"][1],
            codes=codes,
            frontal=str(chosen["frontal"][0]),
            lateral=str(chosen["lateral"][0]) if "lateral" in chosen else "",
            report_file=str(report_path) if text else "",
            digest=report_digest(text),
        )
        report.kept += 1
    return RecordView(studies), report
