"""Image memorization at one site: distances to closest record, closeness share, copies.

Figures follow the distance-to-closest-record audits of synthetic medical images (Dar et al.
2024; Akbar et al. 2023): each synthetic image's nearest training and nearest holdout neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from cxrsynth.config import AuditPolicy
from cxrsynth.data.records import Record
from cxrsynth.errors import InputError
from cxrsynth.privacy.audit.align import aligned_nearest
from cxrsynth.privacy.audit.encoders import Encoder
from cxrsynth.privacy.audit.neighbors import nearest
from cxrsynth.privacy.audit.stats import closeness_replicates, percentile_ci
from cxrsynth.progress import Progress

MIN_HOLDOUT = 20  # below this the 1% quantile of holdout distances is the minimum of a handful
HIST_BINS = 40


@dataclass
class CopyPair:
    """A flagged synthetic image and the training record it copies; stays at the site."""

    synthetic_id: str
    train_record_id: str
    patient_id: str
    distance: float
    synthetic_view: str = "frontal"  # which image of the synthetic record copies ...
    train_view: str = "frontal"  # ... which image of the training record


def _nearest_either_way(q: np.ndarray, q_mirrored: np.ndarray, base: np.ndarray, chunk: int, progress: Optional[Progress] = None, label: str = "") -> tuple[np.ndarray, np.ndarray]:
    d, i = nearest(q, base, chunk, progress, label)
    dm, im = nearest(q_mirrored, base, chunk)
    use_m = dm < d
    return np.where(use_m, dm, d), np.where(use_m, im, i)


def image_memorization(
    encoder: Encoder,
    synthetic: Sequence[Record],
    train: Sequence[Record],
    holdout: Sequence[Record],
    policy: AuditPolicy,
    site: str = "",
    progress: Optional[Progress] = None,
) -> tuple[dict, list[CopyPair]]:
    """Aggregate image figures of one site (shippable) and the copy pairs (kept at the site)."""
    if len(holdout) < MIN_HOLDOUT:
        raise InputError(f"site {site or '?'}: {len(holdout)} holdout record(s); the copy threshold is calibrated on holdout-to-train distances and needs at least {MIN_HOLDOUT}.")
    if not train or not synthetic:
        raise InputError(f"site {site or '?'}: the image check needs training and synthetic images (got {len(train)} and {len(synthetic)}).")
    chunk = policy.chunk
    syn_imgs = [r.image for r in synthetic]
    hold_imgs = [r.image for r in holdout]
    e_train = encoder.embed([r.image for r in train])
    e_hold = encoder.embed(hold_imgs)
    e_syn, e_syn_m = encoder.embed(syn_imgs), encoder.embed(syn_imgs, mirrored=True)
    e_hold_m = encoder.embed(hold_imgs, mirrored=True)

    d_st, i_st = _nearest_either_way(e_syn, e_syn_m, e_train, chunk, progress, f"{site} synthetic->train")
    d_ht, _ = _nearest_either_way(e_hold, e_hold_m, e_train, chunk, progress, f"{site} holdout->train")
    d_sh, _ = _nearest_either_way(e_syn, e_syn_m, e_hold, chunk)

    if policy.copy_match == "aligned":
        train_imgs = [r.image for r in train]
        c_st, ci_st = aligned_nearest(syn_imgs, train_imgs, progress=progress, label=f"{site} aligned copy search")
        c_ht, _ = aligned_nearest(hold_imgs, train_imgs, progress=progress, label=f"{site} aligned holdout calibration")
    else:
        c_st, ci_st, c_ht = d_st, i_st, d_ht
    threshold = float(policy.copy_margin * np.quantile(c_ht, policy.copy_quantile))
    copies = np.flatnonzero(c_st < threshold)
    pairs = [CopyPair(synthetic[j].record_id, train[ci_st[j]].record_id, train[ci_st[j]].patient_id, float(c_st[j])) for j in copies]

    # The closeness share compares like with like: equal-sized training and holdout reference
    # sets, else the bigger set is "closer" by sheer numbers (share != 0.5 with no memorization).
    rng = np.random.default_rng(policy.seed)
    m = min(len(train), len(holdout))
    sub_t = rng.choice(len(train), size=m, replace=False)
    sub_h = rng.choice(len(holdout), size=m, replace=False)
    d_t, _ = _nearest_either_way(e_syn, e_syn_m, e_train[sub_t], chunk)
    d_h, _ = _nearest_either_way(e_syn, e_syn_m, e_hold[sub_h], chunk)
    closer = (d_t < d_h) + 0.5 * (d_t == d_h)
    reps = closeness_replicates(closer, policy.bootstrap, policy.seed)

    def hist(d: np.ndarray, top: float) -> list[int]:
        return np.histogram(np.clip(d, 0, top), np.linspace(0.0, top, HIST_BINS + 1))[0].tolist()

    lateral, lateral_pairs = lateral_copies(encoder, synthetic, train, holdout, policy, site, progress)
    pairs += lateral_pairs
    top = float(np.quantile(np.r_[d_st, d_sh, d_ht], 0.995)) or 1.0
    ctop = float(np.quantile(np.r_[c_st, c_ht], 0.995)) or 1.0

    return {
        "encoder": encoder.name,
        "n_synthetic": len(synthetic),
        "n_train": len(train),
        "n_holdout": len(holdout),
        "copy_match": policy.copy_match,
        "copy_threshold": threshold,
        "copies": [synthetic[j].record_id for j in copies],
        "copy_rate": len(copies) / len(synthetic),
        "holdout_copy_rate": float(np.mean(c_ht < threshold)),
        "closeness_share": float(closer.mean()),
        "closeness_ci": percentile_ci(reps, policy.confidence),
        "closeness_replicates": reps.round(6).tolist(),
        "dcr_median": {"synthetic_to_train": float(np.median(d_st)), "synthetic_to_holdout": float(np.median(d_sh)), "holdout_to_train": float(np.median(d_ht))},
        "dcr_hist": {"top": top, "synthetic_to_train": hist(d_st, top), "synthetic_to_holdout": hist(d_sh, top), "holdout_to_train": hist(d_ht, top)},
        "copy_hist": {"top": ctop, "synthetic_to_train": hist(c_st, ctop), "holdout_to_train": hist(c_ht, ctop)},
        **lateral,
    }, pairs


def lateral_copies(
    encoder: Encoder,
    synthetic: Sequence[Record],
    train: Sequence[Record],
    holdout: Sequence[Record],
    policy: AuditPolicy,
    site: str = "",
    progress: Optional[Progress] = None,
) -> tuple[dict, list[CopyPair]]:
    """Synthetic laterals that copy a training image (a lateral, or a frontal put in the lateral's
    place), by the frontal search's method, with a threshold calibrated the same way on the
    holdout's laterals. A lateral ships with the release, so it is checked like a frontal."""
    syn = [(j, r.lateral) for j, r in enumerate(synthetic) if r.lateral is not None]
    if not syn:
        return {"lateral_copies": []}, []
    base = [(r, "lateral", r.lateral) for r in train if r.lateral is not None] + [(r, "frontal", r.image) for r in train]
    hold = [r.lateral for r in holdout if r.lateral is not None]
    if len(hold) < MIN_HOLDOUT:
        raise InputError(
            f"site {site or '?'}: {len(syn)} synthetic lateral image(s) to check for copies, but {len(hold)} holdout lateral(s); "
            f"the lateral copy threshold is calibrated on holdout laterals and needs at least {MIN_HOLDOUT}."
        )
    q, b = [img for _, img in syn], [img for _, _, img in base]
    if policy.copy_match == "aligned":
        c_sb, i_sb = aligned_nearest(q, b, progress=progress, label=f"{site} aligned lateral copy search")
        c_hb, _ = aligned_nearest(hold, b, progress=progress, label=f"{site} aligned lateral calibration")
    else:
        e_b = encoder.embed(b)
        c_sb, i_sb = _nearest_either_way(encoder.embed(q), encoder.embed(q, mirrored=True), e_b, policy.chunk)
        c_hb, _ = _nearest_either_way(encoder.embed(hold), encoder.embed(hold, mirrored=True), e_b, policy.chunk)
    threshold = float(policy.copy_margin * np.quantile(c_hb, policy.copy_quantile))
    hits = np.flatnonzero(c_sb < threshold)
    pairs = [CopyPair(synthetic[syn[k][0]].record_id, base[i_sb[k]][0].record_id, base[i_sb[k]][0].patient_id, float(c_sb[k]), "lateral", base[i_sb[k]][1]) for k in hits]
    return {
        "lateral_copies": [p.synthetic_id for p in pairs],
        "lateral_copy_threshold": threshold,
        "lateral_holdout_copy_rate": float(np.mean(c_hb < threshold)),
        "n_synthetic_laterals": len(syn),
    }, pairs
