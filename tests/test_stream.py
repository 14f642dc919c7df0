"""Streaming datasets: images decoded on access, DataLoader workers, the sampler the accountant assumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrsynth.config import load_config
from cxrsynth.data.dataset import read_dataset, write_dataset
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.stream import IndexBatchSampler, ManifestDataset, RecordsDataset, collate_records, record_loader
from cxrsynth.errors import InputError
from cxrsynth.train import BatchSampler, load_run_dataset, train_steps, training_set


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    write_dataset(root, make_phantom(n=40, sites=1, seed=3, image_size=32, lateral=True))
    return root


def test_manifest_dataset_serves_the_records_read_dataset_reads_decoding_each_on_access(site):
    eager, _ = read_dataset(site, with_phi=False)
    lazy, report = ManifestDataset.open(site)
    assert report.kept == len(lazy) == len(eager) and not report.problems
    for i in (0, 7, len(eager) - 1):
        a, b = eager[i], lazy[i]
        assert (a.record_id, a.patient_id, a.findings, a.impression, a.labels, a.view) == (
            b.record_id,
            b.patient_id,
            b.findings,
            b.impression,
            b.labels,
            b.view,
        )
        assert np.array_equal(a.image, b.image) and np.array_equal(a.lateral, b.lateral)
    # Metadata alone reads no image.
    assert lazy.metadata(0).image is None and lazy.metadata(0).report == eager[0].report


def test_a_missing_image_is_a_reported_row_and_a_corrupt_one_names_its_row_when_decoded(tmp_path):
    write_dataset(tmp_path, make_phantom(n=6, sites=1, seed=0, image_size=16, lateral=False))
    ds, _ = ManifestDataset.open(tmp_path)
    (tmp_path / ds.image_path(1)).unlink()
    (tmp_path / ds.image_path(2)).write_bytes(b"not a png")
    ds, report = ManifestDataset.open(tmp_path)
    assert (
        len(ds) == 5
        and report.skipped == 1
        and "row 2" in str(report.problems[0])
        and "missing" in str(report.problems[0])
    )
    with pytest.raises(InputError, match=r"row 3: image_path .*corrupt"):
        ds[1]
    with pytest.raises(InputError, match="row 2"):
        ManifestDataset.open(tmp_path, strict=True)


def test_workers_decode_the_same_batches_in_the_same_order(site):
    ds, _ = ManifestDataset.open(site)
    seen = {}
    for workers in (0, 2):
        sampler = IndexBatchSampler(len(ds), 8, seed=5, mode="poisson", steps=4)
        seen[workers] = [[(r.record_id, r.image.sum()) for r in b] for b in record_loader(ds, sampler, workers)]
    assert seen[0] == seen[2] and sum(map(len, seen[0])) > 0


def test_a_workers_batch_carries_its_pixels_in_the_stacked_tensors_and_the_records_get_them_back():
    """Records with and without a lateral: what a worker sends holds no pixels in the records
    (they travel as shared tensors), and the training process gets the same records and images
    as decoding in-process, each image a view of its batch's tensor."""
    recs = make_phantom(n=10, sites=1, seed=2, image_size=256, lateral=False)  # 1.2 MB of pixels
    recs = [r.with_(lateral=None if i in (1, 4) else 255 - r.image) for i, r in enumerate(recs)]
    _, (sent, frontal, lateral, lateral_of) = collate_records(recs).__reduce__()
    assert all(r.image is None and r.lateral is None for r in sent)
    assert (
        frontal.shape == (10, 256, 256) and lateral.shape == (8, 256, 256) and lateral_of == (0, 2, 3, 5, 6, 7, 8, 9)
    )
    loader = torch.utils.data.DataLoader(
        RecordsDataset(recs), batch_size=10, collate_fn=collate_records, num_workers=1
    )
    (got,) = list(loader)
    assert [r.record_id for r in got] == [r.record_id for r in recs]
    for r, g in zip(recs, got):
        assert np.array_equal(r.image, g.image) and np.shares_memory(g.image, got.frontal.numpy())
        assert (r.lateral is None) == (g.lateral is None)
        if r.lateral is not None:
            assert np.array_equal(r.lateral, g.lateral)
    # The laterals are rows of one array, the stacked tensor that carried them.
    assert len({id(g.lateral.base) for g in got if g.lateral is not None}) == 1
    # Records of different sizes are not stacked and travel with their pixels, and so does a batch
    # with fewer pixels than a round trip for a shared tensor is worth.
    mixed = collate_records([recs[0], recs[1].with_(image=np.zeros((8, 8), np.uint8))])
    assert mixed.frontal is None and mixed.__reduce__()[1][0][1].image.shape == (8, 8)
    small = [r.with_(image=r.image[:16, :16].copy(), lateral=None) for r in recs]
    rebuild, (sent, *_) = collate_records(small).__reduce__()
    assert all(r.image is not None for r in sent) and rebuild(sent).frontal.shape == (10, 16, 16)


