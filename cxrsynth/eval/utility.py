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
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrsynth.data.records import LABELS, Record
from cxrsynth.data.stream import ImageColumn, concat_view, metadata_view, subset_view
from cxrsynth.eval.classifier import CXRClassifier, predict, train_classifier
from cxrsynth.eval.config import EvalConfig
from cxrsynth.progress import Progress

ARMS = ("real", "synthetic", "real+synthetic")
BASELINE = "base-only synthetic"


def auroc_per_label(
    model: CXRClassifier, holdout: Sequence[Record], uncertain_as: float
) -> dict[str, Optional[float]]:
    probs = predict(model, ImageColumn(holdout))
    truth = np.stack([r.label_vector(uncertain_as) for r in metadata_view(holdout)]) >= 0.5
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
    sources = {
        "real": (real_train, ()),
        "synthetic": (synthetic, ()),
        "real+synthetic": _added(real_train, synthetic, cfg),
    }
    if baseline is not None:
        sources[BASELINE] = (baseline, ())
    arms = {arm: _arm(train_set, extra, holdout, cfg, progress, arm) for arm, (train_set, extra) in sources.items()}
    classifiers = {arm: v.pop("model") for arm, v in arms.items()}
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
    if cfg.per_site:
        added = {"synthetic": synthetic, **({"base-only": baseline} if baseline is not None else {})}
        result["sites"] = per_site(real_train, holdout, cfg, added, progress)
    return result, classifiers["real"]


def _added(records: Sequence[Record], added: Sequence[Record], cfg: EvalConfig) -> tuple:
    """(training set, extra batch set) of `records` with `added`, as `cfg.augmentation` says:
    a batch of each every step (paired), or batches from their union (pooled)."""
    return (records, added) if cfg.augmentation == "paired" else (concat_view(records, added), ())


def _arm(
    train_set: Sequence[Record],
    extra: Sequence[Record],
    holdout: Sequence[Record],
    cfg: EvalConfig,
    progress: Optional[Progress],
    arm: str,
) -> dict:
    """One arm: a classifier per seed on `train_set` (plus `extra` each step), AUROC per label
    averaged over the seeds; "model" is the first seed's classifier."""
    runs, first = [], None
    for s in range(cfg.seeds):
        model = train_classifier(
            train_set,
            extra=extra,
            **classifier_settings(cfg, seed=cfg.seed + s),
            progress=progress,
            label=f"utility: train on {arm} (seed {cfg.seed + s})",
        )
        first = model if first is None else first
        runs.append(auroc_per_label(model, holdout, cfg.uncertain_as))
    per_label = {}
    for name in LABELS:
        vals = [r[name] for r in runs if r[name] is not None]
        per_label[name] = float(np.mean(vals)) if vals else None
    return {
        "train_records": sum(1 for part in (train_set, extra) for r in metadata_view(part) if r.has_labels()),
        "auroc": per_label,
        "macro_auroc": macro(per_label),
        "macro_auroc_per_seed": [macro(r) for r in runs],
        "model": first,
    }


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
    meta = metadata_view(real_train)
    by_site: dict[str, list[int]] = {}
    for i, r in enumerate(meta):
        if r.has_labels():
            by_site.setdefault(r.site, []).append(i)
    if len(by_site) < 2:
        return None
    out = {}
    for site, indices in sorted(by_site.items()):
        own = subset_view(real_train, indices)
        sources = {"own": (own, ()), **{f"own+{name}": _added(own, part, cfg) for name, part in added.items()}}
        scores = {
            arm: _arm(train_set, extra, holdout, cfg, progress, f"{site}: {arm}")["macro_auroc"]
            for arm, (train_set, extra) in sources.items()
        }
        out[site] = {
            "train_records": len(indices),
            "macro_auroc": scores,
            "release_gain": _difference(scores.get("own+synthetic"), scores.get("own")),
            "gain_over_base": _difference(scores.get("own+synthetic"), scores.get("own+base-only")),
        }
    return out


def _difference(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a - b if a is not None and b is not None else None


def _gain(arms: dict, arm: str, reference: str) -> Optional[float]:
    """Macro AUROC of `arm` minus that of `reference` (None when either is missing)."""
    return _difference(*(arms.get(k, {}).get("macro_auroc") for k in (arm, reference)))


def _ratio(arms: dict, arm: str, reference: str) -> Optional[float]:
    a, b = (arms.get(k, {}).get("macro_auroc") for k in (arm, reference))
    return a / b if a is not None and b else None
