"""Utility: does synthetic data help a downstream classifier? The seeds' headline experiment.

Three arms, each a classifier trained for the same number of steps and scored on the real
holdout: real only, synthetic only, and real + synthetic (by default each step takes a real batch,
as the real-only arm does, plus a synthetic batch: `EvalConfig.augmentation`) (EMIXER, Biswal et al. 2022, Table 3:
+5.94% AUROC from augmentation; RoentGen, Chambon et al. 2022: 0.73 -> 0.77 on a small real set).
AUROC is computed per label where the holdout has both classes; macro is their mean.

A hospital in a federation holds its own records, not the union the real-only arm trains on.
With records from two or more sites, `per_site` also scores each site's records alone, with the
synthetic set and with the base-only set, on the same holdout: what the release gives one
hospital beyond its own data, and beyond what the public base alone would give it.

Each comparison (real + synthetic against real-only, synthetic-only over real-only, fine-tuned
against base-only, each site with the release against alone) also gets a 95% interval over
resamples of the holdout's records (`cxrsynth.eval.bootstrap`, `EvalConfig.bootstrap`): on a
holdout of a few hundred records a difference of a hundredth can be the holdout's draw.

The classifiers are independent, so with more than one CPU core they train side by side in
worker processes (`EvalConfig.workers`), each on one thread and from its own seed: the figures
are the same as when they train one after another in this process.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from cxrsynth.data.records import LABELS, Record
from cxrsynth.data.stream import ImageColumn, concat_view, metadata_view, subset_view
from cxrsynth.eval.bootstrap import LEVEL, HoldoutResamples, interval
from cxrsynth.eval.classifier import CXRClassifier, predict, train_classifier
from cxrsynth.eval.config import EvalConfig
from cxrsynth.progress import Progress

ARMS = ("real", "synthetic", "real+synthetic")
BASELINE = "base-only synthetic"
PARALLEL_MIN_STEPS = 2000  # about a minute of classifier training on one core: worth starting workers for


def holdout_truth(holdout: Sequence[Record], uncertain_as: float) -> np.ndarray:
    """(N, 14) bool: the labels each holdout record is scored against."""
    return np.stack([r.label_vector(uncertain_as) for r in metadata_view(holdout)]) >= 0.5


def auroc_per_label(
    model: CXRClassifier, holdout: Sequence[Record], uncertain_as: float
) -> dict[str, Optional[float]]:
    return label_aurocs(predict(model, ImageColumn(holdout)), holdout_truth(holdout, uncertain_as))


def label_aurocs(probs: np.ndarray, truth: np.ndarray) -> dict[str, Optional[float]]:
    """AUROC per label of probabilities (N, 14) against `truth`; None where a label has one class."""
    out: dict[str, Optional[float]] = {}
    for j, name in enumerate(LABELS):
        y = truth[:, j]
        out[name] = float(roc_auc_score(y, probs[:, j])) if 0 < y.sum() < len(y) else None
    return out


def macro(per_label: dict[str, Optional[float]]) -> Optional[float]:
    vals = [v for v in per_label.values() if v is not None]
    return float(np.mean(vals)) if vals else None


def classifier_settings(cfg: EvalConfig, seed: int) -> dict:
    """`train_classifier`'s keyword arguments for every utility arm of `cfg`."""
    return dict(
        width=cfg.classifier_width,
        image_size=cfg.image_size,
        steps=cfg.classifier_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=seed,
        uncertain_as=cfg.uncertain_as,
    )


