"""Dataset-format and site-manifest reading, with every bad-input case of issue 2 item 7."""

import json

import numpy as np
import pytest
from PIL import Image

from cxrsynth.cli import main
from cxrsynth.data.dataset import image_relpath, read_dataset, write_dataset
from cxrsynth.data.manifest import read_manifest
from cxrsynth.data.phantom import make_phantom
from cxrsynth.errors import InputError

KEY = b"s" * 32


def test_dataset_format_round_trip(tmp_path):
    recs = make_phantom(12, seed=2, image_size=24)
    write_dataset(tmp_path, recs)
    back, report = read_manifest(tmp_path, key=KEY)
    assert report.skipped == 0
    for a, b in zip(recs, back):
        assert (a.record_id, a.labels, a.findings, a.view) == (b.record_id, b.labels, b.findings, b.view)
        assert np.array_equal(a.image, b.image)
        assert (a.lateral is None) == (b.lateral is None)
        assert b.phi_meta == {}  # never written to the manifest (and no phi_headers.jsonl here)


def test_bad_rows_in_a_dataset_manifest_are_named_and_skipped(tmp_path):
    recs = make_phantom(5, seed=2, image_size=24)
    write_dataset(tmp_path, recs)
    lines = (tmp_path / "manifest.csv").read_bytes().split(b"\n")
    lines[1] = lines[1].replace(image_relpath(recs[0]).encode(), b"images/gone.png")  # missing image
    (tmp_path / image_relpath(recs[1])).write_bytes(b"\x89PNG broken")  # corrupt image
    lines[3] = (
        lines[3].replace(b"Exam", b"\xe9xam") if b"Exam" in lines[3] else lines[3].replace(b",site", b",s\xe9te", 1)
    )
    lines[4] = lines[4] + b",extra,cells"  # malformed row
    (tmp_path / "manifest.csv").write_bytes(b"\n".join(lines))
    recs, report = read_dataset(tmp_path)
    rows = {p.row: p.reason for p in report.problems}
    assert len(recs) == 1 and report.read == 5
    assert "missing" in rows[1] and "corrupt" in rows[2] and "not UTF-8" in rows[3] and "malformed" in rows[4]
    assert all(p.file.endswith("manifest.csv") for p in report.problems)
    with pytest.raises(InputError, match=r"manifest.csv, row 1: .*missing"):
        read_dataset(tmp_path, strict=True)


def _site(tmp_path, rows, header="image_path,Report,patient_id,Accession,Pleural_Effusion,cardiomegaly"):
    img = (np.arange(32 * 32) % 251).reshape(32, 32).astype(np.uint8)
    (tmp_path / "img").mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.jpg", "c.png"):
        Image.fromarray(img).save(tmp_path / "img" / name)
    (tmp_path / "img/bad.png").write_bytes(b"garbage")
    body = header + "\n" + "\n".join(rows) + "\n"
    (tmp_path / "site.csv").write_bytes(body.encode("utf-8") if isinstance(body, str) else body)
    return tmp_path / "site.csv"


def test_site_manifest_loose_columns_labels_and_pseudonyms(tmp_path):
    path = _site(
        tmp_path,
        [
            'img/a.png,"FINDINGS: Small right effusion. IMPRESSION: Effusion.",MRN1,ACC1,1,0',
            'img/b.jpg,"No acute process.",MRN1,ACC2,,-1',
        ],
    )
    recs, report = read_manifest(path, key=KEY, site="h2")
    assert report.skipped == 0 and len(recs) == 2
    a, b = recs
    assert a.findings == "Small right effusion." and a.impression == "Effusion."
    assert a.labels["Pleural Effusion"] == 1 and a.labels["Cardiomegaly"] == 0 and a.labels["Edema"] is None
    assert b.labels["Cardiomegaly"] == -1
    assert a.patient_id == b.patient_id and "MRN1" not in a.patient_id
    assert a.phi_meta == {"PatientID": "MRN1", "AccessionNumber": "ACC1"}


