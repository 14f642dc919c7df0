"""The steward's side: combine the sites' answers and the steward's own checks into the gate.

Pooled figures weight each site by its size and average the sites' bootstrap replicates
replicate by replicate (the sites resample the shared synthetic set with the same indices), so
the pooled interval is as narrow as the pooled data allows without any record leaving a site.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cxrsynth.config import AuditPolicy
from privacy.audit.stats import percentile_ci

FORMAT = "cxrsynth-audit/1"


def _pooled(values: list[float], replicates: list[list[float]], weights: list[float], confidence: float) -> tuple[float, list[float]]:
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    point = float(np.dot(w, values))
    reps = np.asarray(replicates, dtype=np.float64).T @ w
    return point, percentile_ci(reps, confidence)


def _skipped() -> dict:
    return {"passed": True, "status": "skipped", "reasons": ["left out by the policy's skip list"]}


def _image_checks(answers: list[dict], policy: AuditPolicy, n_syn: int) -> tuple[dict, dict, list[str]]:
    imgs = [a["images"] for a in answers if "images" in a]
    if not imgs:
        return _skipped(), _skipped(), []
    copies = sorted({c for i in imgs for c in i["copies"]})
    rate = len(copies) / max(n_syn, 1)
    hold_rate = float(np.average([i["holdout_copy_rate"] for i in imgs], weights=[i["n_holdout"] for i in imgs]))
    reasons = []
    if rate > policy.max_copy_rate:
        reasons.append(f"copy rate {rate:.4f} exceeds max_copy_rate {policy.max_copy_rate}")
    if copies and rate > hold_rate:
        reasons.append(f"copy rate {rate:.4f} is higher than holdout's own rate {hold_rate:.4f}")
    copy_check = {"passed": not reasons, "status": "ran", "copies": len(copies), "copy_rate": rate, "holdout_copy_rate": hold_rate, "threshold_by_site": {a["site"]: a["images"]["copy_threshold"] for a in answers if "images" in a}, "reasons": reasons}
    share, ci = _pooled([i["closeness_share"] for i in imgs], [i["closeness_replicates"] for i in imgs], [i["n_holdout"] for i in imgs], policy.confidence)
    close_reasons = [] if ci[1] <= policy.max_closeness_upper else [f"closeness share {share:.3f} (CI upper {ci[1]:.3f}) exceeds max_closeness_upper {policy.max_closeness_upper}: synthetic images sit nearer training than unseen patients"]
    closeness = {"passed": not close_reasons, "status": "ran", "share": share, "ci": ci, "ideal": 0.5, "reasons": close_reasons}
    if "image_copies" in policy.skip:
        copy_check, copies = _skipped(), []
    if "image_closeness" in policy.skip:
        closeness = _skipped()
    return copy_check, closeness, copies


def _membership(answers: list[dict], policy: AuditPolicy) -> dict:
    ms = [(a["site"], a.get("membership")) for a in answers]
    if "membership" in policy.skip:
        return _skipped()
    missing = [f"site {s}: {m['reason'] if m else 'no answer'}" for s, m in ms if not m or m.get("status") != "ran"]
    if missing:
        return {"passed": False, "status": "not_run", "reasons": missing}
    ran = [m for _, m in ms]
    weights = [m["n_members"] * m["n_nonmembers"] for m in ran]
    auc, auc_ci = _pooled([m["auc"] for m in ran], [m["auc_replicates"] for m in ran], weights, policy.confidence)
    tpr, tpr_ci = _pooled([m["tpr_at_1pct_fpr"] for m in ran], [m["tpr_replicates"] for m in ran], [m["n_members"] for m in ran], policy.confidence)
    reasons = [] if auc_ci[1] <= policy.max_mia_auc_upper else [f"membership AUC {auc:.3f} (CI upper {auc_ci[1]:.3f}) exceeds max_mia_auc_upper {policy.max_mia_auc_upper}: the model tells its training patients from unseen ones"]
    return {"passed": not reasons, "status": "ran", "auc": auc, "auc_ci": auc_ci, "tpr_at_1pct_fpr": tpr, "tpr_ci": tpr_ci, "reasons": reasons}


def _text_checks(answers: list[dict], policy: AuditPolicy, n_syn: int) -> tuple[dict, dict, dict, list[str]]:
    rare = [a["rare_ngrams"] for a in answers if "rare_ngrams" in a]
    if rare:
        leaking = sorted({r for x in rare for r in x["leaking_reports"]})
        count = sum(x["leaked_ngrams"] for x in rare)
        reasons = [] if count <= policy.max_rare_ngram_leaks else [f"{count} rare training n-gram(s) (n={policy.rare_ngram_n}, in fewer than {policy.rare_ngram_k} training reports) in {len(leaking)} synthetic report(s)"]
        rare_check = {"passed": not reasons, "status": "ran", "leaked_ngrams": count, "leaking_reports": len(leaking), "holdout_leak_rate": float(np.mean([x["holdout_leak_rate"] for x in rare])), "reasons": reasons}
    else:
        rare_check, leaking = _skipped(), []
    dups = [a["near_duplicates"] for a in answers if "near_duplicates" in a]
    if dups:
        dup_ids = {r for x in dups for r in x["duplicated_reports"]}
        rate = len(dup_ids) / max(n_syn, 1)
        base = float(np.average([x["holdout_rate"] for x in dups], weights=[a["n_holdout"] for a in answers if "near_duplicates" in a]))
        reasons = [] if rate <= base + policy.max_near_duplicate_excess else [f"near-duplicate report rate {rate:.3f} exceeds holdout's {base:.3f} by more than {policy.max_near_duplicate_excess}"]
        dup_check = {"passed": not reasons, "status": "ran", "rate": rate, "holdout_rate": base, "jaccard": policy.near_duplicate_jaccard, "reasons": reasons}
    else:
        dup_check = _skipped()
    emb = [a["text_embedding"] for a in answers if "text_embedding" in a]
    if emb:
        close = {r for x in emb for r in x["close_reports"]}
        rate = len(close) / max(n_syn, 1)
        base = float(np.mean([x["holdout_rate"] for x in emb]))
        reasons = [] if rate <= base + policy.max_near_duplicate_excess else [f"{rate:.3f} of synthetic reports sit closer to a training report than the calibrated threshold (holdout: {base:.3f})"]
        emb_check = {"passed": not reasons, "status": "ran", "rate": rate, "holdout_rate": base, "reasons": reasons}
    elif "text_embedding" in policy.skip:
        emb_check = _skipped()
    else:
        emb_check = {"passed": True, "status": "unavailable", "reasons": ["no local sentence-embedding model (policy key text_encoder); rare n-grams and MinHash still ran"]}
    return rare_check, dup_check, emb_check, leaking


def combine(answers: list[dict], policy: AuditPolicy, phi: Optional[dict] = None, dp: Optional[dict] = None, inputs: Optional[dict] = None) -> dict:
    """audit.json from the sites' answers and the steward's PHI and DP-ledger checks."""
    n_syn = max((a["n_synthetic"] for a in answers), default=0)
    copies_check, closeness, copies = _image_checks(answers, policy, n_syn)
    rare_check, dup_check, emb_check, leaking = _text_checks(answers, policy, n_syn)
    if "phi" in policy.skip:
        phi_check = _skipped()
    elif phi is None:
        phi_check = {"passed": False, "status": "not_run", "reasons": ["the PHI scan did not run"]}
    else:
        phi_check = {"reasons": [] if phi["passed"] else [phi.get("reason") or f"{phi['findings']} PHI finding(s) ({phi['by_type']}) in synthetic reports"], **phi}
    if "dp_ledger" in policy.skip:
        dp_check = _skipped()
    elif dp is None:
        dp_check = {"passed": not policy.require_dp, "status": "not_run", "reasons": ["no checkpoint given (audit --checkpoint): the DP ledger was not read"]}
    else:
        dp_check = dp
    checks = {
        "image_copies": copies_check,
        "image_closeness": closeness,
        "text_rare_ngrams": rare_check,
        "text_near_duplicates": dup_check,
        "text_embedding": emb_check,
        "phi": phi_check,
        "membership": _membership(answers, policy),
        "dp_ledger": dp_check,
    }
    flagged_reports = sorted(set(leaking) | set((phi or {}).get("reports", [])))
    return {
        "format": FORMAT,
        "passed": all(c["passed"] for c in checks.values()),
        "checks": checks,
        "flagged": {"images": copies, "reports": flagged_reports},
        "sites": [_site_row(a) for a in answers],
        "policy": policy.model_dump(mode="json"),
        "inputs": inputs or {},
    }


def _site_row(a: dict) -> dict:
    row = {"site": a["site"], "n_train": a["n_train"], "n_holdout": a["n_holdout"]}
    if "images" in a:
        i = a["images"]
        row.update(copies=len(i["copies"]), copy_match=i.get("copy_match", ""), copy_threshold=i["copy_threshold"], holdout_copy_rate=i["holdout_copy_rate"], closeness=i["closeness_share"], closeness_ci=i["closeness_ci"], dcr_hist=i["dcr_hist"], copy_hist=i["copy_hist"], dcr_median=i["dcr_median"])
    if "rare_ngrams" in a:
        row["rare_ngram_reports"] = len(a["rare_ngrams"]["leaking_reports"])
    if "near_duplicates" in a:
        row.update(near_dup_rate=a["near_duplicates"]["rate"], near_dup_holdout_rate=a["near_duplicates"]["holdout_rate"])
    m = a.get("membership") or {}
    if m.get("status") == "ran":
        row.update(mia_auc=m["auc"], mia_auc_ci=m["auc_ci"], tpr_at_1pct_fpr=m["tpr_at_1pct_fpr"], roc=m["roc"])
    elif m:
        row["mia"] = m.get("status")
    return row
