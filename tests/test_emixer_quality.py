"""EMIXER after a short CPU training on phantom data: do images and reports follow the labels?

Two measurements on records generated from the label combinations of held-out real records:
- report agreement: the rule labeler (negation-aware) reads each generated report; per label,
  balanced accuracy of "labeler says positive" against "conditioned positive", averaged over
  labels, and Cohen's kappa over all (record, label) pairs; chance is what 200 shuffles of the
  conditions across the same reports give (a permutation test);
- image agreement: per label, a logistic regression trained on real phantom images scores each
  generated image; AUC of that score against the conditioning label (chance: 0.5). Only labels
  the classifier recognises on real held-out images (AUC >= 0.75) count.
Slow (about 15 minutes on one CPU thread): run with `pytest -m slow tests/test_emixer_quality.py -s`
(`EMIXER_QUALITY_SEED=3 ...` for another seed).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cxrsynth.config import load_config
from cxrsynth.data.labeler import label_report
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import LABELS
from cxrsynth.data.split import split_by_patient
from cxrsynth.models import build_model
from cxrsynth.train import seed_everything, train_steps

QUALITY_RUN = {
    "model": {"vocab_size": 192},
    "data": {"phantom": {"n": 800, "sites": 1, "image_size": 32, "lateral": False}},
    "train": {"steps": 1250, "batch_size": 32},
}
MIN_CLASS = 10  # a label counts when at least this many generated records are on each side
PERMUTATIONS = 200


def _positive(labels: dict, name: str) -> bool:
    return labels.get(name) == 1


def _matrix(label_dicts) -> np.ndarray:
    return np.array([[_positive(d, n) for n in LABELS] for d in label_dicts], dtype=bool)


def balanced_accuracy(cond: np.ndarray, said: np.ndarray) -> dict[str, float]:
    """Per label, balanced accuracy of "labeler says positive" against "conditioned positive"."""
    out = {}
    for j, name in enumerate(LABELS):
        c, s = cond[:, j], said[:, j]
        if c.sum() >= MIN_CLASS and (~c).sum() >= MIN_CLASS:
            out[name] = 0.5 * (s[c].mean() + (~s[~c]).mean())
    return out


def kappa(cond: np.ndarray, said: np.ndarray) -> float:
    """Cohen's kappa over all (record, label) pairs (chance: 0)."""
    c, s = cond.ravel(), said.ravel()
    expected = c.mean() * s.mean() + (1 - c.mean()) * (1 - s.mean())
    return float(((c == s).mean() - expected) / (1 - expected)) if expected < 1 else 0.0


def report_agreement(generated, seed: int = 0) -> dict:
    """How the labeler's reading of the reports agrees with the conditions, and the same for
    conditions shuffled across records (a permutation test: what chance gives on these reports)."""
    said = _matrix([label_report(r.report) for r in generated])
    cond = _matrix([r.labels for r in generated])
    per_label = balanced_accuracy(cond, said)
    rng = np.random.default_rng(seed)
    null_ba, null_kappa = [], []
    for _ in range(PERMUTATIONS):
        shuffled = cond[rng.permutation(len(cond))]
        null_ba.append(np.mean(list(balanced_accuracy(shuffled, said).values()) or [np.nan]))
        null_kappa.append(kappa(shuffled, said))
    ba = float(np.mean(list(per_label.values()))) if per_label else float("nan")
    k = kappa(cond, said)
    return {
        "report_balanced_accuracy": ba,
        "report_balanced_accuracy_shuffled": float(np.nanmean(null_ba)),
        "report_balanced_accuracy_p": float((1 + np.sum(np.array(null_ba) >= ba)) / (1 + PERMUTATIONS)),
        "report_kappa": k,
        "report_kappa_shuffled": float(np.mean(null_kappa)),
        "report_kappa_p": float((1 + np.sum(np.array(null_kappa) >= k)) / (1 + PERMUTATIONS)),
        "report_per_label": per_label,
    }


