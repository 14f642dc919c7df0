"""DICOM header de-identification per the Basic Application Level Confidentiality Profile.

DICOM PS3.15 Annex E, Table E.1-1: each attribute is replaced with a dummy value (D), emptied (Z),
removed (X) or, for UIDs (U), replaced consistently. UIDs become `2.25.<keyed hash>` (PS3.5 B.2,
UUID-derived UIDs), so one original UID maps to one new UID across a site's files and nobody
without the site secret can reverse it. Private tags, overlays and curves are removed (E.1-1:
"private attributes: X", overlay data and comments: X). Pixel data is not inspected: an image
whose header says burned-in annotation is present (or does not say) is flagged, for the caller
to quarantine.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import pydicom
from pydicom.dataset import Dataset

from privacy.deid.keys import keyed, keyed_hex, patient_shift_days

# Attributes of Table E.1-1 (the common ones in radiography headers) and their basic-profile action.
DUMMY = {  # D: replaced with a non-identifying value of the same VR
    "PatientName": "ANONYMOUS",
    "PatientID": None,  # keyed per patient, filled below
    "InstitutionName": "",
    "StationName": "",
    "ContentCreatorName": "",
}
EMPTY = (  # Z: kept, zero length
    "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDate", "StudyTime",
    "ContentDate", "ContentTime", "Manufacturer",
)
REMOVE = (  # X: removed
    "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PhysiciansOfRecord", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "PatientAddress", "PatientTelephoneNumbers", "PatientAge", "PatientSize", "PatientWeight", "MedicalRecordLocator",
    "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments", "PatientBirthTime", "MilitaryRank",
    "BranchOfService", "CountryOfResidence", "RegionOfResidence", "PatientInsurancePlanCodeSequence", "PatientReligiousPreference",
    "MedicalAlerts", "Allergies", "PregnancyStatus", "LastMenstrualDate", "SmokingStatus", "ResponsiblePerson",
    "ResponsibleOrganization", "StudyDescription", "SeriesDescription", "ImageComments", "RequestedProcedureDescription",
    "AdmittingDiagnosesDescription", "AdmissionID", "IssuerOfAdmissionID", "PerformedProcedureStepDescription",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "ScheduledProcedureStepID",
    "RequestAttributesSequence", "ReferencedPatientSequence", "ReferencedStudySequence", "DeviceSerialNumber",
    "ProtocolName", "SeriesDate", "AcquisitionDate", "SeriesTime", "AcquisitionTime", "AcquisitionDateTime", "OverlayDate",
    "OverlayTime", "CurveDate", "CurveTime", "InterpretationAuthor", "TextComments", "DerivationDescription",
    "ReasonForTheRequestedProcedure", "RequestedProcedureID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "PersonName", "VerifyingObserverName",
    "ScheduledPerformingPhysicianName", "ReviewerName", "DigitalSignaturesSequence", "IssuerOfPatientID",
)
DATES = ("StudyDate", "ContentDate", "SeriesDate", "AcquisitionDate")
# Well-known UIDs (SOP classes, transfer syntaxes) live under the DICOM root and identify nothing.
DICOM_ROOT = "1.2.840.10008."


def remap_uid(uid: str, key: bytes) -> str:
    if not uid or uid.startswith(DICOM_ROOT):
        return uid
    return "2.25." + str(int.from_bytes(keyed(key, "uid", uid)[:16], "big"))


def _remap_uids(ds: Dataset, key: bytes) -> None:
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            if elem.VM > 1:
                elem.value = [remap_uid(str(v), key) for v in elem.value]
            else:
                elem.value = remap_uid(str(elem.value), key)


def _shift(value: str, days: int) -> str:
    try:
        return (datetime.strptime(value, "%Y%m%d") + timedelta(days=days)).strftime("%Y%m%d")
    except ValueError:
        return ""


def deidentify_dataset(
    ds: Dataset, key: bytes | str, dates: Literal["remove", "shift"] = "remove", max_shift_days: int = 365
) -> tuple[Dataset, list[str]]:
    """De-identify `ds` in place per the basic profile; returns (ds, flags).

    Flags: "burned_in_annotation" (the header says YES), "burned_in_annotation_unknown" (the
    attribute is missing), "secondary_capture" (a screen capture, often with text in pixels).
    """
    key = key.encode() if isinstance(key, str) else key
    flags: list[str] = []
    burned = str(ds.get("BurnedInAnnotation", "")).upper()
    if burned == "YES":
        flags.append("burned_in_annotation")
    elif burned != "NO":
        flags.append("burned_in_annotation_unknown")
    if str(ds.get("Modality", "")).upper() in ("SC", "OT") or "SECONDARY" in [str(v).upper() for v in ds.get("ImageType", [])]:
        flags.append("secondary_capture")

    original_id = str(ds.get("PatientID", "")) or str(ds.get("PatientName", ""))
    shift = patient_shift_days(key, original_id, max_shift_days)
    shifted = {k: _shift(str(ds.get(k, "")), shift) for k in DATES if dates == "shift" and ds.get(k)}

    ds.remove_private_tags()
    for elem in list(ds):
        if 0x5000 <= elem.tag.group <= 0x50FF or (0x6000 <= elem.tag.group <= 0x60FF and elem.tag.element in (0x3000, 0x4000)):
            del ds[elem.tag]  # curves; overlay data and overlay comments
    for name in REMOVE:
        if name in ds:
            delattr(ds, name)
    for name in EMPTY:
        if name in ds:
            setattr(ds, name, "")
    for name, value in DUMMY.items():
        if name in ds or name in ("PatientName", "PatientID"):
            setattr(ds, name, value if value is not None else "PID" + keyed_hex(key, "patient", original_id, n=12).upper())
    for name, value in shifted.items():
        setattr(ds, name, value)
    _remap_uids(ds, key)
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = remap_uid(str(ds.file_meta.MediaStorageSOPInstanceUID), key)

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "cxrsynth basic profile" + (" (dates shifted)" if dates == "shift" else "")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", "Basic Application Confidentiality Profile"
    codes = [code]
    if dates == "shift":
        mod = Dataset()
        mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = "113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"
        codes.append(mod)
    ds.DeidentificationMethodCodeSequence = pydicom.Sequence(codes)
    return ds, flags
