"""Ingest of a dataset directory streams: each study is decoded, resized and written in turn, an
ingest into an earlier one appends to it, and the output is what reading it all first gave."""

from __future__ import annotations

import csv

import numpy as np

from cxrsynth.data.dataset import read_dataset, write_dataset
from cxrsynth.data.ingest import ingest, square_resize
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.split import split_by_patient


def _rows(root):
    with open(root / "manifest.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_a_streamed_ingest_writes_what_the_whole_dataset_in_memory_wrote(tmp_path):
    records = make_phantom(n=40, sites=1, seed=4, image_size=48, lateral=True)
    write_dataset(tmp_path / "src", records)
    ingest("manifest", tmp_path / "src", tmp_path / "out", size=32, holdout=0.3, seed=2)
    # What ingest wrote before it streamed: every record read, resized and split, then written.
    read, _ = read_dataset(tmp_path / "src")
    expected = split_by_patient(
        [
            r.with_(
                site=r.site or "site0",
                image=square_resize(r.image, 32),
                lateral=None if r.lateral is None else square_resize(r.lateral, 32),
            )
            for r in read
        ],
        0.3,
        2,
    )
    write_dataset(tmp_path / "expected", expected)
    assert (tmp_path / "out" / "manifest.csv").read_bytes() == (tmp_path / "expected" / "manifest.csv").read_bytes()
    for row in _rows(tmp_path / "out"):
        for col in ("image_path", "lateral_path"):
            if row[col]:
                assert (tmp_path / "out" / row[col]).read_bytes() == (tmp_path / "expected" / row[col]).read_bytes()


def test_ingesting_into_an_earlier_ingest_appends_and_replaces_what_is_ingested_again(tmp_path):
    records = make_phantom(n=30, sites=1, seed=5, image_size=32, lateral=True)
    write_dataset(tmp_path / "first", records[:20])
    write_dataset(tmp_path / "second", records[15:])
    write_dataset(tmp_path / "all", records)
    ingest("manifest", tmp_path / "first", tmp_path / "out", seed=1)
    ingest("manifest", tmp_path / "second", tmp_path / "out", seed=1)
    ingest("manifest", tmp_path / "all", tmp_path / "direct", seed=1)
    ids = [r["record_id"] for r in _rows(tmp_path / "out")]
    # The first ingest's rows not ingested again, in their order, then the second ingest's.
    assert ids == [r.record_id for r in records[:15]] + [r.record_id for r in records[15:]]
    by_id = {r["record_id"]: r for r in _rows(tmp_path / "direct")}
    assert all(row == by_id[row["record_id"]] for row in _rows(tmp_path / "out"))


def test_ingest_of_a_directory_never_holds_its_decoded_images(tmp_path, decoded_images):
    write_dataset(tmp_path / "src", make_phantom(n=300, sites=1, seed=6, image_size=32, lateral=True))
    ingest("manifest", tmp_path / "src", tmp_path / "out", size=16)
    assert (
        decoded_images["total"] >= 300 and decoded_images["peak"] <= 2 + 2 * 6 * 2
    )  # a study's two images (and the page's few examples)
    assert np.asarray(read_dataset(tmp_path / "out")[0][0].image).shape == (16, 16)


def test_evaluate_of_directories_never_holds_their_decoded_images(tmp_path, decoded_images):
    from cxrsynth.eval.config import EvalConfig
    from cxrsynth.eval.evaluate import run_evaluation

    real = split_by_patient(make_phantom(n=400, sites=1, seed=7, image_size=32, lateral=True), 0.3, 0)
    write_dataset(tmp_path / "real", real)
    write_dataset(tmp_path / "synthetic", make_phantom(n=300, sites=1, seed=8, image_size=32, lateral=True))
    cfg = EvalConfig(image_size=32, classifier_width=4, classifier_steps=3, batch_size=8, max_conditions=4)
    metrics = run_evaluation(tmp_path / "synthetic", tmp_path / "real", tmp_path / "eval", cfg)
    assert (
        metrics["fidelity"]["n_synthetic"] == 300
        and metrics["utility"]["arms"]["real+synthetic"]["train_records"] > 300
    )
    # The synthetic set's images were all read (FID), but never more than a batch (256) at a time.
    assert decoded_images["total"] > 300 and decoded_images["peak"] <= 256 + 16 < 300


def test_an_ingest_into_an_earlier_one_keeps_its_phi_headers_and_replaces_those_ingested_again(tmp_path):
    import os
    import stat

    from cxrsynth.data.dataset import read_phi_headers, write_phi_headers

    records = make_phantom(n=30, sites=1, seed=7, image_size=16, lateral=False)
    changed = [r.with_(phi_meta={**r.phi_meta, "PatientName": "NEW^NAME"}) for r in records[15:]]
    for name, part in (("first", records[:20]), ("second", changed)):
        write_dataset(tmp_path / name, part)
        write_phi_headers(tmp_path / name, part)
    ingest("manifest", tmp_path / "first", tmp_path / "out", seed=1)
    ingest("manifest", tmp_path / "second", tmp_path / "out", seed=1)
    headers = read_phi_headers(tmp_path / "out")
    assert set(headers) == {r.record_id for r in records}
    assert all(headers[r.record_id] == r.phi_meta for r in records[:15] + changed)
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "phi_headers.jsonl").st_mode) == 0o600


