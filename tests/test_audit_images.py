"""Image memorization: chunked search, canaries (planted disguised copies), encoders."""

import numpy as np
import pytest
import torch
from test_audit_support import varied_records

from cxrsynth.config import AuditPolicy
from cxrsynth.errors import InputError
from cxrsynth.privacy.audit.canary import DISGUISES, disguise_image
from cxrsynth.privacy.audit.encoders import ConvEncoder, PixelEncoder, load_file_encoder, make_encoder, save_selfsup
from cxrsynth.privacy.audit.images import image_memorization
from cxrsynth.privacy.audit.neighbors import nearest


def test_chunked_search_equals_brute_force():
    rng = np.random.default_rng(0)
    q, b = rng.normal(size=(137, 24)).astype(np.float32), rng.normal(size=(301, 24)).astype(np.float32)
    d, i = nearest(q, b, chunk=16)
    full = torch.cdist(torch.as_tensor(q, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    np.testing.assert_array_equal(i, full.argmin(1).numpy())
    np.testing.assert_allclose(d, full.min(1).values.numpy(), rtol=1e-4, atol=1e-4)


def _canary_run(per_kind: int, n_unseen: int, n_train: int, policy: AuditPolicy, n_holdout: int = 100):
    train = varied_records(n_train, 1, prefix="t")
    holdout = varied_records(n_holdout, 2, split="holdout", prefix="h")
    unseen = varied_records(n_unseen, 3, prefix="u")
    rng = np.random.default_rng(5)
    planted = []
    for kind in DISGUISES:
        for j in range(per_kind):
            src = train[rng.integers(len(train))]
            planted.append(
                (kind, src, src.with_(record_id=f"c-{kind}-{j}", image=disguise_image(src.image, kind, rng)))
            )
    synthetic = [p[2] for p in planted] + [r.with_(record_id=f"u-{r.record_id}") for r in unseen]
    encoder = make_encoder(policy, [r.image for r in train])
    figures, pairs = image_memorization(encoder, synthetic, train, holdout, policy, "site0")
    flagged = set(figures["copies"])
    caught = {kind: np.mean([p[2].record_id in flagged for p in planted if p[0] == kind]) for kind in DISGUISES}
    false_flags = np.mean([f"u-{r.record_id}" in flagged for r in unseen])
    sources = {p.synthetic_id: p.train_record_id for p in pairs}
    right = np.mean([sources.get(p[2].record_id) == p[1].record_id for p in planted])
    return caught, false_flags, right


def test_planted_copies_caught_unseen_patients_not():
    caught, false_flags, right_source = _canary_run(
        per_kind=3, n_unseen=50, n_train=100, policy=AuditPolicy(bootstrap=50), n_holdout=60
    )
    assert all(rate == 1.0 for rate in caught.values()), caught
    assert false_flags <= 0.02
    assert right_source == 1.0  # each copy is traced to the training record it copies


@pytest.mark.slow
def test_canary_catch_rates_at_scale():
    caught, false_flags, right_source = _canary_run(
        per_kind=50, n_unseen=500, n_train=600, policy=AuditPolicy(bootstrap=200), n_holdout=200
    )
    print(
        f"catch rates {caught}, unseen patients flagged {false_flags:.4f}, copies traced to their source {right_source:.3f}"
    )
    assert all(rate >= 0.99 for rate in caught.values()), caught
    assert false_flags <= 0.02


def test_embedding_match_misses_what_alignment_catches():
    """The plain pixel embedding is not enough for shifted copies: the reason alignment is the default."""
    caught, _, _ = _canary_run(
        per_kind=6, n_unseen=10, n_train=100, policy=AuditPolicy(bootstrap=50, copy_match="embedding"), n_holdout=60
    )
    assert caught["exact"] == 1.0 and caught["noised"] == 1.0
    assert caught["shifted"] < 1.0


def test_pixel_encoder_ignores_brightness_and_contrast():
    img = varied_records(1, 0)[0].image
    e = PixelEncoder(16)
    a, b = e.embed([img]), e.embed([np.clip(img * 0.8 + 30, 0, 255).astype(np.uint8)])
    other = e.embed([varied_records(2, 9)[1].image])
    assert np.linalg.norm(a - b) < 0.05 < np.linalg.norm(a - other)


def test_file_encoders_torchscript_and_safetensors(tmp_path):
    imgs = [r.image for r in varied_records(4, 0)]
    net = ConvEncoder().eval()
    ts = tmp_path / "enc.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(2, 1, 64, 64)), str(ts))
    st = tmp_path / "enc.safetensors"
    save_selfsup(net, st)
    a = load_file_encoder(ts).embed(imgs)
    b = load_file_encoder(st).embed(imgs)
    assert a.shape == (4, 64)
    np.testing.assert_allclose(a, b, atol=1e-5)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.pt"):
        load_file_encoder(bad)
    with pytest.raises(InputError, match="encoder_weights"):
        make_encoder(AuditPolicy(encoder="file"), imgs)


def test_selfsup_encoder_trains_on_site_images():
    train = varied_records(40, 1)
    enc = make_encoder(AuditPolicy(encoder="selfsup", selfsup_steps=5), [r.image for r in train])
    e = enc.embed([r.image for r in train[:5]])
    assert e.shape == (5, 64) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)


def test_too_small_holdout_is_refused():
    recs = varied_records(30, 1)
    with pytest.raises(InputError, match="holdout"):
        image_memorization(PixelEncoder(), recs[:5], recs[:20], recs[20:25], AuditPolicy(), "siteX")
