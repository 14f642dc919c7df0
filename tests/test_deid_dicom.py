"""DICOM header de-identification (basic profile): PHI attributes gone, UIDs remapped consistently."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from cxrsynth.privacy.deid import deidentify_dataset

KEY = b"site-secret-for-tests-0123456789"


def make_ds(sop_uid: str, burned: str | None = "NO") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.3.6.1.4.1.9590.100.1.2.1234"
    ds.SeriesInstanceUID = "1.3.6.1.4.1.9590.100.1.2.1234.1"
    ds.PatientName = "VANTERPOOL^ODESSA"
    ds.PatientID = "0044921"
    ds.PatientBirthDate = "19310407"
    ds.PatientAddress = "55 Fruit Street, Boston"
    ds.PatientAge = "092Y"
    ds.AccessionNumber = "RAD-2021-004512"
    ds.ReferringPhysicianName = "QUIST^ALDER"
    ds.InstitutionName = "St Mary's Hospital"
    ds.OperatorsName = "LOWELL^B"
    ds.StudyDate = "20210314"
    ds.StudyDescription = "CXR for Odessa"
    ds.Modality = "DX"
    if burned is not None:
        ds.BurnedInAnnotation = burned
    ds.add_new(0x00291010, "LO", "private vendor note: Vanterpool")
    ds.add_new(0x60003000, "OW", b"\x00" * 8)  # overlay data
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = np.arange(4, dtype=np.uint16).tobytes()
    return ds


def test_basic_profile_removes_phi_and_survives_a_write(tmp_path):
    ds, flags = deidentify_dataset(make_ds("1.3.6.1.4.1.9590.100.1.2.1234.1.1"), KEY)
    assert flags == []
    path = tmp_path / "out.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    dump = str(back) + str(back.file_meta)
    for phi in (
        "VANTERPOOL",
        "ODESSA",
        "0044921",
        "19310407",
        "Fruit",
        "092Y",
        "RAD-2021",
        "QUIST",
        "Mary",
        "LOWELL",
        "20210314",
        "Odessa",
    ):
        assert phi not in dump, phi
    assert back.PatientIdentityRemoved == "YES"
    assert back.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert (0x0029, 0x1010) not in back and (0x6000, 0x3000) not in back
    assert back.SOPClassUID == CTImageStorage  # well-known UIDs identify nobody and stay
    assert back.pixel_array.tolist() == [[0, 1], [2, 3]]


def test_uids_remapped_consistently_across_files_and_keys():
    a, _ = deidentify_dataset(make_ds("1.3.6.1.4.1.9590.100.1.2.1234.1.1"), KEY)
    b, _ = deidentify_dataset(make_ds("1.3.6.1.4.1.9590.100.1.2.1234.1.2"), KEY)
    c, _ = deidentify_dataset(make_ds("1.3.6.1.4.1.9590.100.1.2.1234.1.1"), b"another-site-secret-0123456789ab")
    assert a.StudyInstanceUID == b.StudyInstanceUID != "1.3.6.1.4.1.9590.100.1.2.1234"
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SOPInstanceUID == a.file_meta.MediaStorageSOPInstanceUID
    assert a.StudyInstanceUID.startswith("2.25.") and len(a.StudyInstanceUID) <= 64
    assert c.StudyInstanceUID != a.StudyInstanceUID
    assert a.PatientID == b.PatientID != "0044921"  # one patient, one pseudonym


def test_burned_in_annotation_is_flagged_and_dates_can_shift():
    _, flags = deidentify_dataset(make_ds("1.2.3.4", burned="YES"), KEY)
    assert "burned_in_annotation" in flags
    _, flags = deidentify_dataset(make_ds("1.2.3.4", burned=None), KEY)
    assert "burned_in_annotation_unknown" in flags
    ds, _ = deidentify_dataset(make_ds("1.2.3.4"), KEY, dates="shift")
    assert ds.StudyDate not in ("", "20210314") and len(ds.StudyDate) == 8
    assert ds.DeidentificationMethodCodeSequence[1].CodeValue == "113107"


def test_dicom_and_report_dates_move_together():
    from cxrsynth.privacy.deid import DeidConfig
    from cxrsynth.privacy.deid.deidentifier import cached_deidentifier

    deid = cached_deidentifier(DeidConfig(dicom_dates="shift"))
    ds, _ = deid.deidentify_dicom(make_ds("1.2.3.4"))
    text = deid.deidentify_text("Study of 2021-03-14.", {"PatientID": "0044921"}).text
    assert text == f"Study of {ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}."
