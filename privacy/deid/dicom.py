"""DICOM header de-identification: the Basic Application Level Confidentiality Profile, in full.

DICOM PS3.15 Annex E, Table E.1-1 gives an action for each of some 650 attributes: D (replace
with a dummy value), Z (zero length), X (remove), U (replace the UID consistently), K (keep) and
compound ones (Z/D, X/Z, X/D, X/Z/D, X/Z/U*) that leave the choice to what the IOD requires. The
table itself comes from `dicom-anonymizer` (Kitware; its attribute lists follow the standard's
current edition, `dicomfields_2026c`); this module applies it, recursively into every sequence
item, with the project's own choices:

- compound actions take their strictest member that keeps the file readable: X where X is
  allowed (a missing Type 2 attribute is tolerated by every reader), else Z;
- UIDs become `2.25.<keyed hash>` (PS3.5 B.2), so one original UID maps to one new UID across a
  site's files and nobody without the site secret can reverse or recompute it; well-known UIDs
  under the DICOM root (SOP classes, transfer syntaxes) identify nothing and stay;
- the patient ID becomes a keyed pseudonym, the same for all of a patient's files;
- private attributes, curves (50xx) and overlay data/comments (60xx) are removed (E.1-1);
- free text inside structured content (Text Value) is removed (the Clean Structured Content
  option would be needed to keep it, and that needs a person to read it).

Options (PS3.15 E.3) a research release needs:

- `dates="shift"`: Retain Longitudinal Temporal Information with Modified Dates (113107): every
  date and date-time the table touches moves by the patient's keyed offset (the same offset as
  the report text), times of day stay, so intervals between studies survive; the birth date is
  still emptied. `dates="remove"` applies the table as it stands.
- `device="keyed"`: device identity cleaned rather than removed: serial numbers, station, detector,
  plate and cassette IDs become keyed pseudonyms, so images of one detector can still be grouped
  (scanner effects) without naming the device. `device="remove"` applies the table.

Pixel data is not inspected: an image whose header says burned-in annotation is present (or does
not say) is flagged, for the caller to quarantine or review. After the table, every remaining
text value is checked for the identifying values the header held; a hit is flagged
"phi_remaining" and the caller must not release the file (fail closed).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Literal

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from cxrsynth.privacy.deid.keys import keyed, keyed_hex, patient_shift_days

TABLE_MODULE = "dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c"
# The library's list names -> the action codes of Table E.1-1.
LISTS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
# What each action does here (see the module notes).
RESOLVE = {"D": "D", "Z": "Z", "X": "X", "U": "U", "Z/D": "Z", "X/Z": "X", "X/D": "X", "X/Z/D": "X", "X/Z/U*": "U*"}
# Free text in structured reports: not in E.1-1 (it falls under Clean Structured Content).
SUPPLEMENT = {Tag("TextValue"): "X"}
# Device identity (PS3.15 E.3.3, Retain Device Identity Option attributes).
DEVICE = frozenset(
    Tag(tag_for_keyword(k))
    for k in (
        "DeviceSerialNumber",
        "StationName",
        "DetectorID",
        "PlateID",
        "CassetteID",
        "GantryID",
        "DeviceID",
        "DeviceLabel",
        "DeviceDescription",
        "SourceSerialNumber",
        "TreatmentMachineName",
        "PerformedStationName",
        "ScheduledStationName",
    )
    if tag_for_keyword(k) is not None
)
KEEP_BIRTH_DATE_EMPTY = frozenset(
    {Tag("PatientBirthDate"), Tag("PatientBirthTime"), Tag("PatientBirthDateInAlternativeCalendar")}
)
# Well-known UIDs (SOP classes, transfer syntaxes) live under the DICOM root and identify nothing.
DICOM_ROOT = "1.2.840.10008."
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
DUMMY = {
    "AE": "ANONYMIZED",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UR": "",
    "UT": "ANONYMIZED",
}


@lru_cache(maxsize=1)
def action_table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """(tag -> E.1-1 action, masked group entries such as curves 50xx,xxxx)."""
    import importlib

    db = importlib.import_module(TABLE_MODULE)
    exact: dict[int, str] = {}
    masked = []
    for name, code in LISTS.items():
        for entry in getattr(db, name):
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = code
            else:
                masked.append((entry[0], entry[1], entry[2], entry[3], code))
    return exact, tuple(masked)


def profile_action(tag: int) -> str | None:
    """The Table E.1-1 action of an attribute (None: not in the table, kept)."""
    exact, masked = action_table()
    if tag in exact:
        return exact[tag]
    group, element = tag >> 16, tag & 0xFFFF
    for g, e, gm, em, code in masked:
        if group & gm == g and element & em == e:
            return code
    return None


def remap_uid(uid: str, key: bytes) -> str:
    if not uid or uid.startswith(DICOM_ROOT):
        return uid
    return "2.25." + str(int.from_bytes(keyed(key, "uid", uid)[:16], "big"))


def _shift_value(value: str, vr: str, days: int) -> str:
    try:
        if vr == "DA":
            return (datetime.strptime(value[:8], "%Y%m%d") + timedelta(days=days)).strftime("%Y%m%d")
        if vr == "DT":
            return (datetime.strptime(value[:8], "%Y%m%d") + timedelta(days=days)).strftime("%Y%m%d") + value[8:]
    except ValueError:
        return ""
    return value


class _Run:
    """One dataset's de-identification: the key, the options and the patient's offset."""

    def __init__(self, key: bytes, dates: str, device: str, shift: int, patient: str):
        self.key, self.dates, self.device, self.shift, self.patient = key, dates, device, shift, patient
        self.removed = 0

    def apply(self, ds: Dataset) -> None:
        for elem in list(ds):
            tag = int(elem.tag)
            if elem.tag.is_private:
                del ds[elem.tag]  # E.1-1: private attributes X (no Retain Safe Private option)
                self.removed += 1
                continue
            action = SUPPLEMENT.get(elem.tag) or profile_action(tag)
            if action is None:
                if elem.VR == "SQ":
                    for item in elem.value:
                        self.apply(item)
                continue
            self.act(ds, elem, RESOLVE[action])

    def act(self, ds: Dataset, elem, action: str) -> None:
        tag, vr = elem.tag, elem.VR
        if tag == Tag("PatientID"):
            elem.value = "PID" + keyed_hex(self.key, "patient", self.patient, n=12).upper()
            return
        if self.device == "keyed" and tag in DEVICE and vr in TEXT_VRS:
            value = str(elem.value or "")
            elem.value = ("DEV" + keyed_hex(self.key, "device", value, n=12).upper()) if value else ""
            return
        if self.dates == "shift" and vr in ("DA", "DT") and tag not in KEEP_BIRTH_DATE_EMPTY and action != "U":
            elem.value = (
                _shift_value(str(elem.value or ""), vr, self.shift)
                if elem.VM <= 1
                else [_shift_value(str(v), vr, self.shift) for v in elem.value]
            )
            return
        if self.dates == "shift" and vr == "TM" and tag not in KEEP_BIRTH_DATE_EMPTY:
            return  # times of day carry no date: kept under the modified-dates option
        if action == "X":
            del ds[tag]
            self.removed += 1
        elif action == "Z":
            elem.value = (
                Sequence([])
                if vr == "SQ"
                else (b"" if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") else "" if vr in TEXT_VRS else None)
            )
        elif action in ("U", "U*"):
            if vr == "UI":
                elem.value = (
                    [remap_uid(str(v), self.key) for v in elem.value]
                    if elem.VM > 1
                    else remap_uid(str(elem.value), self.key)
                )
            elif vr == "SQ":  # X/Z/U*: the references stay, their instance UIDs are replaced
                for item in elem.value:
                    self.apply(item)
            else:
                del ds[tag]
        else:  # D
            if vr == "SQ":  # a dummy sequence: the items cleaned by the same table
                for item in elem.value:
                    self.apply(item)
            elif vr == "UI":
                elem.value = remap_uid(str(elem.value), self.key)
            elif vr in TEXT_VRS:
                elem.value = DUMMY[vr]
            elif vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
                elem.value = b""
            else:
                elem.value = 0


def _identifying_values(ds: Dataset) -> set[str]:
    """Words and values of the header's PHI (every text attribute the table does not keep)."""
    out: set[str] = set()
    for elem in ds.iterall():
        if elem.tag.is_private or elem.VR not in TEXT_VRS or elem.VR in ("CS", "DS", "IS", "AS", "TM"):
            continue
        action = SUPPLEMENT.get(elem.tag) or profile_action(int(elem.tag))
        if action is None or RESOLVE[action] in ("U", "U*"):
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        for v in values:
            text = str(v or "")
            if elem.VR in ("DA", "DT"):
                if len(text) >= 8:
                    out.add(text[:8])
                continue
            out |= {
                w.lower()
                for w in re.split(r"[\s^,./\-()]+", text)
                if len(w) >= 4 and not w.isdigit() or (w.isdigit() and len(w) >= 5)
            }
    return out - {"anonymized", "anonymous", "none", "unknown", "left", "right", "chest"}


