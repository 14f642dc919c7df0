"""The audit of dataset directories streams: images are decoded a batch at a time, embeddings
and alignment windows wait in temporary files, and the figures are those of the audit of the
same records held in memory."""

from __future__ import annotations

import numpy as np
import pytest

from cxrsynth.config import AuditPolicy
from cxrsynth.data.dataset import write_dataset
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.split import split_by_patient
from cxrsynth.data.stream import ManifestDataset
from cxrsynth.privacy.audit import align
from cxrsynth.privacy.audit.neighbors import Rows, nearest
from cxrsynth.privacy.audit.run import audit_records, run_audit

POLICY = AuditPolicy(
    bootstrap=20,
    fidelity_steps=5,
    selfsup_steps=5,
    chunk=16,
    skip=("phi",),
    min_fidelity_positives=2,
    min_fidelity_real_positives=2,
)


def _sets(root, n_real: int, n_synthetic: int, size: int):
    real = split_by_patient(make_phantom(n=n_real, sites=1, seed=5, image_size=size, lateral=True), 0.45, 0)
    train = [r for r in real if r.split == "train"]
    synthetic = [
        r.with_(record_id=f"syn{i}", site="synthetic", split="", phi_meta={})
        for i, r in enumerate(make_phantom(n=n_synthetic, sites=1, seed=6, image_size=size, lateral=True))
    ]
    for k in range(3):  # copies for the audit to find: frontals, and a training frontal put in a lateral's place
        synthetic[7 * k] = synthetic[7 * k].with_(image=train[5 * k].image.copy())
    with_lateral = next(i for i, r in enumerate(synthetic) if r.lateral is not None and i % 7)
    synthetic[with_lateral] = synthetic[with_lateral].with_(lateral=train[1].image.copy())
    write_dataset(root / "site", real)
    write_dataset(root / "synthetic", synthetic)
    return real, synthetic


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-stream")
    return (root, *_sets(root, 200, 60, 32))


def _figures(audit: dict) -> dict:
    return {k: v for k, v in audit.items() if k != "inputs"}


@pytest.mark.parametrize("copy_match, encoder", [("aligned", "pixels"), ("embedding", "selfsup")])
def test_the_streamed_audit_of_directories_gives_the_in_memory_audit_s_figures(
    small, tmp_path, monkeypatch, copy_match, encoder
):
    root, real, synthetic = small
    policy = POLICY.model_copy(update={"copy_match": copy_match, "encoder": encoder})
    train = [r for r in real if r.split == "train"]
    holdout = [r for r in real if r.split == "holdout"]
    memory, _ = audit_records(synthetic, train, holdout, policy)
    # Blocks smaller than the sets: the base's windows, the shortlist's running top k and the
    # embedding search (chunk 16) all cross block boundaries.
    monkeypatch.setattr(align, "BLOCK", 24)
    monkeypatch.setattr(align, "DECODE", 16)
    streamed = run_audit(root / "synthetic", root / "site", root / "site", policy, tmp_path / "audit")
    assert memory["checks"]["image_copies"]["copies"]  # the planted copies were found ...
    assert _figures(streamed) == _figures(memory)  # ... and every figure is the same


def test_the_aligned_searches_window_each_training_image_once(small, monkeypatch):
    """The copy search, its calibration and the two lateral searches share the training images'
    windows: each frontal and each lateral is windowed once."""
    _, real, synthetic = small
    train = [r for r in real if r.split == "train"]
    holdout = [r for r in real if r.split == "holdout"]
    windowed = []
    add = align.AlignedWindows.add

    def spy(self, images, *args, **kwargs):
        windowed.append(len(images))
        return add(self, images, *args, **kwargs)

    monkeypatch.setattr(align.AlignedWindows, "add", spy)
    audit, _ = audit_records(synthetic, train, holdout, POLICY.model_copy(update={"skip": ("phi", "membership")}))
    n_lateral = sum(r.lateral is not None for r in train)
    assert sorted(windowed) == sorted([len(train), n_lateral]) and n_lateral > 0
    # The shared windows find the planted copies, the training frontal in a lateral's place too.
    copies = audit["checks"]["image_copies"]
    assert copies["copies"] >= 4 and copies["lateral_copies"] >= 1, copies


def test_nearest_over_rows_on_disk_is_the_search_over_arrays(tmp_path):
    rng = np.random.default_rng(0)
    # 16 columns, as the encoders' 64 and 256: rows start on the same alignment in a block read
    # back from the file as in a slice of one array, so the float sums are the same.
    q, b = rng.normal(size=(37, 16)).astype(np.float32), rng.normal(size=(53, 16)).astype(np.float32)
    rq, rb = Rows(tmp_path), Rows(tmp_path)
    for s in range(0, 37, 10):
        rq.append(q[s : s + 10])
    rb.append(b)
    d, i = nearest(q, b, chunk=7)
    dr, ir = nearest(rq, rb, chunk=7)
    assert np.array_equal(d, dr) and np.array_equal(i, ir)
    brute = np.sqrt(((q[:, None] - b[None]) ** 2).sum(-1))
    assert np.array_equal(i, brute.argmin(1)) and np.allclose(d, brute.min(1), atol=1e-5)
    sub = rng.permutation(53)[:20]
    assert np.array_equal(nearest(rq, rb[sub], chunk=7)[0], nearest(q, b[sub], chunk=7)[0])


