"""MIMIC-CXR-JPG loader and `cxrsynth data ingest --source mimic`, on tiny trees built here."""

import csv
import gzip
import json

import pytest
from PIL import Image

from cxrsynth.cli import main
from cxrsynth.data.dataset import read_dataset
from cxrsynth.data.mimic import read_mimic
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import LABELS
from cxrsynth.errors import InputError

# study id -> (subject id, [(dicom id, view)], official split)
STUDIES = {
    "50000001": ("10000001", [("d1a", "AP"), ("d1b", "PA"), ("d1c", "LATERAL")], "train"),
    "50000002": ("10000001", [("d2a", "PA")], "train"),
    "50000003": ("10000002", [("d3a", "AP"), ("d3b", "LL")], "test"),
    "50000004": ("10000003", [("d4a", "PA"), ("d4b", "LATERAL"), ("d4c", "LAO")], "validate"),
}


def build_tree(root, broken=False):
    recs = make_phantom(len(STUDIES), sites=1, seed=4, image_size=32)
    meta, chex, split = [], [], []
    for (study, (subject, images, sp)), rec in zip(STUDIES.items(), recs):
        d = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        d.mkdir(parents=True)
        for k, (dicom_id, view) in enumerate(images):
            arr = (rec.image if view in ("PA", "AP") else rec.image.T).copy()
            arr[0, 0] = k * 40  # mark which image became the record's
            Image.fromarray(arr).save(d / f"{dicom_id}.jpg", quality=100)
            meta.append({"dicom_id": dicom_id, "subject_id": subject, "study_id": study, "ViewPosition": view})
            split.append({"dicom_id": dicom_id, "study_id": study, "subject_id": subject, "split": sp})
        (d.parent / f"s{study}.txt").write_text(
            f"                 FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n INDICATION: ___ with cough\n\n"
            f" FINDINGS:\n {rec.findings}\n\n IMPRESSION:\n {rec.impression}\n",
            encoding="utf-8",
        )
        chex.append(
            {
                "subject_id": subject,
                "study_id": study,
                **{n: "" if rec.labels[n] is None else f"{rec.labels[n]:.1f}" for n in LABELS},
            }
        )
    for name, rows in (("metadata", meta), ("chexpert", chex), ("split", split)):
        with open(root / f"mimic-cxr-2.0.0-{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if broken:
        (root / "files/p10/p10000001/s50000002/d2a.jpg").write_bytes(b"not a jpeg at all")
        (root / "files/p10/p10000002/s50000003.txt").write_bytes(b"FINDINGS: caf\xe9 \xff\xfe effusion.\n")
        rows = list(csv.DictReader(open(root / "mimic-cxr-2.0.0-chexpert.csv")))
        rows[3]["Edema"] = "maybe"
        with open(root / "mimic-cxr-2.0.0-chexpert.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return recs


def test_one_record_per_study_with_views_labels_sections_and_split(tmp_path):
    recs = build_tree(tmp_path)
    out, report = read_mimic(tmp_path, site="mimic")
    assert report.skipped == 0 and report.kept == 4
    by_id = {r.study_id: r for r in out}
    assert set(by_id) == {f"s{s}" for s in STUDIES}
    s1 = by_id["s50000001"]
    assert s1.view == "PA" and s1.lateral is not None  # PA preferred over AP
    assert abs(int(s1.image[0, 0]) - 40) < 12  # the PA image (second) was chosen
    assert by_id["s50000002"].lateral is None
    assert by_id["s50000003"].view == "AP" and by_id["s50000003"].lateral is not None  # LL pairs as lateral
    assert by_id["s50000003"].split == "holdout" and by_id["s50000004"].split == "train"
    assert by_id["s50000001"].patient_id == by_id["s50000002"].patient_id == "p10000001"
    assert [w.file.split("/")[-1] for w in report.warnings] == [
        "d4c.jpg"
    ]  # an unused view is said, not dropped silently
    for rec, study in zip(recs, STUDIES):
        got = by_id[f"s{study}"]
        assert got.labels == rec.labels
        assert got.findings == " ".join(rec.findings.split()) and got.impression == " ".join(rec.impression.split())
        assert "INDICATION" not in got.findings


def test_broken_tree_reports_each_problem_and_keeps_the_good(tmp_path):
    build_tree(tmp_path, broken=True)
    out, report = read_mimic(tmp_path)
    assert {r.study_id for r in out} == {"s50000001"}
    reasons = {(p.file.split("/")[-1], p.row): p.reason for p in report.problems}
    assert any("d2a.jpg" == f and "corrupt" in r for (f, _), r in reasons.items())
    assert any("s50000003.txt" == f and "not UTF-8" in r for (f, _), r in reasons.items())
    assert any(f == "mimic-cxr-2.0.0-chexpert.csv" and row == 4 and "'Edema'" in r for (f, row), r in reasons.items())


def test_strict_fails_on_the_first_problem(tmp_path):
    build_tree(tmp_path, broken=True)
    with pytest.raises(InputError, match="chexpert.csv, row 4"):
        read_mimic(tmp_path, strict=True)


def test_missing_metadata_is_a_clear_input_error(tmp_path):
    build_tree(tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").unlink()
    with pytest.raises(InputError, match="metadata.csv"):
        read_mimic(tmp_path)


def test_ingest_command_writes_dataset_and_report(tmp_path, capsys):
    build_tree(tmp_path / "tree", broken=True)
    out = tmp_path / "out"
    assert (
        main(["--quiet", "data", "ingest", "--source", "mimic", "--path", str(tmp_path / "tree"), "--out", str(out)])
        == 0
    )
    recs, _ = read_dataset(out)
    assert [r.study_id for r in recs] == ["s50000001"]
    rep = json.loads((out / "ingest_report.json").read_text())
    assert rep["read"] == 4 and rep["kept"] == 1
    assert rep["skipped_by_reason"] == {
        "unknown label value": 1,
        "corrupt image": 1,
        "no frontal image": 1,
        "non-UTF-8 text": 1,
    }
    assert all(p["file"] for p in rep["problems"])
    assert (
        main(
            [
                "--quiet",
                "data",
                "ingest",
                "--source",
                "mimic",
                "--path",
                str(tmp_path / "tree"),
                "--out",
                str(tmp_path / "o2"),
                "--strict",
            ]
        )
        == 2
    )
    assert "row 4" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "manifest.csv").exists()


def test_a_tree_is_read_one_study_at_a_time_and_written_from_its_files(tmp_path, monkeypatch, decoded):
    """Reading decodes each chosen image once to check it and keeps none; the study is read
    again from its files when written. A JPEG that stops decoding between the two is a skipped
    study named by its file; a report changed meanwhile stops the ingest with nothing written."""
    import numpy as np

    import cxrsynth.data.mimic as mimic
    from cxrsynth.data.ingest import ingest

    build_tree(tmp_path / "tree")
    decoded.watch(mimic, "load_png")
    studies, report = read_mimic(tmp_path / "tree", site="mimic")
    assert report.kept == len(studies) == 4 and decoded["total"] == 7 and not decoded.alive()  # none kept
    first = studies[0]
    again = Image.open(tmp_path / "tree/files/p10/p10000001/s50000001/d1b.jpg")
    assert np.array_equal(first.image, np.asarray(again)) and first.view == "PA"
    assert (
        first.findings
        and "FINDINGS" not in first.findings
        and first.findings in " ".join((tmp_path / "tree/files/p10/p10000001/s50000001.txt").read_text().split())
    )
    del first
    # Between reading and writing: one lateral turns corrupt; the other studies are written.
    read = mimic.read_mimic

    def then_corrupt(*args, **kwargs):
        out = read(*args, **kwargs)
        (tmp_path / "tree/files/p10/p10000002/s50000003/d3b.jpg").write_bytes(b"no longer a jpeg")
        return out

    monkeypatch.setattr(mimic, "read_mimic", then_corrupt)
    ingest("mimic", tmp_path / "tree", tmp_path / "out", site="mimic")
    back, _ = read_dataset(tmp_path / "out")
    assert sorted(r.study_id for r in back) == ["s50000001", "s50000002", "s50000004"]
    rep = json.loads((tmp_path / "out/ingest_report.json").read_text())
    assert [p["file"].rsplit("/", 1)[-1] for p in rep["problems"]] == ["d3b.jpg"] and rep["kept"] == 3
    # A report edited between the check and the writing: refused, naming the file.
    studies, _ = read_mimic(tmp_path / "tree")
    (tmp_path / "tree/files/p10/p10000001/s50000002.txt").write_text("FINDINGS: edited.", encoding="utf-8")
    with pytest.raises(InputError, match=r"s50000002\.txt: the report changed"):
        [s.report for s in studies]


def _table(path, n):
    rows = "".join(f"{i:040d},PA,{'x' * 40}\n" for i in range(n))
    data = ("dicom_id,ViewPosition,note\n" + rows).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return len(data)


def _peak_reading(path) -> tuple[int, int]:
    import tracemalloc

    from cxrsynth.data.mimic import _rows

    tracemalloc.start()
    try:
        n = sum(1 for _ in _rows(path))
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_table_is_read_as_its_rows_are_taken_not_whole(tmp_path, suffix):
    small, big = tmp_path / f"small{suffix}", tmp_path / f"big{suffix}"
    _table(small, 30_000)
    size = _table(big, 120_000)  # 10 MB of text
    (n_small, peak_small), (n_big, peak_big) = _peak_reading(small), _peak_reading(big)
    assert (n_small, n_big) == (30_000, 120_000)
    # Held whole, the table would cost its size twice (bytes, then text): 20 MB, growing with it.
    assert peak_big < size / 2 and peak_big < 1.5 * peak_small, (peak_small, peak_big, size)


def test_a_table_that_stops_being_utf8_or_gzip_names_the_file_and_row(tmp_path):
    from cxrsynth.data.mimic import _rows

    path = tmp_path / "mimic-cxr-2.0.0-split.csv"
    path.write_bytes(b"dicom_id,split\na,train\nb,tr\xe9in\n")
    with pytest.raises(InputError, match=r"split\.csv: not UTF-8 text \(row 2\)"):
        list(_rows(path))
    packed = tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz"
    _table(packed, 5_000)
    packed.write_bytes(packed.read_bytes()[:-4000])  # cut short, as a copy that did not finish
    with pytest.raises(InputError, match=r"metadata\.csv\.gz: not a readable gzip file \(EOFError"):
        list(_rows(packed))
