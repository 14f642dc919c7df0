"""One rule per audit check: its figures and the policy -> the reasons it fails (none: it passes).

The audit writes each check's verdict with these rules, and the release gate applies them again
to the figures in audit.json with the policy recorded there, so an edited `passed` field (or a
check that is missing, or skipped without the policy saying so) cannot open the gate.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import norm

from cxrsynth.config import AUDIT_CHECKS, AuditPolicy

Rule = Callable[[dict, AuditPolicy], list[str]]


def _not_ran(c: dict, default: str) -> list[str]:
    return [c.get("note") or default]


def _no_reports(c: dict) -> bool:
    """The text checks pass with status "no_reports": no training report to leak (text leakage),
    or no synthetic report to scan or read (PHI, report labels)."""
    return c.get("status") == "no_reports"


def image_copies(c: dict, p: AuditPolicy) -> list[str]:
    rate, hold = c["copy_rate"], c["holdout_copy_rate"]
    reasons = []
    if rate > p.max_copy_rate:
        reasons.append(f"copy rate {rate:.4f} exceeds max_copy_rate {p.max_copy_rate}")
    if c["copies"] and rate > hold:
        reasons.append(f"copy rate {rate:.4f} is higher than holdout's own rate {hold:.4f}")
    return reasons


def image_closeness(c: dict, p: AuditPolicy) -> list[str]:
    if p.closeness_test == "permutation" and "p_value" in c:
        alpha = 1 - p.confidence
        if c["p_value"] >= alpha:
            return []
        lo, hi = c["nearest_train_expected"]
        return [
            f"{c['nearest_train_share']:.3f} of synthetic images have a training image as their nearest real image, more than "
            f"a model with no memory of the training patients gives ({lo:.3f}-{hi:.3f}; p = {c['p_value']:.3f} < {alpha:.2f}): "
            "synthetic images sit nearer training than unseen patients"
        ]
    if c["ci"][1] <= p.max_closeness_upper:
        return []
    return [
        f"closeness share {c['share']:.3f} (CI upper {c['ci'][1]:.3f}) exceeds max_closeness_upper {p.max_closeness_upper}: synthetic images sit nearer training than unseen patients"
    ]


def text_rare_ngrams(c: dict, p: AuditPolicy) -> list[str]:
    if _no_reports(c):
        return []
    if c["leaked_ngrams"] <= p.max_rare_ngram_leaks:
        return []
    return [
        f"{c['leaked_ngrams']} rare training n-gram(s) (n={p.rare_ngram_n}, in fewer than {p.rare_ngram_k} training reports) in {c['leaking_reports']} synthetic report(s)"
    ]


def text_near_duplicates(c: dict, p: AuditPolicy) -> list[str]:
    if _no_reports(c):
        return []
    if c["rate"] <= c["holdout_rate"] + p.max_near_duplicate_excess:
        return []
    return [
        f"near-duplicate report rate {c['rate']:.3f} exceeds holdout's {c['holdout_rate']:.3f} by more than {p.max_near_duplicate_excess}"
    ]


def text_embedding(c: dict, p: AuditPolicy) -> list[str]:
    if _no_reports(c):
        return []
    if c["status"] == "unavailable":
        return (
            []
            if p.text_encoder is None
            else [f"policy text_encoder {p.text_encoder} is set but no site ran the embedding check"]
        )
    if c["rate"] <= c["holdout_rate"] + p.max_near_duplicate_excess:
        return []
    return [
        f"{c['rate']:.3f} of synthetic reports sit closer to a training report than the calibrated threshold (holdout: {c['holdout_rate']:.3f})"
    ]


def phi(c: dict, p: AuditPolicy) -> list[str]:
    if _no_reports(c):
        return []
    if c["status"] != "ran":
        return _not_ran(c, "the PHI scan did not run")
    if c["findings"] <= p.max_phi_findings:
        return []
    return [f"{c['findings']} PHI finding(s) ({c.get('by_type', {})}) in synthetic reports"]


def membership(c: dict, p: AuditPolicy) -> list[str]:
    if c["status"] != "ran":
        return _not_ran(c, "membership inference did not run")
    if c["auc_ci"][1] <= p.max_mia_auc_upper:
        return []
    return [
        f"membership AUC {c['auc']:.3f} (CI upper {c['auc_ci'][1]:.3f}) exceeds max_mia_auc_upper {p.max_mia_auc_upper}: the model tells its training patients from unseen ones"
    ]


def dp_ledger(c: dict, p: AuditPolicy) -> list[str]:
    if c["status"] != "ran":
        return _not_ran(c, "the DP ledger was not read") if p.require_dp else []
    worst = c.get("epsilon_max")
    over = p.epsilon_budget is not None and worst is not None and worst > p.epsilon_budget
    reasons = []
    if p.require_dp:
        reasons += list(c.get("problems", []))
        if not c.get("sites"):
            reasons.append("policy require_dp is true and no site has a DP ledger entry")
        if p.epsilon_budget is None:
            reasons.append("policy require_dp is true but epsilon_budget is not set")
    if over:
        reasons.append(f"epsilon {worst:.3g} exceeds the policy budget {p.epsilon_budget:g}")
    return reasons


# ---- label fidelity ------------------------------------------------------------------------------
def weak_image_labels(c: dict, p: AuditPolicy) -> list[str]:
    """Judged labels whose images are not shown to carry them: pooled AUROC below the floor, or
    not above chance (0.5) at the policy's confidence, so a lucky draw on a few positives does
    not pass."""
    z = float(norm.ppf(1 - (1 - p.confidence) / 2))
    return [
        n
        for n, f in c.get("labels", {}).items()
        if f["auroc"] < p.min_label_fidelity_auroc or f["auroc"] - z * f["se"] <= 0.5
    ]


def weak_report_labels(c: dict, p: AuditPolicy) -> list[str]:
    return [n for n, f in c.get("labels", {}).items() if f["f1"] < p.min_report_label_agreement]


def _label_rule(
    c: dict, p: AuditPolicy, what: str, figure: str, macro: float, floor: float, floor_key: str, weak: list[str]
) -> list[str]:
    if c["status"] != "ran":
        return _not_ran(c, f"{what} did not run")
    named = ", ".join(weak)
    reasons = []
    if macro < floor:
        reasons.append(
            f"{what}: macro {figure} {macro:.3f} is below {floor_key} {floor}; labels not carried: {named or 'none judged weak'}"
        )
    elif weak and p.weak_labels == "refuse":
        reasons.append(
            f"{what}: label(s) not carried: {named} ({figure} below {floor_key} {floor}); policy weak_labels: refuse"
        )
    elif len(weak) == len(c["labels"]):
        reasons.append(f"{what}: no judged label is carried ({named}); nothing would be left to release")
    return reasons


def label_fidelity(c: dict, p: AuditPolicy) -> list[str]:
    if c["status"] == "no_labels":
        return []
    if c["status"] != "ran":
        return _not_ran(c, "label fidelity did not run")
    macro = float(np.mean([f["auroc"] for f in c["labels"].values()]))
    return _label_rule(
        c,
        p,
        "synthetic images",
        "AUROC",
        macro,
        p.min_label_fidelity_auroc,
        "min_label_fidelity_auroc",
        weak_image_labels(c, p),
    )


def report_labels(c: dict, p: AuditPolicy) -> list[str]:
    if c["status"] in ("no_reports", "no_labels"):
        return []
    if c["status"] != "ran":
        return _not_ran(c, "report label agreement did not run")
    macro = float(np.mean([f["f1"] for f in c["labels"].values()]))
    return _label_rule(
        c,
        p,
        "synthetic reports",
        "positive F1",
        macro,
        p.min_report_label_agreement,
        "min_report_label_agreement",
        weak_report_labels(c, p),
    )


def earlier_audits(c: dict, p: AuditPolicy) -> list[str]:
    """The steward's register (cxrsynth.privacy.audit.register): failed audits of the same model."""
    if c["status"] == "not_registered":
        return []  # an unsealed audit, which the release gate refuses on its own
    if c["status"] != "ran":
        return _not_ran(c, "the register of earlier audits was not read")
    if c["failed_before"] <= p.max_failed_audits:
        return []
    lines = "; ".join(f"line {e['line']} ({e['time']}): {', '.join(e['failed'])}" for e in c["earlier"])
    return [
        f"{c['failed_before']} earlier audit(s) of {c['subject']} failed ({lines}); policy max_failed_audits "
        f"{p.max_failed_audits}: a model whose sample failed is not released by sampling it again"
        + (
            " (these samples name no model, so they are counted against their training records: give the audit --checkpoint)"
            if c["subject"].startswith("training records")
            else ""
        )
    ]