def _remaining_phi(ds: Dataset, values: set[str]) -> list[str]:
    hits = []
    if not values:
        return hits
    for elem in ds.iterall():
        if elem.VR not in TEXT_VRS or elem.tag in (Tag("PatientIdentityRemoved"), Tag("DeidentificationMethod")):
            continue
        for v in elem.value if elem.VM > 1 else [elem.value]:
            words = {w.lower() for w in re.split(r"[\s^,./\-()]+", str(v or "")) if w}
            if words & values or (elem.VR in ("DA", "DT") and str(v or "")[:8] in values):
                hits.append(elem.keyword or str(elem.tag))
    return hits


def deidentify_dataset(
    ds: Dataset,
    key: bytes | str,
    dates: Literal["remove", "shift"] = "remove",
    max_shift_days: int = 365,
    device: Literal["remove", "keyed"] = "remove",
) -> tuple[Dataset, list[str]]:
    """De-identify `ds` in place per Table E.1-1 (recursively); returns (ds, flags).

    Flags: "burned_in_annotation" (the header says YES), "burned_in_annotation_unknown" (the
    attribute is missing), "secondary_capture" (a screen capture, often with text in pixels),
    "phi_remaining:<attribute>" (an identifying header value still present: do not release).
    """
    key = key.encode() if isinstance(key, str) else key
    flags: list[str] = []
    burned = str(ds.get("BurnedInAnnotation", "")).upper()
    if burned == "YES":
        flags.append("burned_in_annotation")
    elif burned != "NO":
        flags.append("burned_in_annotation_unknown")
    if str(ds.get("Modality", "")).upper() in ("SC", "OT") or "SECONDARY" in [
        str(v).upper() for v in ds.get("ImageType", []) or []
    ]:
        flags.append("secondary_capture")

    original_id = str(ds.get("PatientID", "")) or str(ds.get("PatientName", ""))
    identifying = _identifying_values(ds)
    if dates == "shift":
        # the shifted dates must not be taken for leaked originals
        identifying = {v for v in identifying if not re.fullmatch(r"\d{8}", v)} | {
            str(ds.get("PatientBirthDate", ""))[:8]
        } - {""}
    run = _Run(key, dates, device, patient_shift_days(key, original_id, max_shift_days), original_id)
    run.apply(ds)
    if "PatientID" not in ds:
        ds.PatientID = "PID" + keyed_hex(key, "patient", original_id, n=12).upper()
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = remap_uid(str(ds.file_meta.MediaStorageSOPInstanceUID), key)

    ds.PatientIdentityRemoved = "YES"
    method = "cxrsynth PS3.15 E.1-1 basic profile"
    if dates == "shift":
        method += ", dates shifted"
    if device == "keyed":
        method += ", device identity keyed"
    ds.DeidentificationMethod = method
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if dates == "shift" else "REMOVED"
    codes = [("113100", "Basic Application Confidentiality Profile")]
    if dates == "shift":
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    flags += [f"phi_remaining:{k}" for k in sorted(set(_remaining_phi(ds, identifying)))]
    return ds, flags
