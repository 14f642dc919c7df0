"""EMIXER after a short CPU training on phantom data: do images and reports follow the labels?

Two measurements on records generated from the label combinations of held-out real records:
- report agreement: the rule labeler (negation-aware) reads each generated report; per label,
  balanced accuracy of "labeler says positive" against "conditioned positive" (chance: 0.5);
- image agreement: per label, a logistic regression trained on real phantom images scores each
  generated image; AUC of that score against the conditioning label (chance: 0.5). Only labels
  the classifier recognises on real held-out images (AUC >= 0.75) count.
Slow (minutes): run with `pytest -m slow tests/test_emixer_quality.py -s`.
"""

from __future__ import annotations

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
    "train": {"steps": 600, "batch_size": 32},
}
MIN_CLASS = 10  # a label counts when at least this many generated records are on each side


def _positive(labels: dict, name: str) -> bool:
    return labels.get(name) == 1


def report_agreement(generated) -> dict[str, float]:
    """Per-label balanced accuracy of the labeler's reading of each report against its condition."""
    read = [label_report(r.report) for r in generated]
    out = {}
    for name in LABELS:
        cond = np.array([_positive(r.labels, name) for r in generated])
        said = np.array([_positive(x, name) for x in read])
        if cond.sum() < MIN_CLASS or (~cond).sum() < MIN_CLASS:
            continue
        out[name] = 0.5 * (said[cond].mean() + (~said[~cond]).mean())
    return out


def pooled_kappa(generated) -> float:
    """Cohen's kappa of (record, label) pairs: labeler-positive vs conditioned-positive (chance: 0)."""
    read = [label_report(r.report) for r in generated]
    cond = np.array([[_positive(r.labels, n) for n in LABELS] for r in generated]).ravel()
    said = np.array([[_positive(x, n) for n in LABELS] for x in read]).ravel()
    observed = (cond == said).mean()
    expected = cond.mean() * said.mean() + (1 - cond.mean()) * (1 - said.mean())
    return float((observed - expected) / (1 - expected)) if expected < 1 else 0.0


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
    records = split_by_patient(make_phantom(p.n, sites=p.sites, seed=seed, image_size=p.image_size, lateral=False), 0.25, seed)
    train = [r for r in records if r.split == "train"]
    holdout = [r for r in records if r.split == "holdout"]
    model = build_model(cfg.model)
    model.setup(train)
    model.opts = model.make_optimizers()
    return cfg, model, train, holdout


def evaluate(model, train, holdout, n: int = 300, seed: int = 1) -> dict:
    conditions = [holdout[i % len(holdout)].labels for i in range(n)]
    generated = model.generate(n, conditions, seed=seed)
    rep = report_agreement(generated)
    real_auc, gen_auc = image_agreement(train, holdout, generated)
    shuffled = [g.with_(labels=c) for g, c in zip(generated, np.random.default_rng(seed).permutation(np.array(conditions, dtype=object)))]
    return {
        "report_balanced_accuracy": float(np.mean(list(rep.values()))) if rep else float("nan"),
        "report_balanced_accuracy_shuffled": float(np.mean(list(report_agreement(shuffled).values()) or [np.nan])),
        "report_kappa": pooled_kappa(generated),
        "report_kappa_shuffled": pooled_kappa(shuffled),
        "report_per_label": rep,
        "image_auc_generated": float(np.mean(list(gen_auc.values()))) if gen_auc else float("nan"),
        "image_auc_real_holdout": real_auc,
        "image_per_label": gen_auc,
        "example": generated[0].report,
    }


@pytest.fixture(scope="module")
def quality() -> dict:
    cfg, model, train, holdout = train_quality_model()
    t0 = time.perf_counter()
    train_steps(model, train, steps=cfg.train.steps, batch_size=cfg.train.batch_size, seed=0)
    seconds = time.perf_counter() - t0
    m = evaluate(model, train, holdout)
    print(f"\nEMIXER quality after {cfg.train.steps} steps ({seconds:.0f}s): {m}")
    return m


@pytest.mark.slow
def test_generated_images_follow_their_labels(quality):
    assert quality["image_auc_generated"] > 0.6


@pytest.mark.slow
def test_generated_reports_follow_their_labels(quality):
    assert quality["report_balanced_accuracy"] > 0.6 > quality["report_balanced_accuracy_shuffled"]
    assert quality["report_kappa"] > quality["report_kappa_shuffled"] + 0.1