def test_a_batch_stacks_its_frontal_images_and_the_models_read_them_alike():
    from cxrsynth.data.transforms import frontal_images, images_to_tensor

    recs = make_phantom(n=5, sites=1, seed=1, image_size=24, lateral=False)
    batch = collate_records(recs)
    assert batch.frontal.shape == (5, 24, 24) and batch.frontal.dtype == torch.uint8
    for size in (24, 16, 32):
        assert torch.equal(frontal_images(batch, size, "cpu", "test"), images_to_tensor([r.image for r in recs], size))
    assert collate_records([]).frontal is None


def test_data_parallel_ranks_split_each_poisson_batch_into_the_batch_of_one_process():
    patients = [f"p{i // 3}" for i in range(90)]
    for mode in ("poisson", "poisson-patient", "shuffle"):
        one = list(IndexBatchSampler(90, 12, seed=2, mode=mode, patient_ids=patients, steps=20))
        ranks = [
            list(IndexBatchSampler(90, 12, seed=2, mode=mode, patient_ids=patients, steps=20, rank=r, world_size=2))
            for r in (0, 1)
        ]
        for step, batch in enumerate(one):
            assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)


def test_poisson_sampling_includes_each_record_at_the_sample_rate_independently():
    sampler = IndexBatchSampler(50, 10, seed=0, mode="poisson", steps=4000)
    counts = np.zeros(50)
    sizes = []
    for batch in sampler:
        counts[batch] += 1
        sizes.append(len(batch))
    assert counts / 4000 == pytest.approx(np.full(50, 0.2), abs=0.03)
    # Binomial(50, 0.2) batch sizes, not fixed ones: the accountant's assumption.
    assert np.mean(sizes) == pytest.approx(10, abs=0.3) and np.var(sizes) == pytest.approx(8, rel=0.2)


def test_training_on_the_streamed_directory_matches_training_on_its_records_in_memory(site):
    from cxrsynth.models import build_model
    from cxrsynth.train import seed_everything

    cfg = load_config(
        "mopoe-tiny", {"data": {"path": str(site), "holdout_fraction": 0.25}, "model": {"image_size": 32}}
    )
    streamed = training_set(cfg, load_run_dataset(cfg))
    eager = [r for r in read_dataset(site, with_phi=False)[0]]
    from cxrsynth.data.split import split_by_patient

    eager = [r for r in split_by_patient(eager, 0.25, 0) if r.split != "holdout"]
    assert [streamed.metadata(i).record_id for i in range(len(streamed))] == [r.record_id for r in eager]
    states = []
    for data, workers in ((eager, 0), (streamed, 0), (streamed, 2)):
        seed_everything(0)
        model = build_model(cfg.model)
        model.setup(eager)
        model.opts = model.make_optimizers()
        train_steps(model, data, steps=3, batch_size=8, seed=0, sampling="poisson", workers=workers)
        states.append(model.state())
    for other in states[1:]:
        assert all(np.array_equal(states[0][k], other[k]) for k in states[0])


def test_the_record_batch_sampler_keeps_drawing_what_it_drew_before():
    """BatchSampler now draws through IndexBatchSampler; the draws of a seed stay as they were."""
    recs = make_phantom(n=30, sites=1, seed=0, image_size=16, lateral=False)
    rng = np.random.default_rng(4)
    expected = [recs[i].record_id for i in np.flatnonzero(rng.random(30) < 8 / 30)]
    assert [r.record_id for r in next(BatchSampler(recs, 8, seed=4, mode="poisson"))] == expected
    ds = RecordsDataset(recs)
    ds.keep_labels = np.zeros(30, bool)
    assert not ds[0].has_labels() and recs[0].has_labels()


def test_iterating_the_loader_leaves_torch_s_random_stream_to_the_model():
    """The model's draws (z, noise) come from torch's global generator; the loader must not take from it."""
    recs = make_phantom(n=8, sites=1, seed=0, image_size=16, lateral=False)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for _ in record_loader(RecordsDataset(recs), IndexBatchSampler(8, 4, seed=0, steps=2)):
        pass
    assert torch.equal(torch.rand(3), expected)