def test_a_site_manifest_is_ingested_one_study_at_a_time_as_reading_it_whole_did(tmp_path, decoded):
    """A hospital's CSV (loose columns, PNG paths, report text): every image is decoded on
    reading (a bad one reported before anything is written) and again when written, never more
    than a study's at once, and the dataset written is the one the rows give."""
    import csv as csv_module
    import tracemalloc

    import cxrsynth.data.manifest as manifest
    from cxrsynth.data.dataset import save_png

    records = make_phantom(n=120, sites=1, seed=8, image_size=24, lateral=True)
    rows = []
    for i, r in enumerate(records):
        save_png(r.image, tmp_path / "img" / f"{i}.png")
        lateral = ""
        if r.lateral is not None:
            save_png(r.lateral, tmp_path / "img" / f"{i}_lat.png")
            lateral = f"img/{i}_lat.png"
        rows.append([f"img/{i}.png", lateral, r.report, r.phi_meta["PatientID"], f"ACC{i}", r.view])
    with open(tmp_path / "site.csv", "w", newline="", encoding="utf-8") as f:
        w = csv_module.writer(f)
        w.writerow(["Image Path", "lateral_path", "Report", "MRN", "Accession", "View Position"])
        w.writerows(rows)
    decoded.watch(manifest, "_image", pick=lambda out: out[0])
    counts = decoded
    tracemalloc.start()
    recs, report = manifest.read_manifest(tmp_path / "site.csv", key=b"k" * 32, site="h1")
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    n_images = sum(r.lateral is not None for r in records) + len(records)
    # Two studies at most: the one being read and the one just checked.
    assert report.kept == len(recs) == 120 and counts["total"] == n_images and counts["peak"] <= 4
    assert held < 120 * 1500, held  # ids, codes and byte ranges; the reports alone are more
    # What the sequence gives is what the rows say, read again on access.
    first = recs[7]
    assert (first.findings, first.impression) == (records[7].findings, records[7].impression)
    assert np.array_equal(first.image, records[7].image) and first.phi_meta["AccessionNumber"] == "ACC7"
    ingest("manifest", tmp_path / "site.csv", tmp_path / "out", site="h1")
    assert counts["peak"] <= 2 + 2 * 6 * 2  # a study's two images (and the page's few examples)
    back, _ = read_dataset(tmp_path / "out")
    # The site's own key pseudonymises the ids there; the accession numbers tell the studies apart.
    by_accession = {r.phi_meta["AccessionNumber"]: r for r in back}
    assert len(back) == 120 and set(by_accession) == {f"ACC{i}" for i in range(120)}
    assert np.array_equal(by_accession["ACC7"].image, records[7].image)
    assert by_accession["ACC7"].findings == records[7].findings
