"""The checks that need a site's real records, run where those records live.

`site_audit` returns what may leave the site: counts, scalar figures, histograms, bootstrap
replicates of scalar figures and the IDs of flagged synthetic records. The copy pairs (which
training patient a synthetic image copies) stay at the site, for its own report.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from cxrsynth.config import AuditPolicy
from cxrsynth.data.records import Record
from cxrsynth.data.stream import ImageColumn, metadata_view
from cxrsynth.privacy.audit.encoders import make_encoder
from cxrsynth.privacy.audit.fidelity import image_label_fidelity
from cxrsynth.privacy.audit.images import CopyPair, image_memorization
from cxrsynth.privacy.audit.stats import membership_figures, percentile_ci
from cxrsynth.privacy.audit.text import embedding_neighbours, near_duplicates, rare_ngram_leaks
from cxrsynth.progress import Progress

Scorer = Callable[[Sequence[Record]], np.ndarray]


def membership(
    scorer: Optional[Scorer], train: Sequence[Record], holdout: Sequence[Record], policy: AuditPolicy
) -> dict:
    """AUC and TPR at 1% FPR of the model's own member score: members = training, non-members = holdout."""
    if scorer is None:
        return {"status": "not_run", "reason": "no model given (audit --checkpoint): member_scores cannot be computed"}
    try:
        s_train = np.asarray(scorer(train), dtype=np.float64)
        s_hold = np.asarray(scorer(holdout), dtype=np.float64)
    except NotImplementedError:
        return {"status": "not_run", "reason": "the model family does not implement member_scores yet"}
    if s_train.shape != (len(train),) or s_hold.shape != (len(holdout),):
        return {
            "status": "error",
            "reason": f"member_scores returned shapes {s_train.shape}, {s_hold.shape} for {len(train)} and {len(holdout)} records",
        }
    if not (np.isfinite(s_train).all() and np.isfinite(s_hold).all()):
        return {"status": "error", "reason": "member_scores returned non-finite values"}
    fig = membership_figures(s_train, s_hold, policy.bootstrap, policy.seed)
    return {
        "status": "ran",
        "n_members": len(train),
        "n_nonmembers": len(holdout),
        "auc": fig["auc"],
        "auc_ci": percentile_ci(fig["auc_replicates"], policy.confidence),
        "tpr_at_1pct_fpr": fig["tpr_at_1pct_fpr"],
        "tpr_ci": percentile_ci(fig["tpr_replicates"], policy.confidence),
        "auc_replicates": fig["auc_replicates"].round(6).tolist(),
        "tpr_replicates": fig["tpr_replicates"].round(6).tolist(),
        "roc": fig["roc"],
    }


def site_audit(
    synthetic: Sequence[Record],
    train: Sequence[Record],
    holdout: Sequence[Record],
    policy: AuditPolicy,
    scorer: Optional[Scorer] = None,
    site: str = "",
    progress: Optional[Progress] = None,
) -> tuple[dict, list[CopyPair]]:
    """Run every site-side check. Returns (the answer that may leave the site, local copy pairs)."""
    progress = progress or Progress(quiet=True)
    skip = set(policy.skip)
    # The text checks read reports only: from a manifest, no image is decoded for them.
    texts = metadata_view(synthetic), metadata_view(train), metadata_view(holdout)
    # A count may leave the site; with no training report there is no report text to leak, and
    # the steward marks the text checks "no reports" (cxrsynth.privacy.audit.combine) instead of running them.
    n_reports = sum(bool(r.report.strip()) for r in texts[1])
    answer: dict = {
        "site": site,
        "n_train": len(train),
        "n_holdout": len(holdout),
        "n_synthetic": len(synthetic),
        "n_train_reports": n_reports,
    }
    pairs: list[CopyPair] = []
    if not {"image_copies", "image_closeness"} <= skip:
        progress.say(f"[{site}] image memorization ({policy.encoder} encoder)")
        encoder = make_encoder(policy, ImageColumn(train), progress)
        answer["images"], pairs = image_memorization(encoder, synthetic, train, holdout, policy, site, progress)
    if "text_rare_ngrams" not in skip and n_reports:
        answer["rare_ngrams"] = rare_ngram_leaks(*texts, policy)
    if "text_near_duplicates" not in skip and n_reports:
        answer["near_duplicates"] = near_duplicates(*texts, policy)
    if "text_embedding" not in skip and policy.text_encoder is not None and n_reports:
        answer["text_embedding"] = embedding_neighbours(*texts, policy)
    if "membership" not in skip:
        progress.say(f"[{site}] membership inference")
        answer["membership"] = membership(scorer, train, holdout, policy)
    if "label_fidelity" not in skip:
        answer["fidelity"] = image_label_fidelity(synthetic, train, holdout, policy, site, progress)
    return answer, pairs
