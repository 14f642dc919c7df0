"""Utility: does synthetic data help a downstream classifier? The seeds' headline experiment.

Three arms, each a classifier trained for the same number of steps and scored on the real
holdout: real only, synthetic only, and real + synthetic (by default each step takes a real batch,
as the real-only arm does, plus a synthetic batch: `EvalConfig.augmentation`) (EMIXER, Biswal et al. 2022, Table 3:
+5.94% AUROC from augmentation; RoentGen, Chambon et al. 2022: 0.73 -> 0.77 on a small real set).
AUROC is computed per label where the holdout has both classes; macro is their mean.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrsynth.data.records import LABELS, Record
from cxrsynth.data.stream import ImageColumn, concat_view, metadata_view
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
    paired = cfg.augmentation == "paired"
    sources = {"real": (real_train, ()), "synthetic": (synthetic, ())}
    sources["real+synthetic"] = (real_train, synthetic) if paired else (concat_view(real_train, synthetic), ())
    if baseline is not None:
        sources[BASELINE] = (baseline, ())
    arms: dict[str, dict] = {}
    first_real: Optional[CXRClassifier] = None
    for arm, (train_set, extra) in sources.items():
        runs = []
        for s in range(cfg.seeds):
            model = train_classifier(
                train_set,
                extra=extra,
                **classifier_settings(cfg, seed=cfg.seed + s),
                progress=progress,
                label=f"utility: train on {arm} (seed {cfg.seed + s})",
            )
            if arm == "real" and first_real is None:
                first_real = model
            runs.append(auroc_per_label(model, holdout, cfg.uncertain_as))
        per_label = {}
        for name in LABELS:
            vals = [r[name] for r in runs if r[name] is not None]
            per_label[name] = float(np.mean(vals)) if vals else None
        arms[arm] = {
            "train_records": sum(1 for part in (train_set, extra) for r in metadata_view(part) if r.has_labels()),
            "auroc": per_label,
            "macro_auroc": macro(per_label),
            "macro_auroc_per_seed": [macro(r) for r in runs],
        }
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
    assert first_real is not None
    return result, first_real


def _gain(arms: dict, arm: str, reference: str) -> Optional[float]:
    """Macro AUROC of `arm` minus that of `reference` (None when either is missing)."""
    a, b = (arms.get(k, {}).get("macro_auroc") for k in (arm, reference))
    return a - b if a is not None and b is not None else None


def _ratio(arms: dict, arm: str, reference: str) -> Optional[float]:
    a, b = (arms.get(k, {}).get("macro_auroc") for k in (arm, reference))
    return a / b if a is not None and b else None