def test_an_open_dataset_keeps_no_report_text_in_memory(tmp_path):
    import tracemalloc

    records = make_phantom(n=400, sites=1, seed=8, image_size=16, lateral=False)
    long = "There is no pneumothorax. " * 200  # 5 KB a report: 2 MB of text in all
    write_dataset(tmp_path, [r.with_(findings=long + r.findings) for r in records])
    tracemalloc.start()
    ds, _ = ManifestDataset.open(tmp_path)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Ids, codes and byte ranges: well under a kilobyte a study; the text alone is 5 KB a study.
    assert held < 400 * 1000, held
    assert ds.metadata(7).findings == long + records[7].findings and ds[7].report == ds.metadata(7).report


def test_an_open_dataset_reads_the_manifest_it_opened_and_refuses_one_changed_in_place(tmp_path):
    records = make_phantom(n=12, sites=1, seed=9, image_size=16, lateral=False)
    write_dataset(tmp_path, records)
    ds, _ = ManifestDataset.open(tmp_path)
    first = ds.metadata(3).findings
    # Replaced (a new file put in place, as a writer does): the opened one is still read.
    manifest = tmp_path / "manifest.csv"
    replacement = tmp_path / "new.csv"
    replacement.write_bytes(manifest.read_bytes().replace(b"\nr000003,", b"\nx000003,"))
    replacement.replace(manifest)
    assert ds.metadata(3).findings == first and ds.metadata(3).record_id == "r000003"
    # A copy sent to another process opens the path again, and refuses a different file.
    import pickle

    with pytest.raises(InputError, match="replaced while the dataset was open"):
        pickle.loads(pickle.dumps(ds)).metadata(3)
    # Changed in place under an open dataset: the row no longer matches, named by its row.
    ds, _ = ManifestDataset.open(tmp_path)
    text = manifest.read_bytes()
    with open(manifest, "r+b") as f:
        f.write(text.replace(b"\nx000003,", b"\ny000003,"))
    with pytest.raises(InputError, match=r"manifest\.csv, row 4: the manifest changed"):
        ds.metadata(3)


def test_an_image_path_that_leaves_the_dataset_directory_is_refused_on_opening_and_on_reading(tmp_path):
    root = tmp_path / "site"
    write_dataset(root, make_phantom(n=6, sites=1, seed=4, image_size=16, lateral=False))
    ds, _ = ManifestDataset.open(root)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((root / ds.image_path(0)).read_bytes())
    (root / "images" / "link.png").symlink_to(outside)
    manifest = root / "manifest.csv"
    text = manifest.read_text(encoding="utf-8")
    for k, escape in ((1, "../elsewhere.png"), (2, str(outside)), (3, "images/link.png")):
        text = text.replace(ds.image_path(k), escape)
    manifest.write_text(text, encoding="utf-8")
    opened, report = ManifestDataset.open(root)
    assert len(opened) == 3 and report.skipped == 3
    assert [str(p).count("outside the dataset directory") for p in report.problems] == [1, 1, 1]
    assert sorted(p.row for p in report.problems) == [2, 3, 4]
    # A row changed in place after opening, to a path that leaves the directory, is refused on reading.
    ds, _ = ManifestDataset.open(root)
    rel = ManifestDataset.open(root)[0].image_path(0)
    escape = ("../" + "x" * len(rel))[: len(rel)]
    with open(manifest, "r+b") as f:
        f.write(manifest.read_bytes().replace(rel.encode(), escape.encode()))
    with pytest.raises(InputError, match=r"row 1: image_path .*outside the dataset directory"):
        ds.image(0)


def test_manifest_rows_read_back_from_their_byte_ranges_as_a_text_reader_reads_them(tmp_path):
    import csv

    from cxrsynth.data.dataset import ByteLines, csv_rows, read_csv_row

    cases = [
        b"a,b\r\n1,2\r\n3,4\r\n",
        b'a,b\n1,"two\nlines"\n\n3,"x\r\ny"\n',
        b'a,b\r1,2\r3,"4\r5"\r',  # a lone carriage return ends a line too
        b'\xef\xbb\xbfa,b\n1,\xe9t\xe9\n2,"""q"""\n',  # byte-order mark; bytes that are not UTF-8
        b"a,b\n1,2",  # no newline at the end
    ]
    for n, data in enumerate(cases):
        for chunk in (2, 3, 1 << 16):  # lines across the reader's chunk boundaries
            path = tmp_path / f"{n}.csv"
            path.write_bytes(data)
            with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
                expected = list(csv.DictReader(f, strict=True))
            ByteLines.CHUNK = chunk
            try:
                reader = csv_rows(path)
                got = []
                for row in reader:
                    got.append(row)
                    assert read_csv_row(path, reader.fieldnames, data[slice(*reader.span)]) == row
            finally:
                ByteLines.CHUNK = 1 << 16
            assert got == expected, (data, chunk)
