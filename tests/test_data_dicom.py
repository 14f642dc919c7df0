"""DICOM folder loader: windowing, MONOCHROME1, views, PHI kept apart; pydicom's own test files."""

import json
import shutil

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrsynth.cli import main
from cxrsynth.data.dataset import read_dataset, read_phi_headers
from cxrsynth.data.dicom import read_dicom_folder, to_uint8
from cxrsynth.errors import InputError

KEY = b"k" * 32
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dx(
    path,
    pixels,
    *,
    view="PA",
    study="1.2.3.4",
    patient="MRN001",
    photometric="MONOCHROME2",
    window=None,
    name="DOE^JANE",
):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study
    ds.Modality = "DX"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, patient, "19300101"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC77", "HOUSE^GREGORY"
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


RAMP = np.tile(np.linspace(0, 4000, 32), (32, 1))


def test_window_and_monochrome1(tmp_path):
    import pydicom

    write_dx(tmp_path / "w.dcm", RAMP, window=(1000, 200))
    img = to_uint8(pydicom.dcmread(tmp_path / "w.dcm"))
    assert img[0, RAMP[0] < 850].max() == 0 and img[0, RAMP[0] > 1150].min() == 255
    write_dx(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1")
    inv = to_uint8(pydicom.dcmread(tmp_path / "m1.dcm"))
    assert inv[0, 0] == 255 and inv[0, -1] == 0  # high values are dark in MONOCHROME1


def test_folder_pairs_views_by_study_and_keeps_phi_apart(tmp_path):
    write_dx(tmp_path / "a/pa.dcm", RAMP, view="PA", study="1.1")
    write_dx(tmp_path / "a/lat.dcm", RAMP.T, view="LL", study="1.1")
    (tmp_path / "a/pa.txt").write_text(
        "FINDINGS: Small left pleural effusion. No pneumothorax.\nIMPRESSION: Effusion.", encoding="utf-8"
    )
    write_dx(tmp_path / "b/ap.dcm", RAMP, view="AP", study="2.2", patient="MRN002", name="ROE^RICHARD")
    recs, report = read_dicom_folder(tmp_path, key=KEY, site="h1")
    assert report.skipped == 0 and len(recs) == 2
    a = next(r for r in recs if r.lateral is not None)
    b = next(r for r in recs if r.lateral is None)
    assert a.view == "PA" and b.view == "AP"
    assert a.labels["Pleural Effusion"] == 1 and a.labels["Pneumothorax"] == 0 and a.impression == "Effusion."
    assert a.phi_meta == {
        "PatientName": "DOE^JANE",
        "PatientID": "MRN001",
        "AccessionNumber": "ACC77",
        "PatientBirthDate": "19300101",
        "ReferringPhysicianName": "HOUSE^GREGORY",
    }
    assert "MRN001" not in a.patient_id and a.patient_id != b.patient_id
    again, _ = read_dicom_folder(tmp_path, key=KEY)
    other, _ = read_dicom_folder(tmp_path, key=b"x" * 32)
    assert sorted(r.patient_id for r in again) == sorted(r.patient_id for r in recs)
    assert not {r.patient_id for r in other} & {r.patient_id for r in recs}  # keyed pseudonyms


def test_pydicom_test_files_read_and_broken_files_reported(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small_RLE.dcm"), tmp_path / "mr_rle.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 10 + b"definitely not dicom")
    recs, report = read_dicom_folder(tmp_path, key=KEY)
    assert len(recs) == 2 and all(r.image.dtype == np.uint8 and r.image.std() > 10 for r in recs)
    assert all(r.phi_meta.get("PatientName") for r in recs)
    assert [p.file.split("/")[-1] for p in report.problems] == ["junk.dcm"]
    assert "unreadable DICOM" in report.problems[0].reason
    with pytest.raises(InputError, match="junk.dcm"):
        read_dicom_folder(tmp_path, key=KEY, strict=True)


def test_ingest_dicom_writes_no_phi_to_manifest(tmp_path):
    write_dx(tmp_path / "in/pa.dcm", RAMP, view="PA", study="1.1", name="DOE^JANE")
    out = tmp_path / "out"
    assert (
        main(
            [
                "--quiet",
                "data",
                "ingest",
                "--source",
                "dicom",
                "--path",
                str(tmp_path / "in"),
                "--out",
                str(out),
                "--size",
                "16",
            ]
        )
        == 0
    )
    manifest = (out / "manifest.csv").read_text()
    assert "DOE" not in manifest and "MRN001" not in manifest and "ACC77" not in manifest
    recs, _ = read_dataset(out)
    assert recs[0].image.shape == (16, 16)
    assert read_phi_headers(out)[recs[0].record_id]["PatientID"] == "MRN001"
    assert json.loads((out / "ingest_report.json").read_text())["kept"] == 1


def test_a_folder_is_read_one_file_at_a_time_and_written_from_its_files(tmp_path, monkeypatch, decoded):
    """Each file is decoded once to check it and let go (only the header PHI is kept); a study's
    files are read again when it is written, a file that stopped decoding meanwhile is a skipped
    study named by its file."""
    import cxrsynth.data.dicom as dicom
    from cxrsynth.data.ingest import ingest

    for k in range(6):
        write_dx(tmp_path / f"in/{k}/pa.dcm", RAMP + 50 * k, view="PA", study=f"1.{k}", patient=f"MRN{k}")
        write_dx(tmp_path / f"in/{k}/lat.dcm", RAMP.T, view="LL", study=f"1.{k}", patient=f"MRN{k}")
    (tmp_path / "in/2/pa.txt").write_text("FINDINGS: Small right pneumothorax.\nIMPRESSION: Pneumothorax.")
    decoded.watch(dicom, "to_uint8")
    studies, report = read_dicom_folder(tmp_path / "in", key=KEY, site="h1")
    assert report.kept == len(studies) == 6 and decoded["total"] == 12 and not decoded.alive()  # none kept
    by_phi = {s.phi_meta["PatientID"]: s for s in studies}
    assert by_phi["MRN2"].labels["Pneumothorax"] == 1 and by_phi["MRN2"].impression == "Pneumothorax."
    assert by_phi["MRN3"].image.shape == (32, 32) and by_phi["MRN3"].lateral is not None
    read = dicom.read_dicom_folder

    def then_truncate(*args, **kwargs):
        out = read(*args, **kwargs)
        (tmp_path / "in/4/pa.dcm").write_bytes((tmp_path / "in/4/pa.dcm").read_bytes()[:200])
        return out

    monkeypatch.setattr(dicom, "read_dicom_folder", then_truncate)
    ingest("dicom", tmp_path / "in", tmp_path / "out", site="h1")
    back, _ = read_dataset(tmp_path / "out")
    phi = read_phi_headers(tmp_path / "out")
    assert sorted(phi[r.record_id]["PatientID"] for r in back) == ["MRN0", "MRN1", "MRN2", "MRN3", "MRN5"]
    rep = json.loads((tmp_path / "out/ingest_report.json").read_text())
    assert rep["kept"] == 5 and [p["file"].rsplit("/", 2)[-2:] for p in rep["problems"]] == [["4", "pa.dcm"]]
    assert "unreadable DICOM" in rep["problems"][0]["reason"]