def utility(
    real_train: Sequence[Record],
    synthetic: Sequence[Record],
    holdout: Sequence[Record],
    cfg: EvalConfig,
    progress: Optional[Progress] = None,
    baseline: Optional[Sequence[Record]] = None,
) -> tuple[dict, CXRClassifier]:
    """AUROC per label and macro for each arm, averaged over `cfg.seeds`; also returns the first
    real-only classifier, which serves as the FID extractor.

    `baseline`: a second synthetic set (the base model's, before the sites fine-tuned it), scored
    as arm `BASELINE` the same way, so the gain that fine-tuning brought is measured in one run.
    """
    # Views, not copies: with records read lazily, each classifier decodes only its batches.
    parts = {"real": real_train, "synthetic": synthetic}
    plans = {
        "real": _Plan("real"),
        "synthetic": _Plan("synthetic"),
        "real+synthetic": _Plan("real", added="synthetic"),
    }
    if baseline is not None:
        parts["base-only"] = baseline
        plans[BASELINE] = _Plan("base-only")
    sites = _site_plans(real_train, [k for k in ("synthetic", "base-only") if k in parts]) if cfg.per_site else None
    scored, real_model, probs = _train_all({**plans, **_flat(sites)}, parts, holdout, cfg, progress, keep="real")
    arms = {arm: scored[arm] for arm in plans}
    spread = _Intervals(holdout, cfg, probs)
    result = {
        "fine_tuning_gain": _gain(arms, "synthetic", BASELINE),
        "holdout_records": len(holdout),
        "steps": cfg.classifier_steps,
        "seeds": cfg.seeds,
        "uncertain_as": cfg.uncertain_as,
        "arms": arms,
        "augmentation_gain": _gain(arms, "real+synthetic", "real"),
        "augmentation": cfg.augmentation,
        # The release's headline: how much of the real data's utility the synthetic data alone carries.
        "synthetic_to_real": _ratio(arms, "synthetic", "real"),
    }
    if spread.resamples:
        result["intervals"] = {
            "resamples": spread.resamples,
            "level": LEVEL,
            "fine_tuning_gain": spread.difference("synthetic", BASELINE),
            "augmentation_gain": spread.difference("real+synthetic", "real"),
            "synthetic_to_real": spread.ratio("synthetic", "real"),
        }
    if cfg.per_site:
        result["sites"] = _site_table(sites, scored, spread)
    return result, real_model


def per_site(
    real_train: Sequence[Record],
    holdout: Sequence[Record],
    cfg: EvalConfig,
    added: dict[str, Sequence[Record]],
    progress: Optional[Progress] = None,
) -> Optional[dict]:
    """Macro AUROC, per site, of a classifier on the site's own training records alone ("own")
    and with each set of `added` ("synthetic", "base-only") added as the real + synthetic arm
    adds it ("own+<name>"); None when the records come from fewer than two sites."""
    sites = _site_plans(real_train, list(added))
    if sites is None:
        return None
    scored, _, probs = _train_all(_flat(sites), {"real": real_train, **added}, holdout, cfg, progress)
    return _site_table(sites, scored, _Intervals(holdout, cfg, probs))


class _Plan(NamedTuple):
    """One arm's training set: a part (`real`, `synthetic`, `base-only`), or the records of it at
    `indices` (one site's), with the part `added` as `EvalConfig.augmentation` says."""

    train: str
    indices: Optional[tuple[int, ...]] = None
    added: Optional[str] = None


def _site_plans(real_train: Sequence[Record], added: Sequence[str]) -> Optional[dict[str, dict[str, _Plan]]]:
    """site -> {"own": ..., "own+<added>": ...}; None when the records come from fewer than two sites."""
    by_site: dict[str, list[int]] = {}
    for i, r in enumerate(metadata_view(real_train)):
        if r.has_labels():
            by_site.setdefault(r.site, []).append(i)
    if len(by_site) < 2:
        return None
    return {
        site: {
            "own": _Plan("real", tuple(indices)),
            **{f"own+{name}": _Plan("real", tuple(indices), name) for name in added},
        }
        for site, indices in sorted(by_site.items())
    }


def _flat(sites: Optional[dict[str, dict[str, _Plan]]]) -> dict[str, _Plan]:
    """The sites' plans under one name each, "<site>: <arm>", as `_site_table` reads them."""
    return {f"{site}: {arm}": plan for site, arms in (sites or {}).items() for arm, plan in arms.items()}


