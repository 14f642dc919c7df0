"""The evaluation's building blocks on inputs whose answers are known by hand."""

import math

import numpy as np
import pytest
import torch

from cxrsynth.data.records import LABELS, Record, empty_labels
from cxrsynth.errors import InputError
from cxrsynth.eval.classifier import load_classifier, save_classifier, train_classifier
from cxrsynth.eval.diversity import group_by_condition, ms_ssim, n_scales, within_condition_ms_ssim
from cxrsynth.eval.fidelity import classifier_extractor, file_extractor, frechet_distance
from cxrsynth.eval.labels import label_agreement
from cxrsynth.eval.text_metrics import report_metrics


def toy_records(n: int, seed: int = 0, size: int = 32, prefix: str = "r", negatives: bool = False) -> list[Record]:
    """Studies whose image plainly shows their labels: a bright disc for Cardiomegaly, a bright
    bottom band for Pleural Effusion; reports say the same. Independent of the phantom's details.
    The other labels are not stated, or with `negatives` stated negative, as a labelled dataset
    with every column filled states them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        cardio, effusion = int(rng.random() < 0.4), int(rng.random() < 0.4)
        img = rng.normal(60, 20, (size, size))
        if cardio:
            img[(xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.06] += 120
        if effusion:
            img[yy > 0.75] += 120
        labels = {name: 0 for name in LABELS} if negatives else empty_labels()
        labels.update(
            {"Cardiomegaly": cardio, "Pleural Effusion": effusion, "No Finding": int(not (cardio or effusion))}
        )
        findings = ("The heart is enlarged." if cardio else "Heart size is normal.") + (
            " There is a pleural effusion." if effusion else " No pleural effusion."
        )
        out.append(
            Record(
                f"{prefix}{i}",
                f"{prefix}p{i // 2}",
                f"{prefix}s{i}",
                site=f"site{i % 3}",
                findings=findings,
                impression="Abnormal." if cardio or effusion else "Normal.",
                labels=labels,
                image=np.clip(img, 0, 255).astype(np.uint8),
            )
        )
    return out


def test_bleu_matches_hand_count():
    # 5 of 6 unigrams and 3 of 5 bigrams match; equal lengths, so no brevity penalty.
    b = report_metrics(["the cat is on the mat"], [["the cat sat on the mat"]])
    assert b["bleu_1"] == pytest.approx(5 / 6)
    assert b["bleu_2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert report_metrics(["a b c d e"], [["a b c d e"]])["bleu_4"] == pytest.approx(1.0)


def test_bleu_brevity_penalty_and_clipping():
    short = report_metrics(["the cat"], [["the cat sat on the mat"]])
    assert short["bleu_1"] == pytest.approx(math.exp(1 - 6 / 2))
    # "the the the" may only be credited as often as "the" appears in the reference (twice).
    assert report_metrics(["the the the"], [["the cat the"]])["bleu_1"] == pytest.approx(2 / 3)


def test_rouge_l_lcs():
    assert report_metrics(["the cat is on the mat"], [["the cat sat on the mat"]])["rouge_l"] == pytest.approx(5 / 6)
    assert report_metrics(["x y z"], [["a b c"]])["rouge_l"] == 0.0
    # best over references
    assert report_metrics(["a b c"], [["x y z", "a b c"]])["rouge_l"] == pytest.approx(1.0)


def test_cider_identical_is_ten_and_unrelated_is_zero():
    refs = [["heart size is normal"], ["small left pleural effusion"], ["no pneumothorax is seen"]]
    assert report_metrics([r[0] for r in refs], refs)["cider_d"] == pytest.approx(10.0)
    swapped = report_metrics(["small left pleural effusion", "no pneumothorax is seen", "heart size is normal"], refs)
    assert swapped["cider_d"] < 1.0
    m = report_metrics(["heart size is normal"], [["heart size is normal", "the heart is enlarged"]])
    assert m["n"] == 1 and m["rouge_l"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no reference"):
        report_metrics(["heart size is normal"], [[]])


def test_frechet_distance_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) + np.array([2.0, 0.0, 0.0])
    # Same covariance, means 2 apart: the distance is |mu_a - mu_b|^2 = 4.
    assert frechet_distance(a, b) == pytest.approx(4.0, abs=0.25)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Scaled covariance: Tr(I + 4I - 2*2I) = 3 per the closed form.
    assert frechet_distance(a, 2 * rng.normal(size=(4000, 3))) == pytest.approx(3.0, abs=0.3)
    with pytest.raises(InputError):
        frechet_distance(a[:1], b)


def test_frechet_distance_singular_covariance_is_finite():
    rng = np.random.default_rng(1)
    assert np.isfinite(frechet_distance(rng.normal(size=(5, 32)), rng.normal(size=(5, 32))))


def test_ms_ssim_identity_noise_and_symmetry():
    rng = np.random.default_rng(0)
    img = toy_records(1, size=64)[0].image
    noisy = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(img + rng.normal(0, 60, img.shape), 0, 255).astype(np.uint8)
    v = ms_ssim([img, img, img], [img, noisy, noisier])
    assert v[0] == pytest.approx(1.0)
    assert 1.0 > v[1] > v[2] >= 0.0
    assert ms_ssim([noisy], [img])[0] == pytest.approx(v[1])
    assert n_scales(64) == 3 and n_scales(256) == 5
    with pytest.raises(ValueError, match="at least 11x11"):
        ms_ssim([img[:8, :8]], [img[:8, :8]])


def test_diversity_lower_for_varied_samples():
    recs = toy_records(40, seed=3, size=64)
    groups = group_by_condition(recs)
    assert sum(len(g) for g in groups.values()) == 40
    base = recs[0]
    copies = [base.with_(record_id=f"c{i}") for i in range(4)]
    same = within_condition_ms_ssim(copies, 4, 8, 64)
    assert same["mean"] == pytest.approx(1.0) and same["pairs"] == 6
    varied = within_condition_ms_ssim(recs, 4, 8, 64)
    assert varied["mean"] < same["mean"]


def test_classifier_learns_and_roundtrips_as_extractor(tmp_path):
    torch.set_num_threads(1)
    recs = toy_records(120)
    model = train_classifier(recs[:80], image_size=32, width=8, steps=60, seed=0)
    from cxrsynth.eval.utility import auroc_per_label

    auc = auroc_per_label(model, recs[80:], 1.0)
    assert auc["Cardiomegaly"] > 0.8 and auc["Pleural Effusion"] > 0.8
    path = save_classifier(model, tmp_path / "clf.safetensors")
    a = classifier_extractor(model, "trained")([r.image for r in recs[:5]])
    b = file_extractor(path, 32)([r.image for r in recs[:5]])
    assert a.shape == (5, 32) and np.allclose(a, b)
    exported = tmp_path / "feat.pt2"
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        load_classifier(path).body, (torch.zeros(2, 1, 32, 32),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(exported))
    c = file_extractor(exported, 32)
    assert c.dim == 32 and np.allclose(c([r.image for r in recs[:5]]), a, atol=1e-5)


def test_extractor_file_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        file_extractor(tmp_path / "missing.pt", 32)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="TorchScript"):
        file_extractor(bad, 32)
    bad_export = tmp_path / "bad.pt2"
    bad_export.write_bytes(b"not a program")
    with pytest.raises(InputError, match="torch.export"):
        file_extractor(bad_export, 32)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="safetensors"):
        file_extractor(bad_st, 32)


def test_label_agreement_counts_mismatches():
    recs = toy_records(10, size=16)

    def labeler(text):
        return {"Cardiomegaly": 1 if "enlarged" in text else 0}

    res = label_agreement(recs, labeler)
    assert res["n"] == 10
    assert res["positive_f1"]["Cardiomegaly"] == 1.0
    flipped = label_agreement(recs, lambda text: {"Cardiomegaly": 0 if "enlarged" in text else 1})
    assert flipped["exact_agreement"] < res["exact_agreement"]


def test_paired_augmentation_keeps_the_real_updates_that_pooling_gives_away():
    """Ten times as many uninformative synthetic records (blank images, random labels): pooled
    batches give the real data a tenth of the steps, paired batches keep all of them."""
    from cxrsynth.eval.utility import auroc_per_label, macro

    torch.set_num_threads(1)
    recs = toy_records(120, negatives=True)
    real, holdout = recs[:80], recs[80:]
    rng = np.random.default_rng(0)
    names = ("Cardiomegaly", "Pleural Effusion")
    junk = [
        real[0].with_(
            record_id=f"j{i}",
            image=np.full_like(real[0].image, 128),
            labels={**real[0].labels, **{n: int(rng.integers(0, 2)) for n in names}},
        )
        for i in range(800)
    ]
    kw = dict(image_size=32, width=8, steps=60, seed=0)
    alone = macro(auroc_per_label(train_classifier(real, **kw), holdout, 1.0))
    paired = macro(auroc_per_label(train_classifier(real, extra=junk, **kw), holdout, 1.0))
    pooled = macro(auroc_per_label(train_classifier(real + junk, **kw), holdout, 1.0))
    assert paired > pooled + 0.05
    assert paired > alone - 0.1


def test_each_site_is_scored_alone_and_with_the_release_which_adds_what_its_images_show():
    """Three sites of 4 training studies each: the synthetic set (images that show their labels)
    makes every site's classifier better than its own records alone, and better than the same
    records with an uninformative base-only set (blank images, random labels); one site alone
    has no per-site table."""
    from cxrsynth.eval.config import EvalConfig
    from cxrsynth.eval.utility import per_site

    torch.set_num_threads(1)
    real, holdout = toy_records(12, negatives=True), toy_records(120, seed=2)
    synthetic = toy_records(300, seed=1, prefix="s", negatives=True)
    rng = np.random.default_rng(0)
    junk = [
        r.with_(image=np.full_like(r.image, 128), labels=synthetic[j].labels)
        for r, j in zip(synthetic, rng.permutation(len(synthetic)))
    ]
    cfg = EvalConfig(image_size=32, classifier_width=8, classifier_steps=5, batch_size=8)
    sites = per_site(real, holdout, cfg, {"synthetic": synthetic, "base-only": junk})
    assert sorted(sites) == ["site0", "site1", "site2"]
    for site, v in sites.items():
        assert v["train_records"] == 4
        assert set(v["macro_auroc"]) == {"own", "own+synthetic", "own+base-only"}
        assert v["release_gain"] == pytest.approx(v["macro_auroc"]["own+synthetic"] - v["macro_auroc"]["own"])
        assert v["release_gain"] > 0.04 and v["gain_over_base"] > 0.04, (site, v)
    assert per_site([r.with_(site="site0") for r in real], holdout, cfg, {"synthetic": synthetic}) is None


def test_the_classifiers_trained_in_worker_processes_score_what_they_score_one_after_another():
    """Every arm and every site's arms, two seeds: side by side in two spawned workers, the
    figures and the real-only classifier kept for FID are those of one process training them in
    turn; the automatic choice stays in this process for a small evaluation."""
    from cxrsynth.eval.config import EvalConfig
    from cxrsynth.eval.utility import utility, workers_for

    torch.set_num_threads(1)
    real, holdout = toy_records(30), toy_records(60, seed=2)
    synthetic, base = toy_records(40, seed=1, prefix="s"), toy_records(40, seed=3, prefix="b")
    settings = dict(image_size=32, classifier_width=8, classifier_steps=6, batch_size=8, seeds=2)
    serial, model_a = utility(real, synthetic, holdout, EvalConfig(**settings, workers=1), baseline=base)
    parallel, model_b = utility(real, synthetic, holdout, EvalConfig(**settings, workers=2), baseline=base)
    assert serial == parallel
    assert sorted(serial["sites"]) == ["site0", "site1", "site2"]
    assert len(serial["arms"]["real"]["macro_auroc_per_seed"]) == 2
    images = torch.rand(4, 1, 32, 32)
    assert torch.equal(model_a(images), model_b(images))
    assert workers_for(EvalConfig(**settings), 26) == 1  # 26 classifiers x 6 steps: not worth a worker
    assert workers_for(EvalConfig(**{**settings, "workers": 3}), 2) == 2


def test_a_label_column_a_set_leaves_empty_is_not_read_as_negative():
    """A release that dropped Cardiomegaly (its column empty in every row) adds no Cardiomegaly
    loss: its enlarged hearts do not teach the classifier that enlarged hearts are normal, as the
    same rows with the column filled in as negative do."""
    from cxrsynth.data.stream import ImageColumn
    from cxrsynth.eval.classifier import predict

    torch.set_num_threads(1)
    real, holdout = toy_records(40), toy_records(150, seed=2)
    synthetic = [r for r in toy_records(300, seed=1, prefix="s") if r.labels["Cardiomegaly"] == 1]
    dropped = [r.with_(labels={**r.labels, "Cardiomegaly": None}) for r in synthetic]
    negative = [r.with_(labels={**r.labels, "Cardiomegaly": 0}) for r in synthetic]
    kw = dict(image_size=32, width=8, steps=80, seed=0)
    enlarged = [r for r in holdout if r.labels["Cardiomegaly"] == 1]
    j = 1  # Cardiomegaly in LABELS

    def read_as_enlarged(extra) -> float:
        return float(predict(train_classifier(real, extra=extra, **kw), ImageColumn(enlarged))[:, j].mean())

    alone = read_as_enlarged(())
    assert read_as_enlarged(negative) < 0.5 < alone
    assert read_as_enlarged(dropped) > alone - 0.15
