"""Image memorization at one site: distances to closest record, closeness share, copies.

Figures follow the distance-to-closest-record audits of synthetic medical images (Dar et al.
2024; Akbar et al. 2023): each synthetic image's nearest training and nearest holdout neighbour.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from cxrsynth import scratch
from cxrsynth.config import AuditPolicy
from cxrsynth.data.records import Record
from cxrsynth.data.stream import ImageColumn, has_images, metadata_view
from cxrsynth.errors import InputError
from cxrsynth.privacy.audit.align import AlignedWindows, aligned_nearest
from cxrsynth.privacy.audit.encoders import Encoder
from cxrsynth.privacy.audit.neighbors import Matrix, nearest
from cxrsynth.privacy.audit.stats import closeness_null, closeness_replicates, percentile_ci
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


def _nearest_either_way(
    q: Matrix, q_mirrored: Matrix, base: Matrix, chunk: int, progress: Optional[Progress] = None, label: str = ""
) -> tuple[np.ndarray, np.ndarray]:
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
    """Aggregate image figures of one site (shippable) and the copy pairs (kept at the site).

    The records may be lazy (`cxrsynth.data.stream.RecordView`): images are read a batch at a
    time through `ImageColumn`s, embeddings go to temporary files (`Rows`), and the searches
    read them back block by block, so memory does not grow with the sizes of the sets.
    """
    if len(holdout) < MIN_HOLDOUT:
        raise InputError(
            f"site {site or '?'}: {len(holdout)} holdout record(s); the copy threshold is calibrated on holdout-to-train distances and needs at least {MIN_HOLDOUT}."
        )
    if not len(train) or not len(synthetic):
        raise InputError(
            f"site {site or '?'}: the image check needs training and synthetic images (got {len(train)} and {len(synthetic)})."
        )
    with scratch.folder("audit") as tmp:
        return _image_memorization(encoder, synthetic, train, holdout, policy, site, progress, tmp)


def _image_memorization(
    encoder, synthetic, train, holdout, policy: AuditPolicy, site: str, progress: Optional[Progress], tmp: str
) -> tuple[dict, list[CopyPair]]:
    chunk = policy.chunk
    syn_imgs, hold_imgs, train_imgs = ImageColumn(synthetic), ImageColumn(holdout), ImageColumn(train)
    syn_meta, train_meta = metadata_view(synthetic), metadata_view(train)
    e_train = encoder.embed_rows(train_imgs, tmp)
    e_hold = encoder.embed_rows(hold_imgs, tmp)
    e_syn, e_syn_m = encoder.embed_rows(syn_imgs, tmp), encoder.embed_rows(syn_imgs, tmp, mirrored=True)
    e_hold_m = encoder.embed_rows(hold_imgs, tmp, mirrored=True)

    d_st, i_st = _nearest_either_way(e_syn, e_syn_m, e_train, chunk, progress, f"{site} synthetic->train")
    d_ht, _ = _nearest_either_way(e_hold, e_hold_m, e_train, chunk, progress, f"{site} holdout->train")
    d_sh, i_sh = _nearest_either_way(e_syn, e_syn_m, e_hold, chunk)

    train_windows = None
    if policy.copy_match == "aligned":
        # The training images' windows are computed once, for the copy search, its calibration
        # and the lateral searches.
        train_windows = AlignedWindows(tmp)
        train_windows.add(train_imgs, progress, f"{site} aligned windows of training images")
        c_st, ci_st = aligned_nearest(syn_imgs, train_windows, progress=progress, label=f"{site} aligned copy search")
        cal = ImageColumn(holdout, calibration_sample(len(holdout), policy))
        c_ht, _ = aligned_nearest(cal, train_windows, progress=progress, label=f"{site} aligned holdout calibration")
    else:
        c_st, ci_st, c_ht = d_st, i_st, d_ht
    threshold = float(policy.copy_margin * np.quantile(c_ht, policy.copy_quantile))
    copies = np.flatnonzero(c_st < threshold)
    pairs = []
    for j in copies:
        source = train_meta[int(ci_st[j])]
        pairs.append(CopyPair(syn_meta[int(j)].record_id, source.record_id, source.patient_id, float(c_st[j])))
    copy_ids = [p.synthetic_id for p in pairs]

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
    # The permutation test reads every reference, not a subsample (a copy of a training image left
    # out of the subsample counts for nothing there): a synthetic image is nearer training than
    # holdout when its nearest reference among all of them is a training image, which for a model
    # with no memory of the training patients happens as often as when those patients are dealt
    # at random between the two sides (stats.closeness_null).
    near_train = (d_st < d_sh) + 0.5 * (d_st == d_sh)
    nearest_ref = np.where(d_st <= d_sh, i_st, len(train) + i_sh)
    patients = [r.patient_id for r in train_meta] + [r.patient_id for r in metadata_view(holdout)]
    null = closeness_null(near_train, nearest_ref, patients, len(train), policy.bootstrap, policy.seed)

    def hist(d: np.ndarray, top: float) -> list[int]:
        return np.histogram(np.clip(d, 0, top), np.linspace(0.0, top, HIST_BINS + 1))[0].tolist()

    lateral, lateral_pairs = lateral_copies(
        encoder, synthetic, train, holdout, policy, site, progress, tmp, train_windows
    )
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
        "copies": copy_ids,
        "copy_rate": len(copies) / len(synthetic),
        "holdout_copy_rate": float(np.mean(c_ht < threshold)),
        "closeness_share": float(closer.mean()),
        "closeness_ci": percentile_ci(reps, policy.confidence),
        "closeness_replicates": reps.round(6).tolist(),
        "nearest_train_share": float(near_train.mean()),
        "nearest_train_null": null.round(6).tolist(),
        "dcr_median": {
            "synthetic_to_train": float(np.median(d_st)),
            "synthetic_to_holdout": float(np.median(d_sh)),
            "holdout_to_train": float(np.median(d_ht)),
        },
        "dcr_hist": {
            "top": top,
            "synthetic_to_train": hist(d_st, top),
            "synthetic_to_holdout": hist(d_sh, top),
            "holdout_to_train": hist(d_ht, top),
        },
        "copy_hist": {"top": ctop, "synthetic_to_train": hist(c_st, ctop), "holdout_to_train": hist(c_ht, ctop)},
        **lateral,
    }, pairs


def calibration_sample(n: int, policy: AuditPolicy) -> np.ndarray:
    """Positions of the holdout images the aligned copy threshold is calibrated on: all of them,
    or `calibration_max` drawn at random (the policy's seed) when there are more. The aligned
    search compares each with every training image, so calibrating on all of a hospital's holdout
    would cost its training set times its holdout; the threshold is a quantile of the distances,
    which a few thousand estimate well."""
    if n <= policy.calibration_max:
        return np.arange(n)
    rng = np.random.default_rng([policy.seed, 7])
    return np.sort(rng.choice(n, size=policy.calibration_max, replace=False))


def lateral_copies(
    encoder: Encoder,
    synthetic: Sequence[Record],
    train: Sequence[Record],
    holdout: Sequence[Record],
    policy: AuditPolicy,
    site: str = "",
    progress: Optional[Progress] = None,
    tmp: Optional[str] = None,
    train_windows: Optional[AlignedWindows] = None,
) -> tuple[dict, list[CopyPair]]:
    """Synthetic laterals that copy a training image (a lateral, or a frontal put in the lateral's
    place), by the frontal search's method, with a threshold calibrated the same way on the
    holdout's laterals. A lateral ships with the release, so it is checked like a frontal.
    `train_windows`: the aligned windows of the training frontals, if the frontal search made them."""
    syn_pos = np.flatnonzero(has_images(synthetic, lateral=True))
    if not len(syn_pos):
        return {"lateral_copies": []}, []
    train_lat = np.flatnonzero(has_images(train, lateral=True))
    # The base: every training lateral, then every training frontal.
    base_pos = np.r_[train_lat, np.arange(len(train))]
    base_lateral = np.r_[np.ones(len(train_lat), bool), np.zeros(len(train), bool)]
    hold_pos = np.flatnonzero(has_images(holdout, lateral=True))
    if len(hold_pos) < MIN_HOLDOUT:
        raise InputError(
            f"site {site or '?'}: {len(syn_pos)} synthetic lateral image(s) to check for copies, but {len(hold_pos)} holdout lateral(s); "
            f"the lateral copy threshold is calibrated on holdout laterals and needs at least {MIN_HOLDOUT}."
        )
    q = ImageColumn(synthetic, syn_pos, np.ones(len(syn_pos), bool))
    b = ImageColumn(train, base_pos, base_lateral)
    hold = ImageColumn(holdout, hold_pos, np.ones(len(hold_pos), bool))
    if policy.copy_match == "aligned":
        with tempfile.TemporaryDirectory(prefix="cxrsynth-audit-", dir=tmp) as own:
            windows = AlignedWindows(own)
            if train_windows is None:
                windows.add(b, progress, f"{site} aligned windows of training images")
            else:
                # The laterals' windows, then the frontals' as the frontal search made them.
                lat = ImageColumn(train, train_lat, np.ones(len(train_lat), bool))
                windows.add(lat, progress, f"{site} aligned windows of training laterals")
                windows.extend(train_windows)
            c_sb, i_sb = aligned_nearest(q, windows, progress=progress, label=f"{site} aligned lateral copy search")
            cal_pos = hold_pos[calibration_sample(len(hold_pos), policy)]
            cal = ImageColumn(holdout, cal_pos, np.ones(len(cal_pos), bool))
            c_hb, _ = aligned_nearest(cal, windows, progress=progress, label=f"{site} aligned lateral calibration")
    else:
        with tempfile.TemporaryDirectory(prefix="cxrsynth-audit-", dir=tmp) as own:
            e_b = encoder.embed_rows(b, own)
            c_sb, i_sb = _nearest_either_way(
                encoder.embed_rows(q, own), encoder.embed_rows(q, own, mirrored=True), e_b, policy.chunk
            )
            c_hb, _ = _nearest_either_way(
                encoder.embed_rows(hold, own), encoder.embed_rows(hold, own, mirrored=True), e_b, policy.chunk
            )
    threshold = float(policy.copy_margin * np.quantile(c_hb, policy.copy_quantile))
    hits = np.flatnonzero(c_sb < threshold)
    syn_meta, train_meta = metadata_view(synthetic), metadata_view(train)
    pairs = []
    for k in hits:
        source = train_meta[int(base_pos[i_sb[k]])]
        view = "lateral" if base_lateral[i_sb[k]] else "frontal"
        pairs.append(
            CopyPair(
                syn_meta[int(syn_pos[k])].record_id,
                source.record_id,
                source.patient_id,
                float(c_sb[k]),
                "lateral",
                view,
            )
        )
    return {
        "lateral_copies": [p.synthetic_id for p in pairs],
        "lateral_copy_threshold": threshold,
        "lateral_holdout_copy_rate": float(np.mean(c_hb < threshold)),
        "n_synthetic_laterals": len(syn_pos),
    }, pairs