RULES: dict[str, Rule] = {
    "image_copies": image_copies,
    "image_closeness": image_closeness,
    "text_rare_ngrams": text_rare_ngrams,
    "text_near_duplicates": text_near_duplicates,
    "text_embedding": text_embedding,
    "phi": phi,
    "membership": membership,
    "dp_ledger": dp_ledger,
    "label_fidelity": label_fidelity,
    "report_labels": report_labels,
    "earlier_audits": earlier_audits,
}
assert set(RULES) == set(AUDIT_CHECKS), "every audit check needs its rule"


def check_reasons(name: str, c: dict, p: AuditPolicy) -> list[str]:
    """Why one check fails under policy `p` (empty: it passes)."""
    if c.get("status") == "skipped":
        return [] if name in p.skip else ["marked skipped, but the policy's skip list does not leave it out"]
    return RULES[name](c, p)


def verdict(checks: dict, p: AuditPolicy) -> dict[str, list[str]]:
    """check name -> reasons it fails, for every check the policy requires; a missing check or
    one whose figures are missing fails."""
    failed = {}
    for name in AUDIT_CHECKS:
        c = checks.get(name)
        if not isinstance(c, dict):
            failed[name] = ["missing from the audit"]
            continue
        try:
            reasons = check_reasons(name, c, p)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            reasons = [f"its figures are incomplete ({e.__class__.__name__}: {e})"]
        if reasons:
            failed[name] = reasons
    return failed


def dropped_labels(checks: dict, p: AuditPolicy) -> list[str]:
    """Labels the release leaves out (their column emptied): weak labels when the policy drops them."""
    if p.weak_labels != "drop":
        return []
    weak = set()
    if checks.get("label_fidelity", {}).get("status") == "ran":
        weak |= set(weak_image_labels(checks["label_fidelity"], p))
    if checks.get("report_labels", {}).get("status") == "ran":
        weak |= set(weak_report_labels(checks["report_labels"], p))
    from cxrsynth.data.records import LABELS

    return [n for n in LABELS if n in weak]
