"""The utility's intervals: a paired bootstrap over the holdout's records (cxrsynth.eval.bootstrap)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrsynth.eval.bootstrap import HoldoutResamples, format_interval, interval


def scores(truth: np.ndarray, signal: float, seed: int) -> np.ndarray:
    """Probabilities that separate the classes by `signal`, rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    return np.round(rng.random(truth.shape) + signal * truth, 1)


def labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 14)) < 0.15


def test_a_resample_that_draws_each_record_once_gives_the_auroc_of_the_holdout():
    truth = labels(150)
    probs = scores(truth, 0.5, 1)
    draws = HoldoutResamples(truth, 5)
    once = np.ones((1, len(truth)))
    for j in range(14):
        assert draws.label_auroc([probs], j, once)[0] == pytest.approx(roc_auc_score(truth[:, j], probs[:, j]))
    # Two seeds' classifiers: their per-label AUROCs averaged, as the point estimate averages them.
    other = scores(truth, 0.2, 2)
    both = draws.label_auroc([probs, other], 3, once)[0]
    assert both == pytest.approx(
        (roc_auc_score(truth[:, 3], probs[:, 3]) + roc_auc_score(truth[:, 3], other[:, 3])) / 2
    )


def test_a_resample_scores_the_records_as_often_as_it_drew_them():
    """Each resample's AUROC is that of the holdout with every record repeated as often as drawn."""
    truth = labels(120, seed=3)
    probs = scores(truth, 0.3, 4)
    draws = HoldoutResamples(truth, 20, seed=5)
    for b in range(20):
        rows = np.repeat(np.arange(len(truth)), draws.counts[b].astype(int))
        for j in (0, 7):
            if 0 < truth[rows, j].sum() < len(rows):
                want = roc_auc_score(truth[rows, j], probs[rows, j])
                assert draws.label_auroc([probs], j)[b] == pytest.approx(want)


def test_the_interval_of_a_difference_separates_a_real_gain_from_none():
    truth = labels(200)
    strong, weak = scores(truth, 0.6, 1), scores(truth, 0.1, 2)
    draws = HoldoutResamples(truth, 500, seed=3)
    gain = interval(draws.macro([strong]) - draws.macro([weak]))
    assert gain[0] > 0.1, gain
    # The same classifier against itself: paired resamples give exactly no difference.
    assert interval(draws.macro([weak]) - draws.macro([weak])) == [0.0, 0.0]
    # Two classifiers of equal skill: the interval holds 0.
    twin = scores(truth, 0.1, 4)
    tie = interval(draws.macro([twin]) - draws.macro([weak]))
    assert tie[0] < 0 < tie[1], tie


def test_a_larger_holdout_gives_a_narrower_interval():
    widths = []
    for n in (100, 1600):
        truth = labels(n, seed=5)
        draws = HoldoutResamples(truth, 400, seed=6)
        lo, hi = interval(draws.macro([scores(truth, 0.3, 7)]) - draws.macro([scores(truth, 0.2, 8)]))
        widths.append(hi - lo)
    # The width shrinks as 1/sqrt(n): 16 times the records, about a quarter of the width.
    assert widths[1] < 0.4 * widths[0], widths


def test_a_label_without_both_classes_is_left_out_and_an_empty_interval_is_none():
    truth = labels(60)
    truth[:, 5] = False
    draws = HoldoutResamples(truth, 50)
    assert 5 not in draws.labels and len(draws.labels) == 13
    assert np.isfinite(draws.macro([scores(truth, 0.5, 1)])).all()
    assert interval(np.array([np.nan, np.nan])) is None
    assert format_interval(None) == ""
    assert format_interval([-0.0123, 0.021]) == " (95% interval -0.012 to +0.021)"
    assert format_interval([0.91, 0.97], signed=False) == " (95% interval 0.910 to 0.970)"


def test_utility_gives_each_comparison_its_interval_and_none_when_asked_for_none():
    """Toy studies whose images show their labels: the synthetic set beside a base-only set of
    blank images has a fine-tuning gain whose interval lies above 0; every site's release gain
    has an interval; `bootstrap: 0` leaves the intervals out."""
    from test_eval_metrics import toy_records

    from cxrsynth.eval.config import EvalConfig
    from cxrsynth.eval.utility import utility

    torch.set_num_threads(1)
    real, holdout = toy_records(30), toy_records(150, seed=2)
    synthetic = toy_records(60, seed=1, prefix="s")
    blank = [r.with_(image=np.full_like(r.image, 128)) for r in toy_records(60, seed=3, prefix="b")]
    settings = dict(image_size=32, classifier_width=8, classifier_steps=40, batch_size=8, workers=1)
    result, _ = utility(real, synthetic, holdout, EvalConfig(**settings, bootstrap=300), baseline=blank)
    ci = result["intervals"]
    assert ci["resamples"] == 300 and ci["level"] == 0.95
    assert ci["fine_tuning_gain"][0] > 0, (result["fine_tuning_gain"], ci)
    assert ci["fine_tuning_gain"][0] <= result["fine_tuning_gain"] <= ci["fine_tuning_gain"][1]
    lo, hi = ci["augmentation_gain"]
    assert lo <= result["augmentation_gain"] <= hi
    assert ci["synthetic_to_real"][0] <= result["synthetic_to_real"] <= ci["synthetic_to_real"][1]
    for site, v in result["sites"].items():
        lo, hi = v["intervals"]["release_gain"]
        assert lo <= v["release_gain"] <= hi, (site, v)
    none, _ = utility(real, synthetic, holdout, EvalConfig(**settings, bootstrap=0), baseline=blank)
    assert "intervals" not in none and all("intervals" not in v for v in none["sites"].values())
    assert none["arms"] == result["arms"]
