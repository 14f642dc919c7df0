"""Phantom data: determinism, labels each visible, reports the labeler reads back, PHI, structure."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrsynth.data.labeler import label_report
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import LABELS


@pytest.fixture(scope="module")
def cohort():
    return make_phantom(600, sites=3, seed=3, image_size=48)


def test_same_seed_same_records_other_seed_differs():
    a, b, c = make_phantom(40, seed=5), make_phantom(40, seed=5), make_phantom(40, seed=6)
    assert all(
        np.array_equal(x.image, y.image) and x.report == y.report and x.phi_meta == y.phi_meta for x, y in zip(a, b)
    )
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_labeler_recovers_every_phantom_label(cohort):
    wrong = [(r.record_id, r.report) for r in cohort if label_report(r.report) != r.labels]
    assert wrong == []


def test_each_label_is_present_in_at_least_five_percent(cohort):
    for name in LABELS:
        share = np.mean([r.labels[name] == 1 for r in cohort])
        assert share >= 0.05, (name, share)
    assert any(r.labels[n] == -1 for r in cohort for n in LABELS), "reports should hedge sometimes"
    assert any(r.labels[n] == 0 for r in cohort for n in LABELS), "reports should negate sometimes"


@pytest.mark.parametrize("name", [n for n in LABELS if n != "No Finding"])
def test_each_label_changes_the_image_where_it_should(name):
    # The same studies drawn with and without one finding differ, in the frontal and the lateral.
    from cxrsynth.data import phantom as ph

    p = ph._cohort(64, 3, 11, True)
    j = ph.IDX[name]
    p["state"][:, j] = 1
    with_f, with_l = ph.draw_images(p, 48, 11)
    p["state"][:, j] = 0
    without_f, without_l = ph.draw_images(p, 48, 11)
    for a, b in ((with_f, without_f), (with_l, without_l)):
        diff = np.abs(a.astype(int) - b.astype(int)).reshape(64, -1)
        assert (diff > 30).sum(axis=1).min() >= 3, name


def test_structure_patients_sites_views_lateral_and_phi(cohort):
    patients = {}
    for r in cohort:
        patients.setdefault(r.patient_id, set()).add(r.site)
    assert max(len(s) for s in patients.values()) == 1, "a patient belongs to one site"
    assert len(patients) < len(cohort), "some patients have several studies"
    assert {r.site for r in cohort} == {"site0", "site1", "site2"}
    assert {r.view for r in cohort} == {"PA", "AP"}
    assert 0 < sum(r.lateral is None for r in cohort) < len(cohort) / 2
    for r in cohort:
        assert set(r.phi_meta) == {
            "PatientName",
            "PatientID",
            "AccessionNumber",
            "PatientBirthDate",
            "ReferringPhysicianName",
        }
        assert r.image.dtype == np.uint8 and r.image.shape == (48, 48)
    text = " ".join(r.report for r in cohort)
    assert sum(r.phi_meta["PatientID"] in r.report for r in cohort) > 0.1 * len(cohort)
    assert sum(r.phi_meta["AccessionNumber"] in r.report for r in cohort) > 0.1 * len(cohort)
    last_names = [r.phi_meta["PatientName"].split("^")[0] for r in cohort]
    assert sum(n in r.report.upper() for n, r in zip(last_names, cohort)) > 0.1 * len(cohort)
    import re

    assert re.search(r"\b(9\d|100)[- ]year[- ]old\b", text), "ages over 89 appear"
    assert re.search(r"\(\d{3}\) \d{3}-\d{4}|\d{3}-\d{3}-\d{4}", text), "phone numbers appear"


def test_sites_differ_in_acquisition(cohort):
    stats = {}
    for r in cohort:
        stats.setdefault(r.site, []).append(float(r.image.mean()))
    means = sorted(np.mean(v) for v in stats.values())
    assert means[-1] - means[0] > 8


def test_small_cnn_learns_the_labels_from_phantom_images():
    # 600 studies at 32x32, a three-layer CNN, 8 epochs: a few seconds on one CPU core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_and_score_cnn()
    finally:
        torch.set_num_threads(threads)


def _train_and_score_cnn():
    torch.manual_seed(0)
    recs = make_phantom(600, sites=3, seed=21, image_size=32)
    x = torch.tensor(np.stack([r.image for r in recs]), dtype=torch.float32)[:, None] / 255.0
    # Per-image standardisation removes most of the site's exposure and contrast.
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-3)
    y = torch.tensor(np.stack([r.label_vector(uncertain_as=0.0) for r in recs]))
    xtr, ytr, xte, yte = x[:450], y[:450], x[450:], y[450:]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, len(LABELS)),
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(8):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 32):
            b = perm[i : i + 32]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = net(xte).numpy()
    aucs = {n: roc_auc_score(yte[:, j], scores[:, j]) for j, n in enumerate(LABELS) if 0 < yte[:, j].sum() < len(yte)}
    assert len(aucs) == len(LABELS)
    assert np.mean(list(aucs.values())) > 0.75, aucs
    assert sum(a > 0.6 for a in aucs.values()) >= 12, aucs
