"""A folder of DICOM files (pydicom) -> records, one per study.

Pixels go through the modality LUT (rescale slope/intercept) and the VOI LUT or window the file
names, MONOCHROME1 is inverted so bone is bright, and the result is scaled to 8 bits. The view
comes from ViewPosition (PA, AP, LATERAL/LL) or, failing that, the view code. Header fields that
are PHI go to `Record.phi_meta` for de-identification and are never written out; the patient id
in the record is a keyed pseudonym of the PatientID (see `pseudonym`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from itertools import groupby
from pathlib import Path, PurePath
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from cxrsynth.data.dataset import DatasetReport
from cxrsynth.data.index import TempIndex, blob, unblob
from cxrsynth.data.labeler import label_report
from cxrsynth.data.records import Record, empty_labels
from cxrsynth.data.report_text import read_report_file
from cxrsynth.data.stream import RecordView, label_codes
from cxrsynth.data.studies import StudyFiles, report_digest
from cxrsynth.errors import InputError

# The header fields de-identification needs (the de-id gold format names the same five).
PHI_FIELDS = ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate", "ReferringPhysicianName")
FRONTAL = {"PA": "PA", "AP": "AP", "POSTERO_ANTERIOR": "PA", "ANTERO_POSTERIOR": "AP"}
LATERAL = {"LATERAL", "LL", "RL", "LAT", "LLD", "RLD"}


def pseudonym(value: str, key: bytes, prefix: str) -> str:
    """A stable, keyed pseudonym. Keyed because MRNs are short: a plain hash is reversible by trying them all."""
    return prefix + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def to_uint8(ds) -> np.ndarray:
    """Displayable 8-bit pixels: modality LUT, VOI LUT/window, MONOCHROME1 inversion, min-max to 0..255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = ds.pixel_array
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: the first frame
    if arr.ndim != 2:
        raise ValueError(f"pixel data has shape {arr.shape}; expected one grayscale frame")
    arr = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds, index=0)
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 1.0 - out  # MONOCHROME1: high values are dark
    return (out * 255 + 0.5).astype(np.uint8)


def view_of(ds) -> Optional[str]:
    """PA, AP or LATERAL from the header, or None when the header does not say."""
    vp = str(ds.get("ViewPosition", "") or "").strip().upper()
    if vp in FRONTAL:
        return FRONTAL[vp]
    if vp in LATERAL:
        return "LATERAL"
    for item in ds.get("ViewCodeSequence", []) or []:
        meaning = str(item.get("CodeMeaning", "")).lower()
        if "lateral" in meaning:
            return "LATERAL"
        if "postero-anterior" in meaning or "posteroanterior" in meaning:
            return "PA"
        if "antero-posterior" in meaning or "anteroposterior" in meaning:
            return "AP"
    return None


def phi_of(ds) -> dict[str, str]:
    return {f: str(ds.get(f, "") or "") for f in PHI_FIELDS if ds.get(f) not in (None, "")}


def _dataset(path: str | Path):
    """The file's DICOM dataset; ValueError saying why it is not an image object pydicom reads."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ValueError(f"unreadable DICOM: {e.__class__.__name__}: {str(e)[:120]}") from None
    if "PixelData" not in ds:
        raise ValueError("unreadable DICOM: no pixel data (not an image object)")
    return ds


def _pixels(ds) -> np.ndarray:
    try:
        return to_uint8(ds)
    except Exception as e:  # pydicom raises many types for undecodable pixel data
        raise ValueError(f"unreadable DICOM pixels: {e.__class__.__name__}: {str(e)[:160]}") from None


def read_dicom_file(path: str | Path) -> np.ndarray:
    """A DICOM file's pixels as 8 bits (`to_uint8`); ValueError saying why they cannot be read."""
    return _pixels(_dataset(path))


_IGNORED = (".txt", ".json", ".csv", ".md")  # reports and notes beside the images


class _File(NamedTuple):
    """What a study needs of one of its files, a row of the index (strings that may name files
    as `blob`s); the report's fields are None when the file has none with text."""

    study_uid: bytes
    seq: int  # the file's place in the folder's sorted paths
    path: bytes
    patient: bytes
    view: str
    phi: str  # header PHI as JSON
    sidecar: Optional[bytes]
    digest: Optional[bytes]
    codes: Optional[bytes]


_FILES = f"""
CREATE TABLE files ({", ".join(_File._fields)}, PRIMARY KEY (study_uid, seq)) WITHOUT ROWID;
"""


def _files(folder: str) -> Iterator[str]:
    """The files below `folder` in the order of their sorted path strings (a folder's path goes
    on with "/", so "c-d/x" and "c.dcm" come before "c/x"), one folder's names in memory at a
    time. As `Path.rglob`: links to files are files, links to folders are not followed, hidden
    files count, and a folder that cannot be listed is passed over."""
    try:
        with os.scandir(folder) as entries:
            keys = [key for key in map(_sort_key, entries) if key is not None]
    except PermissionError:
        return
    for key in sorted(keys):
        path = os.path.join(folder, key.rstrip("/")) if folder != "." else key.rstrip("/")
        if key.endswith("/"):
            yield from _files(path)
        else:
            yield path


