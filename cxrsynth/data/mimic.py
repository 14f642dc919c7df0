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
import os
import re
import zlib
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from cxrsynth.data.dataset import ByteLines, CsvRows, DatasetReport, has_surrogates, load_png, parse_label
from cxrsynth.data.index import TempIndex, blob
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
    """(1-based data row, row) of a CSV or CSV.GZ, read as the rows are taken (the metadata table
    of the whole MIMIC-CXR-JPG is tens of MB of text); InputError naming the file when it is not
    UTF-8 or not a readable gzip file. Either stops the table; the rows before were taken."""
    packed = path.suffix == ".gz"
    try:
        lines = ByteLines(gzip.open(path, "rb") if packed else open(path, "rb"))
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e.__class__.__name__}).") from None
    try:
        reader = CsvRows(path, lines)
        if any(has_surrogates(name) for name in reader.fieldnames or []):
            raise InputError(f"{path}: not UTF-8 text (the header); it should be the CSV as distributed.")
        for i, row in enumerate(reader, start=1):
            if any(isinstance(v, str) and has_surrogates(v) for v in row.values()):
                raise InputError(f"{path}: not UTF-8 text (row {i}); it should be the CSV as distributed.")
            yield i, row
    except (OSError, EOFError, zlib.error) as e:
        if not packed:
            raise
        raise InputError(
            f"{path}: not a readable gzip file ({e.__class__.__name__}: {e}); it should be the file as distributed, or its unpacked .csv."
        ) from None
    finally:
        lines.close()


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


_TABLES = """
CREATE TABLE views (key BLOB PRIMARY KEY, value TEXT) WITHOUT ROWID;  -- dicom_id -> ViewPosition
CREATE TABLE labels (key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID;  -- study -> codes; NULL: a bad row
CREATE TABLE splits (key BLOB PRIMARY KEY, value TEXT) WITHOUT ROWID;  -- dicom_id -> train/holdout
"""


class _Tables:
    """The three tables, looked up by image or study: rows of an SQLite file (`TempIndex`), since
    as dicts they would hold a few hundred bytes an image (377,000 images in MIMIC-CXR-JPG)."""

    def __init__(self, root: Path, report: DatasetReport, strict: bool):
        meta_path = _find(root, METADATA)
        if meta_path is None:
            raise InputError(
                f"{root}: no {METADATA}; it gives each image's view (PA/AP/LATERAL) and must sit at the tree's top."
            )
        self.index = TempIndex(_TABLES)
        try:
            self._read(root, meta_path, report, strict)
        except BaseException:
            self.index.close()
            raise

    def _read(self, root: Path, meta_path: Path, report: DatasetReport, strict: bool) -> None:
        # A row of a later line replaces one of the same key (as a dict's would).
        put = {t: f"INSERT OR REPLACE INTO {t} VALUES (?, ?)" for t in ("views", "labels", "splits")}
        for i, row in _rows(meta_path):
            if i == 1:
                _require(meta_path, row, ("dicom_id", "ViewPosition"))
            if not row.get("dicom_id"):
                _table_problem(meta_path, i, "malformed row: no dicom_id", report, strict)
                continue
            self.index.execute(put["views"], (blob(row["dicom_id"]), (row.get("ViewPosition") or "").strip().upper()))
        chex_path = _find(root, CHEXPERT)
        if chex_path is not None:
            for i, row in _rows(chex_path):
                if i == 1:
                    _require(chex_path, row, ("study_id",) + tuple(n for n in LABELS))
                study = (row.get("study_id") or "").strip()
                short = _short(row)
                if short or not study:
                    _table_problem(chex_path, i, short or "malformed row: no study_id", report, strict)
                    if study:  # the study is skipped, not labelled wrongly
                        self.index.execute(put["labels"], (blob(study), None))
                    continue
                try:
                    codes = label_codes({n: parse_label(row.get(n) or "") for n in LABELS})
                except ValueError as e:
                    bad = next(n for n in LABELS if _bad_label(row.get(n) or ""))
                    msg = f"column {bad!r}: {e}"
                    if strict:
                        raise InputError(f"{chex_path}, row {i}: {msg}") from None
                    report.add(str(chex_path), i, f"unknown label value: {msg}")
                    codes = None  # the study is skipped, not labelled wrongly
                self.index.execute(put["labels"], (blob(study), codes))
        split_path = _find(root, SPLIT)
        if split_path is not None:
            for _, row in _rows(split_path):
                if row.get("dicom_id") is not None:
                    split = SPLIT_MAP.get((row.get("split") or "").strip(), "")
                    self.index.execute(put["splits"], (blob(row["dicom_id"]), split))
        self.index.commit()
        self.have_labels = chex_path is not None

    def _get(self, table: str, key: str) -> Optional[tuple]:
        return self.index.db.execute(f"SELECT value FROM {table} WHERE key = ?", (blob(key),)).fetchone()

    def view(self, dicom_id: str) -> Optional[str]:
        """The image's ViewPosition, or None when the metadata does not list it."""
        found = self._get("views", dicom_id)
        return None if found is None else found[0]

    def labels(self, study: str) -> Optional[tuple[Optional[bytes]]]:
        """(the study's label codes,), (None,) for a bad row, or None when the study has no row."""
        return self._get("labels", study)

    def split(self, dicom_id: str) -> str:
        found = self._get("splits", dicom_id)
        return "" if found is None else found[0]


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


