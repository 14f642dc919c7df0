"""PS3.15 Table E.1-1 applied in full and recursively; `cxrsynth deid dicom` on a folder of files."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from cxrsynth.cli import main
from cxrsynth.privacy.deid.dicom import RESOLVE, action_table, deidentify_dataset, profile_action

KEY = b"site-secret-for-tests-0123456789"
STUDY_UID = "1.3.6.1.4.1.9590.100.1.2.77"
SOP_UID = "1.3.6.1.4.1.9590.100.1.2.77.1.1"


def person(name: str, code: str) -> Dataset:
    item = Dataset()
    item.PersonName = name
    ident = Dataset()
    ident.CodeValue, ident.CodingSchemeDesignator, ident.CodeMeaning = code, "L", name
    item.PersonIdentificationCodeSequence = Sequence([ident])
    item.InstitutionName = "Wishard Memorial Hospital"
    return item


def nested_phi_file(burned: str | None = "NO") -> Dataset:
    """A DX header with PHI at the top, in nested sequences, in private tags and in SR content."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, SOP_UID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, STUDY_UID + ".1"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "QUINTERO^ANOUK", "7734120", "19380502"
    ds.AccessionNumber, ds.StudyDate, ds.StudyTime, ds.Modality = "RAD-2019-55812", "20190611", "083512", "DX"
    ds.CassetteID, ds.PlateID, ds.DetectorID, ds.DeviceSerialNumber = "CAS-99121", "PLT-44120", "DET-5521A", "SN-88123"
    ds.AdmittingDate, ds.CurrentPatientLocation, ds.RequestingService = (
        "20190610",
        "Ward 7B Okafor wing",
        "Cardiology Okafor",
    )
    ds.AcquisitionComments, ds.PatientState = "patient Quintero anxious", "sedated by Dr Szabo"
    ds.ReferringPhysicianIdentificationSequence = Sequence([person("SZABO^BOGDAN", "SZ1234")])
    ds.OperatorIdentificationSequence = Sequence([person("MWANGI^IMANI", "MW5678")])
    ds.PerformingPhysicianIdentificationSequence = Sequence([person("TAKAHASHI^KEIKO", "TK9012")])
    inst = Dataset()
    inst.CodeValue, inst.CodingSchemeDesignator, inst.CodeMeaning = "WSH01", "L", "Wishard Memorial Hospital"
    ds.InstitutionCodeSequence = Sequence([inst])
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "RP-7734120", "SPS-7734120"
    request.add_new(0x00091010, "LO", "vendor note Quintero")  # a private tag inside a sequence item
    request.ReferencedStudySequence = Sequence([Dataset()])
    request.ReferencedStudySequence[0].ReferencedSOPInstanceUID = STUDY_UID
    ds.RequestAttributesSequence = Sequence([request])
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = DigitalXRayImageStorageForPresentation, SOP_UID + "9"
    ds.ReferencedImageSequence = Sequence([ref])
    text = Dataset()
    text.ValueType, text.TextValue = "TEXT", "Seen by Dr Szabo on 11 June for Quintero"
    author = Dataset()
    author.ValueType, author.PersonName = "PNAME", "GALLAGHER^DECLAN"
    ds.ContentSequence = Sequence([text, author])
    ds.add_new(0x00291010, "LO", "private Quintero 7734120")
    ds.add_new(0x60003000, "OW", b"\x00" * 8)  # overlay data
    ds.add_new(0x60004000, "LT", "overlay comment Quintero")
    if burned is not None:
        ds.BurnedInAnnotation = burned
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 16, 12, 11
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = np.array([[1, 2], [3, 4]], dtype=np.uint16).tobytes()
    return ds


PHI = (
    "QUINTERO",
    "Quintero",
    "ANOUK",
    "7734120",
    "19380502",
    "RAD-2019",
    "20190611",
    "20190610",
    "CAS-99121",
    "PLT-44120",
    "DET-5521A",
    "SN-88123",
    "Okafor",
    "Szabo",
    "SZABO",
    "SZ1234",
    "MWANGI",
    "TAKAHASHI",
    "Wishard",
    "WSH01",
    "GALLAGHER",
    STUDY_UID,
)