def _sort_key(entry: os.DirEntry) -> Optional[str]:
    """The name of a folder to look into, followed by "/"; the name of a file that may be a DICOM
    image; None for anything else."""
    if entry.is_dir() and not entry.is_symlink():
        return entry.name + "/"
    if entry.is_file() and PurePath(entry.name).suffix.lower() not in _IGNORED:
        return entry.name
    return None


def read_dicom_folder(
    root: str | Path, *, key: bytes, site: str = "", strict: bool = False, report: Optional[DatasetReport] = None
) -> tuple[Sequence[Record], DatasetReport]:
    """Every DICOM file below `root` -> records grouped by study (frontal + optional lateral).

    A report may sit next to a file as `<file stem>.txt` (FINDINGS/IMPRESSION sections); labels
    then come from the labeler. Files pydicom cannot read, or whose pixels cannot be decoded, are
    reported by name and skipped (or raised when `strict`). Each file is read and decoded once
    here to check it and let go; what a study needs of it goes to a temporary SQLite file
    (`TempIndex`), since a study is complete only once the whole folder is read; the studies are
    then formed in the order of their uids and served again from their files (`StudyFiles`), so
    memory holds no pixels, report text or header PHI.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory; --source dicom takes a folder of DICOM files.")
    report = report or DatasetReport()

    def problem(path: str | Path, reason: str) -> None:
        if strict:
            raise InputError(f"{path}: {reason}")
        report.add(str(path), None, reason)

    index = TempIndex(_FILES)
    kept = StudyFiles(read_dicom_file, site)
    try:
        for seq, path in enumerate(_files(str(root))):
            report.read += 1
            row = _file_row(path, seq, problem)
            if row is not None:
                index.execute(f"INSERT INTO files VALUES ({', '.join('?' * len(row))})", row)
        rows = index.execute(f"SELECT {', '.join(_File._fields)} FROM files ORDER BY study_uid, seq")
        for study_uid, files in groupby(map(_File._make, rows), key=lambda f: f.study_uid):
            _add_study(unblob(study_uid), list(files), kept, key, problem)
        kept.commit()
    except BaseException:
        kept.close()
        raise
    finally:
        index.close()
    report.kept += len(kept)
    return RecordView(kept), report


def _file_row(path: str, seq: int, problem: Callable[[str, str], None]) -> Optional[_File]:
    """The file's row, or None when the file or its report cannot be read (reported)."""
    try:
        ds = _dataset(path)
        _pixels(ds)  # decoded to check it, read again when the study is written
    except ValueError as e:
        problem(path, str(e))
        return None
    text = ""
    sidecar = os.path.splitext(path)[0] + ".txt"
    if os.path.isfile(sidecar):
        try:
            text = read_report_file(sidecar)
        except ValueError as e:
            problem(sidecar, str(e))
            return None
    study_uid = str(ds.get("StudyInstanceUID", "") or os.path.splitext(os.path.basename(path))[0])
    patient = str(ds.get("PatientID", "") or ds.get("PatientName", "") or study_uid)
    # The labels now, the text read again when the study is written.
    said = (blob(sidecar), report_digest(text), label_codes(label_report(text))) if text else (None, None, None)
    return _File(blob(study_uid), seq, blob(path), blob(patient), view_of(ds) or "PA", json.dumps(phi_of(ds)), *said)


def _add_study(
    study_uid: str, files: list[_File], kept: StudyFiles, key: bytes, problem: Callable[[str, str], None]
) -> None:
    """A study from its files' rows (in the folder's order): the first file's patient and PHI,
    the first PA (else the first AP) as frontal, the first lateral, the last report."""
    frontal = lateral = None
    sidecar, digest, codes = "", b"", label_codes(empty_labels())
    for f in files:
        if f.sidecar is not None:
            sidecar, digest, codes = unblob(f.sidecar), f.digest, f.codes
        if f.view == "LATERAL":
            lateral = lateral or unblob(f.path)
        elif frontal is None or (f.view == "PA" and frontal[1] == "AP"):
            # A PA beats an AP when a study has both (the usual choice for a study's frontal image).
            frontal = (unblob(f.path), f.view)
    if frontal is None:
        problem(unblob(files[0].path), "study has no frontal (PA/AP) image; a record needs one")
        return
    kept.add(
        record_id=pseudonym(study_uid, key, "r"),
        patient_id=pseudonym(unblob(files[0].patient), key, "p"),
        study_id=pseudonym(study_uid, key, "s"),
        split="",
        view=frontal[1],
        codes=codes,
        frontal=frontal[0],
        lateral=lateral or "",
        report_file=sidecar,
        digest=digest,
        phi=json.loads(files[0].phi),
    )
