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
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cxrsynth.data.dataset import DatasetReport
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


def read_dicom_folder(
    root: str | Path, *, key: bytes, site: str = "", strict: bool = False, report: Optional[DatasetReport] = None
) -> tuple[Sequence[Record], DatasetReport]:
    """Every DICOM file below `root` -> records grouped by study (frontal + optional lateral).

    A report may sit next to a file as `<file stem>.txt` (FINDINGS/IMPRESSION sections); labels
    then come from the labeler. Files pydicom cannot read, or whose pixels cannot be decoded, are
    reported by name and skipped (or raised when `strict`). Each file is read and decoded once
    here to check it and let go; the studies are served again from their files (`StudyFiles`),
    so memory holds no pixels or report text, only the header PHI de-identification needs.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory; --source dicom takes a folder of DICOM files.")
    report = report or DatasetReport()
    studies: dict[str, dict] = {}
    # As strings (a Path object a file, with its parts interned, would be most of what reading a
    # large folder holds), read as strings too.
    files = sorted(
        str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() not in (".txt", ".json", ".csv", ".md")
    )

    def problem(path: str | Path, reason: str) -> None:
        if strict:
            raise InputError(f"{path}: {reason}")
        report.add(str(path), None, reason)

    for path in files:
        report.read += 1
        try:
            ds = _dataset(path)
            _pixels(ds)  # decoded to check it, read again when the study is written
        except ValueError as e:
            problem(path, str(e))
            continue
        view = view_of(ds) or "PA"
        text = ""
        sidecar = os.path.splitext(path)[0] + ".txt"
        if os.path.isfile(sidecar):
            try:
                text = read_report_file(sidecar)
            except ValueError as e:
                problem(sidecar, str(e))
                continue
        study_uid = str(ds.get("StudyInstanceUID", "") or os.path.splitext(os.path.basename(path))[0])
        patient = str(ds.get("PatientID", "") or ds.get("PatientName", "") or study_uid)
        entry = studies.setdefault(
            study_uid,
            {
                "patient": patient,
                "frontal": None,
                "lateral": None,
                "phi": phi_of(ds),
                "text": ("", b"", b""),
                "first": path,
            },
        )
        if text:  # the labels now, the text read again when the study is written
            entry["text"] = (sidecar, report_digest(text), label_codes(label_report(text)))
        slot = "lateral" if view == "LATERAL" else "frontal"
        # A PA beats an AP when a study has both (the usual choice for a study's frontal image).
        if entry[slot] is None or (slot == "frontal" and view == "PA" and entry[slot][1] == "AP"):
            entry[slot] = (path, view)
    kept = StudyFiles(read_dicom_file, site)
    for study_uid, e in sorted(studies.items()):
        if e["frontal"] is None:
            problem(e["first"], "study has no frontal (PA/AP) image; a record needs one")
            continue
        sidecar, digest, codes = e["text"]
        kept.add(
            record_id=pseudonym(study_uid, key, "r"),
            patient_id=pseudonym(e["patient"], key, "p"),
            study_id=pseudonym(study_uid, key, "s"),
            split="",
            view=e["frontal"][1],
            codes=codes if sidecar else label_codes(empty_labels()),
            frontal=e["frontal"][0],
            lateral=e["lateral"][0] if e["lateral"] else "",
            report_file=sidecar,
            digest=digest,
            phi=e["phi"],
        )
    report.kept += len(kept)
    return RecordView(kept), report