def test_nested_sequences_private_tags_and_content_come_out_clean(tmp_path):
    ds, flags = deidentify_dataset(nested_phi_file(), KEY)
    assert flags == []
    path = tmp_path / "out.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    dump = str(back) + str(back.file_meta)
    for phi in PHI:
        assert phi not in dump, phi
    assert not any(e.tag.is_private for e in back.iterall())
    assert (0x6000, 0x3000) not in back and (0x6000, 0x4000) not in back
    assert back.pixel_array.tolist() == [[1, 2], [3, 4]]
    assert back.PatientIdentityRemoved == "YES" and back.LongitudinalTemporalInformationModified == "REMOVED"
    # references keep pointing at the same (remapped) instances: the same keyed map as the top level
    ref = back.ReferencedImageSequence[0]
    again, _ = deidentify_dataset(nested_phi_file(), KEY)
    assert (
        ref.ReferencedSOPInstanceUID.startswith("2.25.")
        and ref.ReferencedSOPClassUID == DigitalXRayImageStorageForPresentation
    )
    assert again.SOPInstanceUID == back.SOPInstanceUID != SOP_UID


def test_dates_shift_per_patient_and_device_identity_keyed():
    a, _ = deidentify_dataset(nested_phi_file(), KEY, dates="shift", device="keyed")
    b, _ = deidentify_dataset(nested_phi_file(), KEY, dates="shift", device="keyed")
    assert a.StudyDate not in ("", "20190611") and len(a.StudyDate) == 8 and a.StudyDate == b.StudyDate
    assert a.StudyTime == "083512"  # a time of day names no date
    assert a.PatientBirthDate == ""  # still emptied under the modified-dates option
    shift_study = (pydicom.valuerep.DA(a.StudyDate) - pydicom.valuerep.DA("20190611")).days
    assert (
        pydicom.valuerep.DA(a.AdmittingDate) - pydicom.valuerep.DA("20190610")
    ).days == shift_study  # intervals survive
    assert (
        a.DeviceSerialNumber.startswith("DEV")
        and a.DeviceSerialNumber == b.DeviceSerialNumber
        and "88123" not in a.DeviceSerialNumber
    )
    assert [c.CodeValue for c in a.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"


def test_the_issue_attributes_are_in_the_profile_table():
    for kw in (
        "ReferringPhysicianIdentificationSequence",
        "OperatorIdentificationSequence",
        "PerformingPhysicianIdentificationSequence",
        "CassetteID",
        "PlateID",
        "DetectorID",
        "AdmittingDate",
        "CurrentPatientLocation",
        "InstitutionCodeSequence",
        "AcquisitionComments",
        "ContentSequence",
        "RequestingService",
        "PatientState",
        "PatientName",
        "StudyInstanceUID",
    ):
        tag = pydicom.datadict.tag_for_keyword(kw)
        assert profile_action(tag) not in (None, "K"), kw


def _value(vr: str, tag: int):
    if vr == "SQ":
        item = Dataset()
        item.PatientName = "MARKER^PHI"
        item.add_new(0x00091010, "LO", "MARKER private")
        return Sequence([item])
    return {
        "DA": "20210314",
        "TM": "101010",
        "DT": "20210314101010",
        "PN": "MARKER^PHI",
        "UI": "1.2.3.4.5.6.7",
        "IS": "123",
        "DS": "1.5",
        "AS": "045Y",
        "CS": "MARKER",
        "US": 7,
        "SS": 7,
        "UL": 7,
        "SL": 7,
        "FL": 1.5,
        "FD": 1.5,
        "SV": 7,
        "UV": 7,
        "AT": 0x00100010,
    }.get(vr, b"\x01\x02" if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") else "MARKER")


SERIES_SEQUENCE = 0x00081115  # Referenced Series Sequence: not in the table, kept, so its items are walked


def test_every_attribute_of_table_e11_is_handled_at_top_level_and_inside_a_sequence():
    """Walks Table E.1-1: each attribute with a plain value, set on its own and inside a sequence
    item, comes out removed, emptied, replaced or remapped as its action says."""
    exact, masked = action_table()
    assert len(exact) >= 600 and len(masked) >= 3
    assert profile_action(SERIES_SEQUENCE) is None
    walked = 0
    for tag, code in sorted(exact.items()):
        try:
            vr = dictionary_VR(tag).split(" ")[0]
        except KeyError:
            continue  # newer than pydicom's dictionary: covered by the tag lookup, not settable by name
        action = RESOLVE[code]
        original = _value(vr, tag)
        for nested in (False, True):
            ds = Dataset()
            ds.PatientID = "P-1"
            holder = ds
            if nested:
                if tag == SERIES_SEQUENCE:
                    continue
                holder = Dataset()
                ds.add_new(SERIES_SEQUENCE, "SQ", Sequence([holder]))
            holder.add_new(tag, vr, original)
            deidentify_dataset(ds, KEY)
            if nested:
                holder = ds.ReferencedSeriesSequence[0]
            name = keyword_for_tag(tag) or hex(tag)
            if tag == 0x00100020:
                assert holder[tag].value.startswith("PID"), name
            elif action == "X":
                assert tag not in holder, (name, code)
            elif action == "Z":
                assert tag in holder and not holder[tag].value, (name, code)
            elif action in ("U", "U*") and vr == "UI":
                assert holder[tag].value.startswith("2.25."), (name, code)
            elif vr == "SQ":  # D or U* on a sequence: its items cleaned by the same table
                assert all("PatientName" not in item or not item.PatientName for item in holder[tag].value), name
                assert not any(e.tag.is_private for item in holder[tag].value for e in item), name
            elif action == "D":
                assert holder[tag].value != original, (name, code)
            else:
                pytest.fail(f"{name}: action {code} not checked")
            walked += 1
    assert walked >= 2 * 550


def write_folder(root, n=2):
    for i in range(n):
        ds = nested_phi_file()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SOP_UID}.{i}"
        (root / f"pt{i}").mkdir(parents=True)
        ds.save_as(root / f"pt{i}" / "img.dcm", enforce_file_format=True)
    burned = nested_phi_file(burned="YES")
    burned.save_as(root / "burned.dcm", enforce_file_format=True)
    (root / "notes.txt").write_text("not an image, Quintero")


def test_cli_deid_dicom_writes_one_clean_file_per_input_and_fails_closed(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    write_folder(src)
    (tmp_path / "s.key").write_text("x" * 32)
    cfg = tmp_path / "deid.yaml"
    cfg.write_text(f"secret_file: {tmp_path / 's.key'}\ndicom_dates: shift\n")
    assert main(["deid", "dicom", "--in", str(src), "--out", str(out), "--config", str(cfg)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["pt0/img.dcm", "pt1/img.dcm"]  # burned-in and non-DICOM inputs are quarantined
    for p in out.rglob("*.dcm"):
        back = pydicom.dcmread(p)
        assert back.pixel_array.tolist() == [[1, 2], [3, 4]]
        assert not any(phi in str(back) for phi in PHI)
    log = [json.loads(line) for line in (tmp_path / "out.audit.jsonl").read_text().splitlines()]
    assert (
        log[0]["kind"] == "run"
        and log[0]["files"] == 4
        and log[0]["quarantined"] == 2
        and log[0]["secret_source"] == "file"
    )
    reasons = sorted(r["reason"] for r in log[1:] if r["status"] == "quarantined")
    assert reasons[0].startswith("not a readable DICOM file") and "burned_in_annotation" in reasons[1]
    assert (
        "Quintero" not in (tmp_path / "out.audit.jsonl").read_text()
        and "pt0" not in (tmp_path / "out.audit.jsonl").read_text()
    )
    assert main(["deid", "dicom", "--in", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert main(["deid", "dicom", "--in", str(src), "--out", str(src / "sub")]) == 2