def _site_table(
    sites: Optional[dict[str, dict[str, _Plan]]], scored: dict[str, dict], spread: "_Intervals"
) -> Optional[dict]:
    if sites is None:
        return None
    out = {}
    for site, arms in sites.items():
        scores = {arm: scored[f"{site}: {arm}"]["macro_auroc"] for arm in arms}
        out[site] = {
            "train_records": len(arms["own"].indices),
            "macro_auroc": scores,
            "release_gain": _difference(scores.get("own+synthetic"), scores.get("own")),
            "gain_over_base": _difference(scores.get("own+synthetic"), scores.get("own+base-only")),
        }
        if spread.resamples:
            out[site]["intervals"] = {
                "release_gain": spread.difference(f"{site}: own+synthetic", f"{site}: own"),
                "gain_over_base": spread.difference(f"{site}: own+synthetic", f"{site}: own+base-only"),
            }
    return out


class _Intervals:
    """The 95% intervals, over resamples of the holdout, of differences and ratios of the arms'
    macro AUROC (`cxrsynth.eval.bootstrap`); none when `cfg.bootstrap` is 0."""

    def __init__(self, holdout: Sequence[Record], cfg: EvalConfig, probs: dict[str, list[np.ndarray]]):
        self.resamples = cfg.bootstrap
        self.probs = probs
        self._macro: dict[str, np.ndarray] = {}
        if self.resamples:
            self.draws = HoldoutResamples(holdout_truth(holdout, cfg.uncertain_as), cfg.bootstrap, cfg.seed)

    def _of(self, arm: str) -> Optional[np.ndarray]:
        if arm not in self.probs:
            return None
        if arm not in self._macro:
            self._macro[arm] = self.draws.macro(self.probs[arm])
        return self._macro[arm]

    def difference(self, arm: str, reference: str) -> Optional[list[float]]:
        a, b = self._of(arm), self._of(reference)
        return interval(a - b) if a is not None and b is not None else None

    def ratio(self, arm: str, reference: str) -> Optional[list[float]]:
        a, b = self._of(arm), self._of(reference)
        if a is None or b is None:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            return interval(a / b)


def _sets(plan: _Plan, parts: dict[str, Sequence[Record]], cfg: EvalConfig) -> tuple:
    """(training set, extra batch set) of a plan: a batch of each every step (paired), or
    batches from their union (pooled)."""
    records = parts[plan.train] if plan.indices is None else subset_view(parts[plan.train], list(plan.indices))
    if plan.added is None:
        return records, ()
    added = parts[plan.added]
    return (records, added) if cfg.augmentation == "paired" else (concat_view(records, added), ())


def _fit(
    plan: _Plan,
    seed: int,
    parts: dict[str, Sequence[Record]],
    holdout: Sequence[Record],
    cfg: EvalConfig,
    progress: Optional[Progress],
    label: str,
) -> tuple[np.ndarray, CXRClassifier]:
    """The plan's classifier of `seed` and its probabilities on the holdout, (N, 14)."""
    train_set, extra = _sets(plan, parts, cfg)
    model = train_classifier(
        train_set,
        extra=extra,
        **classifier_settings(cfg, seed=seed),
        progress=progress,
        label=f"utility: train on {label} (seed {seed})",
    )
    return predict(model, ImageColumn(holdout)), model


def workers_for(cfg: EvalConfig, classifiers: int) -> int:
    """Processes to train `classifiers` classifiers of `cfg` with: `cfg.workers`, or when it is
    0, one per CPU core this process may use once the work is worth starting them for (the
    classifiers' steps add up to `PARALLEL_MIN_STEPS`; a worker takes a few seconds to start)."""
    if cfg.workers:
        return min(cfg.workers, classifiers)
    if classifiers * cfg.classifier_steps < PARALLEL_MIN_STEPS:
        return 1
    from cxrsynth.models.base import usable_cores

    cores = usable_cores()
    return max(1, min(cores, classifiers))