def _subfolders(folder: str, keep: Callable[[str], bool], leaf: bool = False) -> list[str]:
    """The names of `folder`'s subfolders that `keep` accepts, in the order their paths sort in
    (a folder's path goes on with "/", so "p10-a/..." sorts before "p10/..."); unreadable: none."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if keep(e.name) and e.is_dir()]
    except PermissionError:
        return []
    return sorted(names, key=None if leaf else (lambda name: name + "/"))


def _study_dirs(files: Path) -> Iterator[Path]:
    """files/p*/p*/s<digits> folders in the order of their sorted paths, found one folder at a
    time: a tree's list of every study would grow with it."""
    top = str(files)
    for group in _subfolders(top, lambda name: name.startswith("p")):
        for patient in _subfolders(os.path.join(top, group), lambda name: name.startswith("p")):
            folder = os.path.join(top, group, patient)
            for study in _subfolders(folder, _STUDY_DIR.match, leaf=True):
                yield Path(folder, study)


def read_mimic(
    root: str | Path,
    *,
    site: str = "",
    strict: bool = False,
    report: Optional[DatasetReport] = None,
    progress: Optional[Progress] = None,
) -> tuple[Sequence[Record], DatasetReport]:
    """The tree's studies, each checked here (its images decoded once and let go, its report
    read) and served again from its files (`StudyFiles`): memory holds no image or report, and
    the tables and the studies lie in temporary SQLite files (`TempIndex`)."""
    root = Path(root)
    files = root / "files"
    if not files.is_dir():
        raise InputError(f"{root}: no files/ folder; a MIMIC-CXR-JPG tree has files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg.")
    report = report or DatasetReport()
    tables = _Tables(root, report, strict)
    studies = StudyFiles(load_png, site)
    try:
        task = (progress or Progress(quiet=True)).task("mimic studies", sum(1 for _ in _study_dirs(files)))
        for d in _study_dirs(files):
            task.advance()
            report.read += 1
            _check_study(d, tables, studies, report, strict)
        studies.commit()
    except BaseException:
        studies.close()
        raise
    finally:
        tables.index.close()
    return RecordView(studies), report


def _check_study(d: Path, tables: _Tables, studies: StudyFiles, report: DatasetReport, strict: bool) -> None:
    """Study folder `d` checked, and added to `studies` when it is usable."""

    def problem(path, reason):
        if strict:
            raise InputError(f"{path}: {reason}")
        report.add(str(path), None, reason)

    subject, study = d.parent.name[1:], d.name[1:]
    labels = tables.labels(study)
    if labels is not None and labels[0] is None:
        return  # already reported with its row
    images = {"frontal": [], "lateral": []}
    for jpg in sorted(d.glob("*.jpg")):
        view = tables.view(jpg.stem)
        if view is None:
            problem(jpg, f"image not listed in {METADATA}; its view is unknown")
            continue
        if view in FRONTAL_ORDER:
            images["frontal"].append((FRONTAL_ORDER.index(view), jpg, view))
        elif view in LATERAL_VIEWS:
            images["lateral"].append((LATERAL_VIEWS.index(view), jpg, "LATERAL"))
        else:
            report.warn(str(jpg), None, f"view {view or '(blank)'!r} is neither frontal nor lateral; image not used")
    chosen = {}
    for slot in ("frontal", "lateral"):
        for _, jpg, view in sorted(images[slot]):
            try:
                load_png(jpg)  # decoded to check it, read again when the study is written
                chosen[slot] = (jpg, view)
                break
            except ValueError as e:
                problem(jpg, str(e))
    if "frontal" not in chosen:
        problem(d, "study has no readable frontal (PA/AP) image")
        return
    text = ""
    report_path = d.parent / f"{d.name}.txt"
    if report_path.is_file():
        try:
            text = read_report_file(report_path)
        except ValueError as e:
            problem(report_path, str(e))
            return
    else:
        report.warn(str(report_path), None, "no report file; the study is kept without report text")
    if labels is not None:
        codes = labels[0]
    else:
        if tables.have_labels:
            report.warn(str(d), None, f"study not in {CHEXPERT}; labels come from the report labeler")
        codes = label_codes(label_report(text) if text else empty_labels())
    study_id = f"s{study}"
    studies.add(
        record_id=study_id,
        patient_id=f"p{subject}",
        study_id=study_id,
        split=tables.split(chosen["frontal"][0].stem),
        view=chosen["frontal"][1],
        codes=codes,
        frontal=str(chosen["frontal"][0]),
        lateral=str(chosen["lateral"][0]) if "lateral" in chosen else "",
        report_file=str(report_path) if text else "",
        digest=report_digest(text),
    )
    report.kept += 1
