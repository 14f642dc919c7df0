"""Label fidelity: do the synthetic records carry the labels they were generated with?

A release of images that show none of their labels teaches a downstream model wrong findings,
private or not. Two figures, each per label:

- images, at each site (where the real images are): the project's small CXR classifier
  (`cxrsynth.eval.classifier`) is trained on the site's real training images at the synthetic
  images' size, for `fidelity_steps` steps, and scores the synthetic images; AUROC against the
  labels they were generated with. Only numbers leave the site: per-label AUROC and its standard
  error, and the same classifier's AUROC on the site's real holdout (what the classifier can
  tell at all, for reading the figure).
- reports, at the steward (where the synthetic reports are): the project's report labeler
  (`cxrsynth.data.labeler`, via `cxrsynth.eval.labels`) reads each report; the F1 of "positive"
  between what the report says and the record's labels. Positive F1, not exact agreement over
  the 14 values: most labels of most records are absent in both, so a report that says nothing
  agrees "exactly" on most values; F1 counts only what a label or a report claims.

A label is judged only when the synthetic set has at least `min_fidelity_positives` positives
and as many negatives (uncertain values are left out of that label) and, for images, a site has
at least `min_fidelity_real_positives` real training positives to learn it from. Judged labels
below the floors are weak; whether weak labels are dropped from the release or refuse it is the
policy's `weak_labels`. The rules that turn these figures into a verdict are in
`cxrsynth.privacy.audit.verdict`, shared by the audit and the release gate.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from cxrsynth.config import AuditPolicy
from cxrsynth.data.records import LABELS, Record
from cxrsynth.data.stream import ImageColumn, has_images, metadata_view, subset_view
from cxrsynth.progress import Progress


def label_counts(records: Sequence[Record]) -> dict[str, tuple[int, int]]:
    """label -> (positives, negatives) among records with labels; uncertain (-1) is neither,
    and "not mentioned" counts as negative (the CheXpert reading of an absent finding)."""
    pos, neg = dict.fromkeys(LABELS, 0), dict.fromkeys(LABELS, 0)
    for r in metadata_view(records):
        if not r.has_labels():
            continue
        for name in LABELS:
            v = r.labels.get(name)
            pos[name] += v == 1
            neg[name] += v in (0, None)
    return {name: (int(pos[name]), int(neg[name])) for name in LABELS}


def judged_labels(records: Sequence[Record], policy: AuditPolicy) -> list[str]:
    """Labels with enough positives and negatives among the synthetic records to be judged."""
    k = policy.min_fidelity_positives
    return [name for name, (pos, neg) in label_counts(records).items() if pos >= k and neg >= k]


def auroc_se(auroc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC (Hanley and McNeil 1982, Radiology 143:29, eq. 2)."""
    a = min(max(auroc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def _truth(records: Sequence[Record], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(is positive, is judged) per record for one label: uncertain values are not judged."""
    positive, judged = [], []
    for r in metadata_view(records):
        v = r.labels.get(name)
        positive.append(v == 1)
        judged.append(r.has_labels() and v != -1)
    return np.array(positive, dtype=bool), np.array(judged, dtype=bool)


def _auroc(scores: np.ndarray, positive: np.ndarray, keep: np.ndarray) -> Optional[float]:
    from sklearn.metrics import roc_auc_score

    y, s = positive[keep], scores[keep]
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def image_label_fidelity(
    synthetic: Sequence[Record],
    train: Sequence[Record],
    holdout: Sequence[Record],
    policy: AuditPolicy,
    site: str = "",
    progress: Optional[Progress] = None,
) -> dict:
    """The site's figures: per judged label, the AUROC of a classifier trained on this site's real
    training images scoring the synthetic images, its standard error, and the classifier's AUROC
    on the site's real holdout. Labels this site has too few real positives of are left out."""
    from cxrsynth.eval.classifier import predict, train_classifier

    # Indices, not records: the site's images are decoded when the classifier's batches draw them.
    present = has_images(train)
    real = subset_view(train, [i for i, r in enumerate(metadata_view(train)) if present[i] and r.has_labels()])
    real_pos = label_counts(real)
    labels = [n for n in judged_labels(synthetic, policy) if real_pos[n][0] >= policy.min_fidelity_real_positives]
    size = max(max(img.shape) for img in ImageColumn(synthetic))
    out: dict = {
        "n_train_labelled": len(real),
        "image_size": size,
        "steps": policy.fidelity_steps,
        "auroc": {},
        "se": {},
        "real_auroc": {},
    }
    if not labels:
        return out
    if progress is not None:
        progress.say(f"[{site}] label fidelity: classifier on {len(real)} real training images at {size} px")
    model = train_classifier(
        real,
        image_size=size,
        steps=policy.fidelity_steps,
        seed=policy.seed,
        progress=progress,
        label=f"[{site}] fidelity classifier",
    )
    p_syn = predict(model, ImageColumn(synthetic))
    p_hold = predict(model, ImageColumn(holdout)) if len(holdout) else np.zeros((0, len(LABELS)))
    for name in labels:
        j = LABELS.index(name)
        positive, keep = _truth(synthetic, name)
        a = _auroc(p_syn[:, j], positive, keep)
        if a is None:
            continue
        out["auroc"][name] = a
        out["se"][name] = auroc_se(a, int(positive[keep].sum()), int((~positive[keep]).sum()))
        if len(holdout):
            h_pos, h_keep = _truth(holdout, name)
            ref = _auroc(p_hold[:, j], h_pos, h_keep)
            if ref is not None:
                out["real_auroc"][name] = ref
    return out


def report_label_agreement(synthetic: Sequence[Record], policy: AuditPolicy) -> dict:
    """The steward's figures: per judged label, the positive F1 between the labeler's reading of
    each synthetic report and the record's labels; exact agreement over all 14 for reference."""
    from cxrsynth.eval.labels import label_agreement

    meta = metadata_view(synthetic)
    with_text = subset_view(meta, [i for i, r in enumerate(meta) if r.report.strip() and r.has_labels()])
    if not len(with_text):
        return {
            "status": "no_reports",
            "n": 0,
            "note": "no synthetic record holds report text (with labels) for the labeler to read",
        }
    agreement = label_agreement(with_text)
    counts = label_counts(with_text)
    labels = {}
    for name in judged_labels(with_text, policy):
        f1 = agreement["positive_f1"][name]
        if f1 is not None:
            labels[name] = {"f1": f1, "n_pos": counts[name][0]}
    return {"status": "ran", "n": agreement["n"], "exact_agreement": agreement["exact_agreement"], "labels": labels}


def pool_sites(answers: list[dict], synthetic_counts: Optional[dict[str, tuple[int, int]]] = None) -> dict:
    """Per-label pooled figures over the sites that judged each label, weighted by the sites'
    labelled training records. The sites score one synthetic set, so their errors are strongly
    correlated: the pooled standard error is the weighted mean of theirs, not a shrunken one."""
    fid = [(a["fidelity"], a["fidelity"].get("n_train_labelled", 0)) for a in answers if "fidelity" in a]
    labels: dict = {}
    for name in LABELS:
        rows = [
            (f["auroc"][name], f["se"][name], f.get("real_auroc", {}).get(name), w)
            for f, w in fid
            if name in f.get("auroc", {})
        ]
        if not rows:
            continue
        w = np.array([max(r[3], 1) for r in rows], dtype=np.float64)
        refs = [(r[2], r[3]) for r in rows if r[2] is not None]
        labels[name] = {
            "auroc": float(np.dot(w, [r[0] for r in rows]) / w.sum()),
            "se": float(np.dot(w, [r[1] for r in rows]) / w.sum()),
            "real_auroc": float(np.average([x for x, _ in refs], weights=[max(v, 1) for _, v in refs]))
            if refs
            else None,
            "sites": len(rows),
        }
        if synthetic_counts is not None:
            labels[name]["n_pos"], labels[name]["n_neg"] = synthetic_counts[name]
    return labels


def label_rows(checks: dict, policy: AuditPolicy) -> list[dict]:
    """One row per label the synthetic set states as positive, for the audit page and the dataset
    card: the figures, a confidence interval of the image AUROC, and what the release does with it."""
    from scipy.stats import norm

    from cxrsynth.privacy.audit.verdict import dropped_labels, weak_image_labels, weak_report_labels

    image, text = checks.get("label_fidelity", {}), checks.get("report_labels", {})
    img_labels = image.get("labels", {}) if image.get("status") == "ran" else {}
    txt_labels = text.get("labels", {}) if text.get("status") == "ran" else {}
    weak = set(weak_image_labels(image, policy) if img_labels else []) | set(
        weak_report_labels(text, policy) if txt_labels else []
    )
    dropped = set(dropped_labels(checks, policy))
    positives = image.get("positives", {})
    z = float(norm.ppf(1 - (1 - policy.confidence) / 2))
    rows = []
    for name in LABELS:
        f, t = img_labels.get(name), txt_labels.get(name)
        if f is None and t is None and not positives.get(name):
            continue
        judged = f is not None or t is not None
        status = "dropped" if name in dropped else "weak" if name in weak else "carried" if judged else "not checked"
        rows.append(
            {
                "label": name,
                "positives": positives.get(name, (f or {}).get("n_pos", (t or {}).get("n_pos"))),
                "auroc": f["auroc"] if f else None,
                "ci": [max(0.0, f["auroc"] - z * f["se"]), min(1.0, f["auroc"] + z * f["se"])] if f else None,
                "real_auroc": f.get("real_auroc") if f else None,
                "f1": t["f1"] if t else None,
                "status": status,
            }
        )
    return rows