def test_site_manifest_without_labels_uses_the_labeler(tmp_path):
    path = _site(
        tmp_path,
        ['img/a.png,"There is a moderate left pneumothorax.",P1,A1'],
        header="image,report,patient,accession_number",
    )
    recs, _ = read_manifest(path, key=KEY)
    assert recs[0].labels["Pneumothorax"] == 1


def test_site_manifest_bad_rows(tmp_path):
    rows = [
        'img/a.png,"ok",MRN1,ACC1,1,0',
        'img/bad.png,"corrupt image",MRN2,ACC2,0,0',
        'img/nope.png,"missing image",MRN3,ACC3,0,0',
        'img/c.png,"unknown label",MRN4,ACC4,yes,0',
        'img/c.png,"too many cells",MRN5,ACC5,0,0,9',
        ',"no image",MRN6,ACC6,0,0',
    ]
    path = _site(tmp_path, rows)
    raw = path.read_bytes() + b'img/c.png,"caf\xe9",MRN7,ACC7,0,0\n'
    path.write_bytes(raw)
    recs, report = read_manifest(path, key=KEY)
    assert len(recs) == 1
    reasons = {p.row: p.reason for p in report.problems}
    assert "corrupt" in reasons[2] and "missing" in reasons[3] and "label value 'yes'" in reasons[4]
    assert "malformed" in reasons[5] and "malformed" in reasons[6] and "not UTF-8" in reasons[7]
    assert "Pleural_Effusion" in reasons[4]


def test_site_manifest_unknown_column_is_refused_with_the_accepted_names(tmp_path):
    path = _site(tmp_path, ["img/a.png,x,1"], header="image_path,report,Pleural Efusion")
    with pytest.raises(InputError, match=r"unknown column\(s\) \['Pleural Efusion'\].*Pleural Effusion"):
        read_manifest(path, key=KEY)


def test_ingest_keeps_what_was_ingested_before_and_strict_writes_nothing(tmp_path):
    path = _site(tmp_path, ['img/a.png,"FINDINGS: No effusion.",MRN1,ACC1,0,0', 'img/bad.png,"x",MRN2,ACC2,0,0'])
    out = tmp_path / "out"
    assert main(["--quiet", "data", "ingest", "--source", "manifest", "--path", str(path), "--out", str(out)]) == 0
    first = (out / "manifest.csv").read_text()
    rep = json.loads((out / "ingest_report.json").read_text())
    assert rep["kept"] == 1 and rep["skipped_by_reason"] == {"corrupt image": 1}
    assert rep["problems"][0]["row"] == 2 and rep["problems"][0]["file"].endswith("site.csv")
    path2 = _site(tmp_path / "more", ['img/c.png,"FINDINGS: Cardiomegaly.",MRN9,ACC9,0,1'])
    assert main(["--quiet", "data", "ingest", "--source", "manifest", "--path", str(path2), "--out", str(out)]) == 0
    recs, _ = read_dataset(out)
    assert len(recs) == 2  # the first ingest's record is still there
    assert (
        main(["--quiet", "data", "ingest", "--source", "manifest", "--path", str(path), "--out", str(out), "--strict"])
        == 2
    )
    assert len(read_dataset(out)[0]) == 2 and first.splitlines()[1] in (out / "manifest.csv").read_text()


def test_ingest_refuses_to_merge_into_an_output_whose_rows_no_longer_read(tmp_path, capsys):
    path = _site(tmp_path, ['img/a.png,"FINDINGS: No effusion.",MRN1,ACC1,0,0'])
    out = tmp_path / "out"
    assert main(["--quiet", "data", "ingest", "--source", "manifest", "--path", str(path), "--out", str(out)]) == 0
    next((out / "images").iterdir()).write_bytes(b"broken")
    before = (out / "manifest.csv").read_bytes()
    assert main(["--quiet", "data", "ingest", "--source", "manifest", "--path", str(path), "--out", str(out)]) == 2
    assert "row 1" in capsys.readouterr().err
    assert (out / "manifest.csv").read_bytes() == before  # the broken row was not dropped by a rewrite
