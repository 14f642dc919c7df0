"""Ingest of a dataset directory streams: each study is decoded, resized and written in turn, an
ingest into an earlier one appends to it, and the output is what reading it all first gave."""

from __future__ import annotations

import csv
import weakref

import numpy as np

from cxrsynth.data.dataset import read_dataset, write_dataset
from cxrsynth.data.ingest import ingest, square_resize
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.split import split_by_patient
from cxrsynth.data.stream import ManifestDataset


def _rows(root):
    with open(root / "manifest.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_a_streamed_ingest_writes_what_the_whole_dataset_in_memory_wrote(tmp_path):
    records = make_phantom(n=40, sites=1, seed=4, image_size=48, lateral=True)
    write_dataset(tmp_path / "src", records)
    ingest("manifest", tmp_path / "src", tmp_path / "out", size=32, holdout=0.3, seed=2)
    # What ingest wrote before it streamed: every record read, resized and split, then written.
    read, _ = read_dataset(tmp_path / "src")
    expected = split_by_patient([r.with_(site=r.site or "site0", image=square_resize(r.image, 32), lateral=None if r.lateral is None else square_resize(r.lateral, 32)) for r in read], 0.3, 2)
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


def test_ingest_of_a_directory_never_holds_its_decoded_images(tmp_path, monkeypatch):
    write_dataset(tmp_path / "src", make_phantom(n=300, sites=1, seed=6, image_size=32, lateral=True))
    live: dict[int, weakref.ref] = {}
    peak, decoded = [0], [0]
    image = ManifestDataset.image

    def counted(self, i, lateral=False):
        img = image(self, i, lateral)
        live[id(img)] = weakref.ref(img, lambda _, key=id(img): live.pop(key, None))
        peak[0], decoded[0] = max(peak[0], len(live)), decoded[0] + 1
        return img

    monkeypatch.setattr(ManifestDataset, "image", counted)
    ingest("manifest", tmp_path / "src", tmp_path / "out", size=16)
    assert decoded[0] >= 300 and peak[0] <= 2 + 2 * 6 * 2  # a study's two images (and the page's few examples)
    assert np.asarray(read_dataset(tmp_path / "out")[0][0].image).shape == (16, 16)