def _pixels(records) -> np.ndarray:
    return np.stack([r.image.astype(np.float32).ravel() / 255.0 for r in records])


def image_agreement(real_train, real_holdout, generated) -> tuple[dict[str, float], dict[str, float]]:
    """(AUC on real held-out images, AUC on generated images against their conditions) per label."""
    xt, xh, xg = _pixels(real_train), _pixels(real_holdout), _pixels(generated)
    on_real, on_gen = {}, {}
    for name in LABELS:
        yt = np.array([_positive(r.labels, name) for r in real_train])
        yh = np.array([_positive(r.labels, name) for r in real_holdout])
        yg = np.array([_positive(r.labels, name) for r in generated])
        if min(yt.sum(), (~yt).sum()) < MIN_CLASS or min(yh.sum(), (~yh).sum(), yg.sum(), (~yg).sum()) < MIN_CLASS:
            continue
        clf = LogisticRegression(C=0.05, max_iter=2000).fit(xt, yt)
        on_real[name] = roc_auc_score(yh, clf.decision_function(xh))
        if on_real[name] >= 0.75:
            on_gen[name] = roc_auc_score(yg, clf.decision_function(xg))
    return on_real, on_gen


def train_quality_model(run: dict = QUALITY_RUN, seed: int = 0):
    torch.set_num_threads(1)
    cfg = load_config("emixer-tiny", run)
    seed_everything(seed)
    p = cfg.data.phantom
    records = split_by_patient(
        make_phantom(p.n, sites=p.sites, seed=seed, image_size=p.image_size, lateral=False), 0.25, seed
    )
    train = [r for r in records if r.split == "train"]
    holdout = [r for r in records if r.split == "holdout"]
    model = build_model(cfg.model)
    model.setup(train)
    model.opts = model.make_optimizers()
    return cfg, model, train, holdout


def evaluate(model, train, holdout, n: int = 600, seed: int = 1) -> dict:
    conditions = [holdout[i % len(holdout)].labels for i in range(n)]
    generated = model.generate(n, conditions, seed=seed)
    real_auc, gen_auc = image_agreement(train, holdout, generated)
    return {
        **report_agreement(generated, seed),
        "image_auc_generated": float(np.mean(list(gen_auc.values()))) if gen_auc else float("nan"),
        "image_auc_real_holdout": real_auc,
        "image_per_label": gen_auc,
        "example": generated[0].report,
    }


@pytest.fixture(scope="module")
def quality() -> dict:
    # EMIXER_QUALITY_SEED=s repeats the run on other phantom data, weights and batch order (the
    # batch order from its own stream, seed * 7919, as the README's seed figures were measured).
    seed = int(os.environ.get("EMIXER_QUALITY_SEED", "0"))
    cfg, model, train, holdout = train_quality_model(seed=seed)
    t0 = time.perf_counter()
    train_steps(
        model, train, steps=cfg.train.steps, batch_size=cfg.train.batch_size, seed=seed * 7919, log_every=10**6
    )
    seconds = time.perf_counter() - t0
    m = evaluate(model, train, holdout)
    print(f"\nEMIXER quality, seed {seed}, after {cfg.train.steps} steps ({seconds:.0f}s): {m}")
    return m


@pytest.mark.slow
def test_generated_images_follow_their_labels(quality):
    assert quality["image_auc_generated"] > 0.6


@pytest.mark.slow
def test_generated_reports_follow_their_labels(quality):
    # Better than chance beyond doubt: above every one of 200 shuffles of the conditions ...
    assert quality["report_balanced_accuracy_p"] < 0.01 and quality["report_kappa_p"] < 0.01
    # ... and clearly: kappa 0.2 above chance, balanced accuracy 0.1 above it (seeds 0, 1, 3
    # and 4 gave 0.30-0.34 and 0.14-0.17 above).
    assert quality["report_kappa"] > quality["report_kappa_shuffled"] + 0.2
    assert quality["report_balanced_accuracy"] > quality["report_balanced_accuracy_shuffled"] + 0.1
