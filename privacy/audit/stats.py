"""Bootstrap confidence intervals, ROC-based membership figures."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def percentile_ci(replicates: np.ndarray, confidence: float) -> list[float]:
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(replicates, [tail, 1 - tail])
    return [float(lo), float(hi)]


def closeness_replicates(closer: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the share of synthetic records closer to training than holdout.

    The resampling indices depend only on (seed, number of synthetic records), so every site draws
    the same resamples of the same synthetic set and the steward may average replicates across
    sites without breaking their correlation. The reference sets are not resampled: a nearest-
    neighbour minimum over a resample with replacement swings with whether one central image
    is drawn, which measures the resampling, not the model.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(closer), size=(n_boot, len(closer)))
    return closer[idx].mean(axis=1)


def closeness_null(
    closer: np.ndarray, nearest_ref: np.ndarray, patients: Sequence[str], n_train_side: int, n_perm: int, seed: int
) -> np.ndarray:
    """Shares nearer training that a model with no memory of who is in training would score: the
    reference patients (training then holdout records, `patients[k]` the patient of record k) dealt
    at random between two sides, the training side filled with whole patients up to
    `n_train_side` records.

    A synthetic image is nearer the training side than the holdout side exactly when its nearest
    reference of all (`nearest_ref`) is on the training side, so each deal costs one look-up. The
    spread of these shares is how much the reference patients alone move the share (a few
    references near many synthetic images swing it), which a bootstrap over synthetic images
    does not see. Ties (`closer` 0.5) stay 0.5.
    """
    rng = np.random.default_rng([seed, 7])
    ids, group = np.unique(np.asarray(patients), return_inverse=True)
    sizes = np.bincount(group, minlength=len(ids))
    tie = closer == 0.5
    out = np.empty(n_perm)
    for b in range(n_perm):
        order = rng.permutation(len(ids))
        train_side = np.zeros(len(ids), dtype=bool)
        train_side[order[np.cumsum(sizes[order]) <= n_train_side]] = True
        on_train = train_side[group][nearest_ref].astype(np.float64)
        on_train[tie] = 0.5
        out[b] = on_train.mean()
    return out


def permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided p-value of `observed` against draws `null` of the statistic under no effect."""
    return float((1 + np.sum(np.asarray(null) >= observed - 1e-12)) / (len(null) + 1))


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_target: float = 0.01) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    # The largest TPR reachable without exceeding the target FPR (no interpolation past it).
    ok = fpr <= fpr_target
    return float(tpr[ok].max()) if ok.any() else 0.0


def membership_figures(member: np.ndarray, nonmember: np.ndarray, n_boot: int, seed: int) -> dict:
    """AUC and TPR at 1% FPR of 'score > threshold means member', with stratified bootstrap replicates."""
    member = np.asarray(member, dtype=np.float64)
    nonmember = np.asarray(nonmember, dtype=np.float64)
    labels = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
    scores = np.r_[member, nonmember]
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    tprs = np.empty(n_boot)
    for b in range(n_boot):
        m = member[rng.integers(0, len(member), len(member))]
        nm = nonmember[rng.integers(0, len(nonmember), len(nonmember))]
        lab = labels
        sc = np.r_[m, nm]
        aucs[b] = roc_auc_score(lab, sc)
        tprs[b] = tpr_at_fpr(lab, sc)
    fpr, tpr, _ = roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "tpr_at_1pct_fpr": tpr_at_fpr(labels, scores),
        "auc_replicates": aucs,
        "tpr_replicates": tprs,
        "roc": {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()},
    }