def test_the_audit_of_a_directory_never_holds_its_decoded_images(tmp_path, decoded_images):
    """Sets the in-memory audit would hold whole at once (500 studies) are audited with at most
    a batch of images decoded at any moment."""
    _sets(tmp_path, 300, 200, 16)
    policy = POLICY.model_copy(update={"skip": ("phi", "membership", "text_rare_ngrams", "text_near_duplicates")})
    run_audit(tmp_path / "synthetic", tmp_path / "site", tmp_path / "site", policy, tmp_path / "audit")
    total = sum(len(ManifestDataset.open(tmp_path / d)[0]) for d in ("site", "synthetic"))
    assert decoded_images["total"] > 2 * total  # every image was read, most of them more than once ...
    assert (
        decoded_images["peak"] <= 256 + 32 < total
    )  # ... but never more than a batch (256) and a chunk of queries at a time


def test_the_aligned_copy_threshold_is_calibrated_on_at_most_calibration_max_holdout_images(small, monkeypatch):
    from cxrsynth.privacy.audit import images
    from cxrsynth.privacy.audit.images import calibration_sample

    policy = POLICY.model_copy(update={"calibration_max": 30})
    assert np.array_equal(calibration_sample(25, policy), np.arange(25))  # fewer: all of them
    picked = calibration_sample(1000, policy)
    assert len(np.unique(picked)) == 30 and np.all(np.diff(picked) > 0) and picked.max() < 1000
    assert np.array_equal(picked, calibration_sample(1000, policy))  # the policy's seed fixes it
    # In the audit: the calibration searches read the subset, the copy searches every synthetic image.
    _, real, synthetic = small
    train = [r for r in real if r.split == "train"]
    holdout = [r for r in real if r.split == "holdout"]
    assert len(holdout) > 30
    searched = []
    real_search = images.aligned_nearest

    def spy(queries, base, **kw):
        searched.append((kw["label"].split("aligned ")[-1], len(queries)))
        return real_search(queries, base, **kw)

    monkeypatch.setattr(images, "aligned_nearest", spy)
    audit_records(synthetic, train, holdout, policy.model_copy(update={"skip": ("phi", "membership")}))
    sizes = dict(searched)
    assert sizes["holdout calibration"] == 30 and sizes["copy search"] == len(synthetic)
    n_lateral = sum(r.lateral is not None for r in holdout)
    assert sizes["lateral calibration"] == min(30, n_lateral) and n_lateral >= 20


def test_sites_audited_side_by_side_give_the_figures_of_one_site_after_another(tmp_path, monkeypatch, capfd):
    """The local audit's sites in worker processes (`audit_workers`): the same audit.json as in
    one process, the checkpoint's member scores included (its scorer is loaded in each worker)."""
    import torch
    from test_ldm import TINY

    from cxrsynth.checkpoint import save_checkpoint
    from cxrsynth.config import load_config
    from cxrsynth.models.ldm.model import Model
    from cxrsynth.privacy.audit import run

    real = split_by_patient(make_phantom(n=180, sites=3, seed=5, image_size=16, lateral=False), 0.5, 0)
    synthetic = [
        r.with_(record_id=f"syn{i}", site="synthetic", split="", phi_meta={})
        for i, r in enumerate(make_phantom(n=30, sites=1, seed=6, image_size=16, lateral=False))
    ]
    write_dataset(tmp_path / "real", real)
    write_dataset(tmp_path / "synthetic", synthetic)
    cfg = load_config("ldm-tiny", {"model": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}})
    torch.manual_seed(0)
    model = Model(cfg.model)
    model.setup(real)
    model.eval()
    save_checkpoint(tmp_path / "ck", model, cfg, save_optimizers=False)

    def audit(out, workers):
        monkeypatch.setattr(run, "audit_workers", lambda sites, records: workers)
        return run_audit(
            tmp_path / "synthetic", tmp_path / "real", tmp_path / "real", POLICY, tmp_path / out, tmp_path / "ck"
        )

    serial = audit("serial", 0)
    assert "side by side" not in capfd.readouterr().err
    parallel = audit("parallel", 2)
    assert "auditing sites site0, site1, site2 side by side (2 processes)" in capfd.readouterr().err
    assert len(serial["sites"]) == 3 and serial["checks"]["membership"]["status"] == "ran"
    assert parallel == serial