def _train_all(
    plans: dict[str, _Plan],
    parts: dict[str, Sequence[Record]],
    holdout: Sequence[Record],
    cfg: EvalConfig,
    progress: Optional[Progress],
    keep: Optional[str] = None,
) -> tuple[dict[str, dict], Optional[CXRClassifier], dict[str, list[np.ndarray]]]:
    """Every plan trained with each of `cfg.seeds` seeds and scored on `holdout`: arm -> its
    AUROC per label (mean over the seeds), macro and macro per seed; the first seed's
    classifier of arm `keep`; and arm -> each seed's probabilities on the holdout."""
    jobs = [(arm, cfg.seed + s) for arm in plans for s in range(cfg.seeds)]
    runs: dict[tuple[str, int], dict] = {}
    kept = None
    workers = workers_for(cfg, len(jobs))
    if workers <= 1:
        for arm, seed in jobs:
            runs[arm, seed], model = _fit(plans[arm], seed, parts, holdout, cfg, progress, arm)
            kept = model if (arm, seed) == (keep, cfg.seed) else kept
    else:
        # A paired arm takes two batches a step: the longest jobs first keep the workers equally busy.
        jobs.sort(key=lambda job: plans[job[0]].added is None)
        task = (
            progress.task(f"utility: {len(jobs)} classifiers in {workers} processes", len(jobs)) if progress else None
        )
        spawn = get_context("spawn")  # a forked worker would inherit this process's thread pools and locks
        with ProcessPoolExecutor(
            workers, mp_context=spawn, initializer=_serve, initargs=(parts, holdout, cfg)
        ) as pool:
            pending = {pool.submit(_fit_served, plans[arm], seed, arm == keep): (arm, seed) for arm, seed in jobs}
            for done in as_completed(pending):
                arm, seed = pending[done]
                runs[arm, seed], model = done.result()
                kept = model if (arm, seed) == (keep, cfg.seed) else kept
                if task:
                    task.advance(1, note=f"{arm} (seed {seed})")
    truth = holdout_truth(holdout, cfg.uncertain_as)
    probs = {arm: [runs[arm, cfg.seed + s] for s in range(cfg.seeds)] for arm in plans}
    scored = {}
    for arm, plan in plans.items():
        per_seed = [label_aurocs(p, truth) for p in probs[arm]]
        per_label = {}
        for name in LABELS:
            vals = [r[name] for r in per_seed if r[name] is not None]
            per_label[name] = float(np.mean(vals)) if vals else None
        scored[arm] = {
            "train_records": sum(1 for part in _sets(plan, parts, cfg) for r in metadata_view(part) if r.has_labels()),
            "auroc": per_label,
            "macro_auroc": macro(per_label),
            "macro_auroc_per_seed": [macro(r) for r in per_seed],
        }
    return scored, kept, probs


_SERVED: dict = {}


def _serve(parts: dict[str, Sequence[Record]], holdout: Sequence[Record], cfg: EvalConfig) -> None:
    """A worker's start: the records once (lazy views: their rows, not their images), one thread."""
    torch.set_num_threads(1)
    _SERVED.update(parts=parts, holdout=holdout, cfg=cfg)


def _fit_served(plan: _Plan, seed: int, keep: bool) -> tuple[np.ndarray, Optional[CXRClassifier]]:
    probs, model = _fit(plan, seed, _SERVED["parts"], _SERVED["holdout"], _SERVED["cfg"], None, "")
    return probs, model if keep else None


def _difference(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a - b if a is not None and b is not None else None


def _gain(arms: dict, arm: str, reference: str) -> Optional[float]:
    """Macro AUROC of `arm` minus that of `reference` (None when either is missing)."""
    return _difference(*(arms.get(k, {}).get("macro_auroc") for k in (arm, reference)))


def _ratio(arms: dict, arm: str, reference: str) -> Optional[float]:
    a, b = (arms.get(k, {}).get("macro_auroc") for k in (arm, reference))
    return a / b if a is not None and b else None
