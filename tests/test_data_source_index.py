"""A MIMIC tree and a DICOM folder are read through an on-disk index (`cxrsynth.data.index`):
what reading keeps a study lies in a private SQLite file, which is gone after the ingest, and the
ingest writes what it wrote when reading kept every study in memory."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from functools import partial

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrsynth.data.dataset import read_dataset
from cxrsynth.data.ingest import SECRET, ingest
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import LABELS

KEY = b"k" * 32
RAMP = np.tile(np.linspace(0, 4000, 32), (32, 1))


def dicom_folder(root):
    """A folder whose files sort as their whole paths do, not folder by folder ("c-d/" before
    "c.dcm" before "c/"), with a study that has an AP then two PAs and two reports (the first PA
    and the last report count), one whose first file's report is not UTF-8, one of laterals only,
    one without study uid or patient id, unreadable files, a hidden one, and links."""
    from test_data_dicom import write_dx

    made = []

    def dx(rel, view, study, patient="MRN1", name="DOE^JANE"):
        made.append(rel)
        write_dx(root / rel, np.roll(RAMP, 3 * len(made), axis=1), view=view, study=study, patient=patient, name=name)

    dx("b/ap1.dcm", "AP", "1.5", "MRN5", "ROE^RICHARD")
    (root / "b/ap1.txt").write_text("FINDINGS: Small left pleural effusion.\nIMPRESSION: Effusion.", encoding="utf-8")
    dx("b/lat.dcm", "LL", "1.5", "MRN5")
    dx("b/lat2.dcm", "LATERAL", "1.5", "MRN5")
    dx("b/pa2.dcm", "PA", "1.5", "MRN5")
    dx("b/pa3.dcm", "PA", "1.5", "MRN5")
    (root / "b/pa3.txt").write_text("FINDINGS: Right pneumothorax.\nIMPRESSION: Pneumothorax.", encoding="utf-8")
    dx("a/x.dcm", "AP", "1.10", "MRN10", "POE^EDGAR")
    (root / "a/x.txt").write_bytes(b"FINDINGS: caf\xe9 \xff effusion.\n")
    dx("a/y.dcm", "PA", "1.10", "MRN10", "POE^EDGAR")
    dx("c-d/lat.dcm", "LL", "2.0", "MRN20")
    dx("c/lat.dcm", "LATERAL", "2.0", "MRN20")
    for junk in ("c-d/junk.dcm", "c.dcm", "c/junk.dcm", ".hidden.dcm"):
        (root / junk).write_bytes(b"\x00" * 10 + b"definitely not dicom")
    dx("d/noview.dcm", None, "9.9", "", "NOID^NED")
    ds = pydicom.dcmread(root / "d/noview.dcm")
    del ds.StudyInstanceUID
    ds.save_as(root / "d/noview.dcm")
    for ignored in ("notes.txt", "meta.json", "d/README.md"):
        (root / ignored).write_text("not an image", encoding="utf-8")
    os.symlink(root / "b/pa2.dcm", root / "link.dcm")  # a link to a file is read
    os.symlink(root / "b", root / "zlink")  # a link to a folder is not followed


def mimic_tree(root):
    """The broken tree of test_data_mimic, and studies in a folder that sorts before p10 as a
    path ("p10-a/"), without a CheXpert row, with an image the metadata does not list, without a
    report file, an image listed twice (the last row counts), and entries that are no study."""
    from test_data_mimic import build_tree

    build_tree(root, broken=True)
    recs = make_phantom(4, sites=1, seed=9, image_size=32)
    studies = {
        "p10-a/p10000009/s50000009": [("d9a", "PA", recs[0].image)],
        "p11/p11000001/s50000011": [("d11a", None, recs[1].image), ("d11b", "LATERAL", recs[1].image.T)],
        "p11/p11000001/s50000012": [("d12a", "PA", recs[2].image)],
    }
    with (
        open(root / "mimic-cxr-2.0.0-metadata.csv", "a", newline="") as m,
        open(root / "mimic-cxr-2.0.0-split.csv", "a", newline="") as s,
    ):
        meta, split = csv.writer(m), csv.writer(s)
        meta.writerow(["d12a", "11000001", "50000012", "LATERAL"])
        split.writerow(["d12a", "50000012", "11000001", "train"])
        for rel, images in studies.items():
            d = root / "files" / rel
            d.mkdir(parents=True)
            for dicom_id, view, image in images:
                Image.fromarray(image).save(d / f"{dicom_id}.jpg", quality=95)
                if view:
                    meta.writerow([dicom_id, rel.split("/")[1][1:], rel.split("/")[2][1:], view])
                    split.writerow([dicom_id, rel.split("/")[2][1:], rel.split("/")[1][1:], "test"])
    for rel in ("p10-a/p10000009/s50000009", "p11/p11000001/s50000011"):
        (root / "files" / f"{rel}.txt").write_text("FINDINGS: Cardiomegaly.\nIMPRESSION: Enlarged heart.")
    (root / "files/p11/p11000001/s5x").mkdir()
    (root / "files/p11/p11000001/s50000013").write_text("a file, not a study folder")


def ingested(source, tree, out):
    """What an ingest of `tree` wrote (with the site key KEY), paths relative to `tree`."""
    out.mkdir()
    (out / SECRET).write_bytes(KEY)
    ingest(source, tree, out, site="h1", replace=True)
    rows = [
        (r.record_id, r.patient_id, r.study_id, r.split, r.view, r.report[:40], _codes(r.labels))
        + (_hash(r.image), _hash(r.lateral))
        for r in read_dataset(out)[0]
    ]
    report = json.loads((out / "ingest_report.json").read_text(encoding="utf-8"))
    for entry in report["problems"] + report["warnings"]:
        entry["file"] = os.path.relpath(entry["file"], tree)
    report["path"] = os.path.relpath(report["path"], tree)
    phi = out / "phi_headers.jsonl"
    lines = phi.read_text(encoding="utf-8").splitlines() if phi.is_file() else []
    return {"rows": rows, "report": report, "phi": [json.loads(line) for line in lines]}


def _hash(image) -> str:
    return "" if image is None else hashlib.blake2b(image.tobytes(), digest_size=4).hexdigest()


def _codes(labels: dict) -> str:
    return "".join("." if v is None else "+0-"[1 - v] for v in labels.values())


# What the ingest wrote when reading held every study in memory (commit 4a9a977), captured by
# running `ingested` on that tree's code.
EXPECTED = {
    "dicom": {
        "rows": [
            (
                "r70b9d8701727a35f",
                "p546aa2a6a5ebb94e",
                "s70b9d8701727a35f",
                "holdout",
                "PA",
                "",
                "..............",
                "a394f884",
                "",
            ),
            (
                "r99f0025fb844797f",
                "p80b2384f4f1e0b02",
                "s99f0025fb844797f",
                "train",
                "PA",
                "FINDINGS: Right pneumothorax.\nIMPRESSION",
                "............+.",
                "c9ba3513",
                "29643ed4",
            ),
            (
                "rc09767776adc1272",
                "pf95d6066d0ec7d99",
                "sc09767776adc1272",
                "train",
                "PA",
                "",
                "..............",
                "5a823883",
                "",
            ),
        ],
        "report": {
            "read": 15,
            "kept": 3,
            "skipped": 6,
            "skipped_by_reason": {"unreadable DICOM": 4, "non-UTF-8 text": 1, "no frontal image": 1},
            "problems": [
                {
                    "file": ".hidden.dcm",
                    "row": None,
                    "reason": "unreadable DICOM: InvalidDicomError: File is missing DICOM File Meta Information header or the 'DICM' prefix is missing from the header. Use force=True to fo",
                },
                {
                    "file": "a/x.txt",
                    "row": None,
                    "reason": "report is not UTF-8 text (byte 13, line 1); re-save it as UTF-8",
                },
                {
                    "file": "c-d/junk.dcm",
                    "row": None,
                    "reason": "unreadable DICOM: InvalidDicomError: File is missing DICOM File Meta Information header or the 'DICM' prefix is missing from the header. Use force=True to fo",
                },
                {
                    "file": "c.dcm",
                    "row": None,
                    "reason": "unreadable DICOM: InvalidDicomError: File is missing DICOM File Meta Information header or the 'DICM' prefix is missing from the header. Use force=True to fo",
                },
                {
                    "file": "c/junk.dcm",
                    "row": None,
                    "reason": "unreadable DICOM: InvalidDicomError: File is missing DICOM File Meta Information header or the 'DICM' prefix is missing from the header. Use force=True to fo",
                },
                {
                    "file": "c-d/lat.dcm",
                    "row": None,
                    "reason": "study has no frontal (PA/AP) image; a record needs one",
                },
            ],
            "warnings": [],
            "with_report_text": 1,
            "with_labels": 1,
            "unit": "files",
            "source": "dicom",
            "path": ".",
            "site": "h1",
            "already_in_output": 0,
            "total_in_output": 3,
        },
        "phi": [
            {
                "id": "r70b9d8701727a35f",
                "meta": {
                    "AccessionNumber": "ACC77",
                    "PatientBirthDate": "19300101",
                    "PatientID": "MRN10",
                    "PatientName": "POE^EDGAR",
                    "ReferringPhysicianName": "HOUSE^GREGORY",
                },
            },
            {
                "id": "r99f0025fb844797f",
                "meta": {
                    "AccessionNumber": "ACC77",
                    "PatientBirthDate": "19300101",
                    "PatientID": "MRN5",
                    "PatientName": "ROE^RICHARD",
                    "ReferringPhysicianName": "HOUSE^GREGORY",
                },
            },
            {
                "id": "rc09767776adc1272",
                "meta": {
                    "AccessionNumber": "ACC77",
                    "PatientBirthDate": "19300101",
                    "PatientName": "NOID^NED",
                    "ReferringPhysicianName": "HOUSE^GREGORY",
                },
            },
        ],
    },
    "mimic": {
        "rows": [
            (
                "s50000009",
                "p10000009",
                "s50000009",
                "holdout",
                "PA",
                "FINDINGS: Cardiomegaly.\nIMPRESSION: Enla",
                ".+............",
                "5876fcd6",
                "",
            ),
            (
                "s50000001",
                "p10000001",
                "s50000001",
                "train",
                "PA",
                "FINDINGS: Exam 04/21/2016 at 00:20, acce",
                "..+..00...+..-",
                "bde1be1e",
                "f4532f74",
            ),
            ("s50000012", "p11000001", "s50000012", "holdout", "PA", "", "..............", "8d1520f7", ""),
        ],
        "report": {
            "read": 7,
            "kept": 3,
            "skipped": 6,
            "skipped_by_reason": {
                "unknown label value": 1,
                "corrupt image": 1,
                "no frontal image": 2,
                "non-UTF-8 text": 1,
                "image not in metadata": 1,
            },
            "problems": [
                {
                    "file": "mimic-cxr-2.0.0-chexpert.csv",
                    "row": 4,
                    "reason": "unknown label value: column 'Edema': label value 'maybe' is not one of 1, 0, -1 or empty",
                },
                {
                    "file": "files/p10/p10000001/s50000002/d2a.jpg",
                    "row": None,
                    "reason": "image file is corrupt or not an image (UnidentifiedImageError)",
                },
                {
                    "file": "files/p10/p10000001/s50000002",
                    "row": None,
                    "reason": "study has no readable frontal (PA/AP) image",
                },
                {
                    "file": "files/p10/p10000002/s50000003.txt",
                    "row": None,
                    "reason": "report is not UTF-8 text (byte 13, line 1); re-save it as UTF-8",
                },
                {
                    "file": "files/p11/p11000001/s50000011/d11a.jpg",
                    "row": None,
                    "reason": "image not listed in mimic-cxr-2.0.0-metadata.csv; its view is unknown",
                },
                {
                    "file": "files/p11/p11000001/s50000011",
                    "row": None,
                    "reason": "study has no readable frontal (PA/AP) image",
                },
            ],
            "warnings": [
                {
                    "file": "files/p10-a/p10000009/s50000009",
                    "row": None,
                    "reason": "study not in mimic-cxr-2.0.0-chexpert.csv; labels come from the report labeler",
                },
                {
                    "file": "files/p11/p11000001/s50000012.txt",
                    "row": None,
                    "reason": "no report file; the study is kept without report text",
                },
                {
                    "file": "files/p11/p11000001/s50000012",
                    "row": None,
                    "reason": "study not in mimic-cxr-2.0.0-chexpert.csv; labels come from the report labeler",
                },
            ],
            "with_report_text": 2,
            "with_labels": 2,
            "unit": "studies",
            "source": "mimic",
            "path": ".",
            "site": "h1",
            "already_in_output": 0,
            "total_in_output": 3,
        },
        "phi": [],
    },
}


@pytest.mark.parametrize("source", ["dicom", "mimic"])
def test_an_ingest_through_the_index_writes_what_it_wrote_holding_every_study_in_memory(tmp_path, source):
    (tmp_path / "tree").mkdir()
    (dicom_folder if source == "dicom" else mimic_tree)(tmp_path / "tree")
    assert ingested(source, tmp_path / "tree", tmp_path / "out") == EXPECTED[source]


def _index_files(scratch) -> list[str]:
    return sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*"))


def test_the_index_files_are_removed_after_an_ingest_and_when_reading_fails(tmp_path, monkeypatch):
    import tempfile

    import cxrsynth.data.mimic as mimic
    from cxrsynth.data.dicom import read_dicom_folder
    from cxrsynth.errors import InputError

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (tmp_path / "tree").mkdir()
    mimic_tree(tmp_path / "tree")
    seen = []
    load_png = mimic.load_png
    monkeypatch.setattr(mimic, "load_png", lambda path: seen.append(_index_files(scratch)) or load_png(path))
    ingest("mimic", tmp_path / "tree", tmp_path / "out")
    # While the tree is read: its tables and its studies, each in a private folder of its own;
    # while the studies are written, theirs.
    counts = [sum(name.endswith("/index.sqlite") for name in names) for names in seen]
    assert counts[0] == 2 and counts[-1] == 1
    assert _index_files(scratch) == []
    with pytest.raises(InputError, match=r"chexpert\.csv, row 4"):
        mimic.read_mimic(tmp_path / "tree", strict=True)  # on a table row
    assert _index_files(scratch) == []
    chexpert = tmp_path / "tree/mimic-cxr-2.0.0-chexpert.csv"
    chexpert.write_text(chexpert.read_text(encoding="utf-8").replace("maybe", ""), encoding="utf-8")
    with pytest.raises(InputError, match=r"d2a\.jpg"):
        mimic.read_mimic(tmp_path / "tree", strict=True)  # on a study
    assert _index_files(scratch) == []
    (tmp_path / "dicom").mkdir()
    dicom_folder(tmp_path / "dicom")
    ingest("dicom", tmp_path / "dicom", tmp_path / "out-dicom")
    assert _index_files(scratch) == []
    with pytest.raises(InputError, match=r"\.hidden\.dcm"):
        read_dicom_folder(tmp_path / "dicom", key=KEY, strict=True)  # on a file
    assert _index_files(scratch) == []
    for junk in (".hidden.dcm", "c-d/junk.dcm", "c.dcm", "c/junk.dcm", "a/x.txt"):
        (tmp_path / "dicom" / junk).unlink()
    with pytest.raises(InputError, match=r"c-d/lat\.dcm: study has no frontal"):
        read_dicom_folder(tmp_path / "dicom", key=KEY, strict=True)  # on a study, once all files are read
    assert _index_files(scratch) == []
    studies, _ = read_dicom_folder(tmp_path / "dicom", key=KEY)
    assert len(_index_files(scratch)) == 2
    del studies  # collected: its file goes with it
    assert _index_files(scratch) == []


def _records(loader) -> dict:
    return {r.record_id: (r.report, r.phi_meta, _hash(r.image), _hash(r.lateral)) for batch in loader for r in batch}


def test_studies_are_read_in_dataloader_workers_and_after_pickling(tmp_path):
    import pickle

    from torch.utils.data import DataLoader

    from cxrsynth.data.dicom import read_dicom_folder
    from cxrsynth.data.stream import IndexBatchSampler, collate_records, record_loader

    (tmp_path / "dicom").mkdir()
    dicom_folder(tmp_path / "dicom")
    view, _ = read_dicom_folder(tmp_path / "dicom", key=KEY)
    studies = view.dataset
    # The rows hold header PHI: the folder and the file are the user's alone.
    assert os.stat(studies.index.folder).st_mode & 0o777 == 0o700
    assert os.stat(studies.index.path).st_mode & 0o777 == 0o600
    here = _records([list(view)])
    assert len(here) == 3 and any(report for report, *_ in here.values())
    copy = pickle.loads(pickle.dumps(studies))
    assert _records([[copy[i] for i in range(len(copy))]]) == here
    assert np.array_equal(copy.labels, studies.labels) and studies.labels.shape == (3, 14)
    forked = record_loader(studies, IndexBatchSampler(len(studies), 2, 0, steps=3), workers=2)
    assert _records(forked) == here  # 3 batches of 2 cover the 3 studies
    spawned = DataLoader(
        studies, batch_size=2, collate_fn=collate_records, num_workers=1, multiprocessing_context="spawn"
    )
    assert _records(spawned) == here
    studies.close()
    with pytest.raises(FileNotFoundError, match="the index was closed"):
        pickle.loads(pickle.dumps(studies)).metadata(0)


def _small_mimic_tree(root, n: int) -> None:
    """n studies of one 8x8 frontal image each, with report, CheXpert and split rows; a patient a
    study, 100 patients a group folder."""
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    root.mkdir()
    with (
        open(root / "mimic-cxr-2.0.0-metadata.csv", "w") as meta,
        open(root / "mimic-cxr-2.0.0-chexpert.csv", "w") as chex,
        open(root / "mimic-cxr-2.0.0-split.csv", "w") as split,
    ):
        meta.write("dicom_id,subject_id,study_id,ViewPosition\n")
        chex.write("subject_id,study_id," + ",".join(LABELS) + "\n")
        split.write("dicom_id,study_id,subject_id,split\n")
        for k in range(n):
            subject, study = (10 + k // 100) * 1_000_000 + k, 50_000_000 + k
            d = root / f"files/p{str(subject)[:2]}/p{subject}/s{study}"
            d.mkdir(parents=True)
            image.save(d / f"d{k}.jpg")
            (d.parent / f"s{study}.txt").write_text("FINDINGS: Clear lungs.\nIMPRESSION: Normal.")
            meta.write(f"d{k},{subject},{study},PA\n")
            chex.write(f"{subject},{study}" + ",1.0" * len(LABELS) + "\n")
            split.write(f"d{k},{study},{subject},train\n")


def _small_dicom_folder(root, n: int) -> None:
    """n studies of one file each, 100 studies a folder."""
    from test_data_dicom import write_dx

    for k in range(n):
        write_dx(root / f"{k // 100:03d}/{k:05d}.dcm", RAMP[:8, :8], study=f"1.2.{k}", patient=f"MRN{k}")


def _held_while_reading(read, owner, decode: str) -> int:
    """Bytes of Python objects alive when `read()` checks its last image (traced at each decode)."""
    import tracemalloc

    original, held = getattr(owner, decode), [0]

    def traced(*args):
        held[0] = tracemalloc.get_traced_memory()[0]
        return original(*args)

    setattr(owner, decode, traced)
    tracemalloc.start()
    try:
        studies, _ = read()
        assert len(studies) and held[0]
        return held[0]
    finally:
        tracemalloc.stop()
        setattr(owner, decode, original)


@pytest.mark.parametrize("source", ["mimic", "dicom"])
def test_reading_a_source_holds_next_to_nothing_a_study(tmp_path, source):
    """What reading holds in memory grows by less than 100 bytes a study (reading every study
    into lists and dicts held about 1 KB a study: ids, file names, tables, header PHI). What is
    left is the names of the folder being listed. A first read of a few studies imports and
    caches what any read needs."""
    import cxrsynth.data.dicom as dicom
    import cxrsynth.data.mimic as mimic

    held = {}
    for n in (20, 150, 600):
        tree = tmp_path / f"n{n}"
        if source == "mimic":
            _small_mimic_tree(tree, n)
            held[n] = _held_while_reading(partial(mimic.read_mimic, tree), mimic, "load_png")
        else:
            _small_dicom_folder(tree, n)
            held[n] = _held_while_reading(partial(dicom.read_dicom_folder, tree, key=KEY), dicom, "to_uint8")
    assert (held[600] - held[150]) / 450 < 100, held
