"""How far a utility figure would move with another holdout: a paired bootstrap over its records.

Every utility arm is scored on one holdout of a few hundred records, with a dozen or two
positives for the rarer labels; a label's AUROC on so few positives moves by several hundredths
with the records drawn, and the macro AUROC with it. The comparisons the evaluation reports
(real + synthetic against real-only, synthetic-only over real-only, fine-tuned against base-only,
each hospital with the release against alone) are of arms scored on the same records, so each is
recomputed on resamples of the holdout's records, drawn with replacement, the same resample for
both arms (a paired bootstrap). The classifiers stay as trained: the interval is the holdout's
share of the uncertainty, while the spread over classifier seeds is `macro_auroc_per_seed`.

A label's AUROC on a resample is the Mann-Whitney statistic with each record counted as often as
it was drawn (ties count one half), so with every record drawn once it is `roc_auc_score`'s.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

LEVEL = 0.95


class HoldoutResamples:
    """`resamples` draws of the holdout's records (as counts per record) for labels `truth` (N, L)."""

    def __init__(self, truth: np.ndarray, resamples: int, seed: int = 0):
        self.truth = np.asarray(truth, dtype=bool)
        n = len(self.truth)
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n, size=(resamples, n))
        self.counts = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)
        # Labels with both classes in the whole holdout: the ones the point estimate averages.
        positives = self.truth.sum(0)
        self.labels = [j for j in range(self.truth.shape[1]) if 0 < positives[j] < n]

    def macro(self, probs_per_seed: Sequence[np.ndarray]) -> np.ndarray:
        """Macro AUROC on each resample, (resamples,): per label the mean over the seeds'
        classifiers, then the mean over labels, as the point estimate is computed; a label left
        with one class in a resample is left out of that resample's mean."""
        per_label = np.stack([self.label_auroc(probs_per_seed, j) for j in self.labels], axis=1)
        with np.errstate(invalid="ignore"):
            return np.nanmean(per_label, axis=1)

    def label_auroc(
        self, probs_per_seed: Sequence[np.ndarray], j: int, counts: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """Label j's AUROC on each resample (or on `counts`, (B, N)), mean over the seeds; NaN
        where a resample drew no positive or no negative."""
        counts = self.counts if counts is None else counts
        pos = self.truth[:, j]
        pairs = counts[:, pos].sum(1) * counts[:, ~pos].sum(1)
        total = np.zeros(len(counts))
        for probs in probs_per_seed:
            ranked = _Ranked(np.asarray(probs)[:, j], pos)
            for rows in range(0, len(counts), _CHUNK):
                total[rows : rows + _CHUNK] += ranked.wins(counts[rows : rows + _CHUNK])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, total / len(probs_per_seed) / pairs, np.nan)


_CHUNK = 250  # resamples at a time: a (250, N) array per step, whatever the holdout's size


class _Ranked:
    """One classifier's scores for one label, sorted once for all the resamples."""

    def __init__(self, scores: np.ndarray, pos: np.ndarray):
        self.order = np.argsort(scores, kind="stable")
        s = scores[self.order]
        first = np.r_[True, s[1:] != s[:-1]]  # the first record of each run of equal scores
        self.starts, self.group, self.pos = np.flatnonzero(first), np.cumsum(first) - 1, pos[self.order]

    def wins(self, counts: np.ndarray) -> np.ndarray:
        """Per resample (row of `counts`), the (positive, negative) pairs the scores rank right,
        ties counting one half, each record counted as often as it was drawn: O(resamples x N)."""
        w, p = counts[:, self.order], self.pos
        neg_in_group = np.add.reduceat(w * ~p, self.starts, axis=1)
        below = np.cumsum(neg_in_group, axis=1) - neg_in_group  # negatives scored strictly lower
        credit = below + 0.5 * neg_in_group
        return (w[:, p] * credit[:, self.group[p]]).sum(1)


def interval(values: np.ndarray, level: float = LEVEL) -> Optional[list[float]]:
    """The central `level` interval of a bootstrap distribution (percentiles); None when empty."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def format_interval(ci: Optional[Sequence[float]], signed: bool = True) -> str:
    """The interval as the pages print it after a figure, ' (95% interval -0.012 to +0.021)';
    '' when there is none."""
    if not ci:
        return ""
    spec = "+.3f" if signed else ".3f"
    return f" (95% interval {ci[0]:{spec}} to {ci[1]:{spec}})"
