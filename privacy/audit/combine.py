"""The steward's side: combine the sites' answers and the steward's own checks into the gate.

Pooled figures weight each site by its size and average the sites' bootstrap replicates
replicate by replicate (the sites resample the shared synthetic set with the same indices), so
the pooled interval is as narrow as the pooled data allows without any record leaving a site.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cxrsynth.config import AuditPolicy
from cxrsynth.privacy.audit.fidelity import pool_sites
from cxrsynth.privacy.audit.register import UNREGISTERED
from cxrsynth.privacy.audit.results import FORMAT
from cxrsynth.privacy.audit.stats import percentile_ci, permutation_p
from cxrsynth.privacy.audit.verdict import check_reasons, dropped_labels


def _pooled(
    values: list[float], replicates: list[list[float]], weights: list[float], confidence: float
) -> tuple[float, list[float]]:
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    point = float(np.dot(w, values))
    reps = np.asarray(replicates, dtype=np.float64).T @ w
    return point, percentile_ci(reps, confidence)


def _skipped() -> dict:
    return {"status": "skipped", "note": "left out by the policy's skip list"}


def _no_training_reports(answers: list[dict]) -> bool:
    """Every site said its training data hold no report text (an answer without the count, from
    an older site, is taken to hold reports, so its missing text checks fail)."""
    return all(a.get("n_train_reports", 1) == 0 for a in answers)


NO_TRAINING_REPORTS = {
    "status": "no_reports",
    "note": "no site's training data hold report text: there is no training report to leak, so the check has nothing to compare",
}


def _image_checks(answers: list[dict], policy: AuditPolicy, n_syn: int) -> tuple[dict, dict, list[str]]:
    imgs = [a["images"] for a in answers if "images" in a]
    if not imgs:
        return _skipped(), _skipped(), []
    frontal = {c for i in imgs for c in i["copies"]}
    lateral = {c for i in imgs for c in i.get("lateral_copies", [])}
    copies = sorted(frontal | lateral)
    hold_rate = float(np.average([i["holdout_copy_rate"] for i in imgs], weights=[i["n_holdout"] for i in imgs]))
    copy_check = {
        "status": "ran",
        "copies": len(copies),
        "lateral_copies": len(lateral),
        "copy_rate": len(copies) / max(n_syn, 1),
        "holdout_copy_rate": hold_rate,
        "threshold_by_site": {a["site"]: a["images"]["copy_threshold"] for a in answers if "images" in a},
    }
    share, ci = _pooled(
        [i["closeness_share"] for i in imgs],
        [i["closeness_replicates"] for i in imgs],
        [i["n_holdout"] for i in imgs],
        policy.confidence,
    )
    closeness = {"status": "ran", "share": share, "ci": ci, "ideal": 0.5}
    if all("nearest_train_null" in i for i in imgs):
        # The permutation test (AuditPolicy.closeness_test): the share of synthetic images whose
        # nearest reference of all is a training image, against that share when each site's
        # reference patients are dealt at random between its two sides. The sites' deals are
        # independent, so the weighted mean of their b-th deals is a draw of the pooled share.
        w = np.asarray([i["n_holdout"] for i in imgs], dtype=np.float64)
        w = w / w.sum()
        near = float(np.dot(w, [i["nearest_train_share"] for i in imgs]))
        null = np.asarray([i["nearest_train_null"] for i in imgs], dtype=np.float64).T @ w
        closeness["nearest_train_share"] = near
        closeness["nearest_train_expected"] = percentile_ci(null, policy.confidence)
        closeness["p_value"] = permutation_p(near, null)
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
        return {"status": "not_run", "note": "; ".join(missing)}
    ran = [m for _, m in ms]
    weights = [m["n_members"] * m["n_nonmembers"] for m in ran]
    auc, auc_ci = _pooled([m["auc"] for m in ran], [m["auc_replicates"] for m in ran], weights, policy.confidence)
    tpr, tpr_ci = _pooled(
        [m["tpr_at_1pct_fpr"] for m in ran],
        [m["tpr_replicates"] for m in ran],
        [m["n_members"] for m in ran],
        policy.confidence,
    )
    return {"status": "ran", "auc": auc, "auc_ci": auc_ci, "tpr_at_1pct_fpr": tpr, "tpr_ci": tpr_ci}


def _text_checks(answers: list[dict], policy: AuditPolicy, n_syn: int) -> tuple[dict, dict, dict, list[str]]:
    rare = [a["rare_ngrams"] for a in answers if "rare_ngrams" in a]
    if not rare and "text_rare_ngrams" not in policy.skip and _no_training_reports(answers):
        rare_check, leaking = dict(NO_TRAINING_REPORTS), []
    elif rare:
        leaking = sorted({r for x in rare for r in x["leaking_reports"]})
        count = sum(x["leaked_ngrams"] for x in rare)
        rare_check = {
            "status": "ran",
            "leaked_ngrams": count,
            "leaking_reports": len(leaking),
            "holdout_leak_rate": float(np.mean([x["holdout_leak_rate"] for x in rare])),
        }
    else:
        rare_check, leaking = _skipped(), []
    dups = [a["near_duplicates"] for a in answers if "near_duplicates" in a]
    if not dups and "text_near_duplicates" not in policy.skip and _no_training_reports(answers):
        dup_check = dict(NO_TRAINING_REPORTS)
    elif dups:
        dup_ids = {r for x in dups for r in x["duplicated_reports"]}
        base = float(
            np.average(
                [x["holdout_rate"] for x in dups], weights=[a["n_holdout"] for a in answers if "near_duplicates" in a]
            )
        )
        dup_check = {
            "status": "ran",
            "rate": len(dup_ids) / max(n_syn, 1),
            "holdout_rate": base,
            "jaccard": policy.near_duplicate_jaccard,
        }
    else:
        dup_check = _skipped()
    emb = [a["text_embedding"] for a in answers if "text_embedding" in a]
    if emb:
        close = {r for x in emb for r in x["close_reports"]}
        emb_check = {
            "status": "ran",
            "rate": len(close) / max(n_syn, 1),
            "holdout_rate": float(np.mean([x["holdout_rate"] for x in emb])),
        }
    elif "text_embedding" in policy.skip:
        emb_check = _skipped()
    elif _no_training_reports(answers):
        emb_check = dict(NO_TRAINING_REPORTS)
    else:
        emb_check = {
            "status": "unavailable",
            "note": "no local sentence-embedding model (policy key text_encoder); rare n-grams and MinHash still ran",
        }
    return rare_check, dup_check, emb_check, leaking


def _label_checks(answers: list[dict], policy: AuditPolicy, labels: Optional[dict]) -> tuple[dict, dict]:
    """Label fidelity of the images (pooled from the sites) and of the reports (the steward's)."""
    counts = (labels or {}).get("counts")
    claimed = counts is None or any(pos for pos, _ in counts.values())
    none_judged = (
        f"no label could be judged: each needs at least {policy.min_fidelity_positives} synthetic positives and as many negatives"
        f" (and, for images, {policy.min_fidelity_real_positives} real training positives at a site)"
    )
    if "label_fidelity" in policy.skip:
        image = _skipped()
    elif not claimed:
        image = {"status": "no_labels", "note": "no synthetic record carries a positive label"}
    elif not any("fidelity" in a for a in answers):
        image = {"status": "not_run", "note": "no site answered with label fidelity figures"}
    else:
        pooled = pool_sites(answers, counts)
        image = (
            {"status": "ran", "labels": pooled, "macro_auroc": float(np.mean([f["auroc"] for f in pooled.values()]))}
            if pooled
            else {"status": "not_run", "note": none_judged}
        )
    if counts is not None and image["status"] in ("ran", "not_run"):
        image["positives"] = {n: pos for n, (pos, _) in counts.items() if pos}
    report = (labels or {}).get("reports")
    if "report_labels" in policy.skip:
        text = _skipped()
    elif report is None:
        text = {"status": "not_run", "note": "the synthetic reports were not read by the labeler"}
    elif report["status"] != "ran":
        text = report
    elif not claimed:
        text = {"status": "no_labels", "note": "no synthetic record carries a positive label"}
    elif not report["labels"]:
        text = {"status": "not_run", "note": none_judged.split(" (and")[0]}
    else:
        text = {**report, "macro_positive_f1": float(np.mean([f["f1"] for f in report["labels"].values()]))}
    return image, text


def combine(
    answers: list[dict],
    policy: AuditPolicy,
    phi: Optional[dict] = None,
    dp: Optional[dict] = None,
    inputs: Optional[dict] = None,
    labels: Optional[dict] = None,
) -> dict:
    """audit.json from the sites' answers and the steward's PHI, DP-ledger and report-label checks.

    `labels`: {"counts": label -> (synthetic positives, negatives), "reports": the report-label
    figures} (cxrsynth.privacy.audit.fidelity); without it (a site's own report) only the images' figures show.
    """
    n_syn = max((a["n_synthetic"] for a in answers), default=0)
    copies_check, closeness, copies = _image_checks(answers, policy, n_syn)
    rare_check, dup_check, emb_check, leaking = _text_checks(answers, policy, n_syn)
    if "phi" in policy.skip:
        phi_check = _skipped()
    elif phi is None:
        phi_check = {"status": "not_run", "note": "the PHI scan did not run"}
    else:
        phi_check = {k: v for k, v in phi.items() if k not in ("passed", "reason")}
        if phi.get("reason"):
            phi_check["note"] = phi["reason"]
    if "dp_ledger" in policy.skip:
        dp_check = _skipped()
    elif dp is None:
        dp_check = {
            "status": "not_run",
            "note": "no checkpoint given (audit --checkpoint): the DP ledger was not read",
        }
    else:
        dp_check = dp
    image_labels, report_labels = _label_checks(answers, policy, labels)
    checks = {
        "image_copies": copies_check,
        "image_closeness": closeness,
        "text_rare_ngrams": rare_check,
        "text_near_duplicates": dup_check,
        "text_embedding": emb_check,
        "phi": phi_check,
        "membership": _membership(answers, policy),
        "dp_ledger": dp_check,
        "label_fidelity": image_labels,
        "report_labels": report_labels,
        # Filled from the steward's register when the audit is sealed (run.write_audit).
        "earlier_audits": dict(UNREGISTERED),
    }
    for name, c in checks.items():
        reasons = check_reasons(name, c, policy)
        checks[name] = {"passed": not reasons, **c, "reasons": reasons}
    flagged_reports = sorted(set(leaking) | set((phi or {}).get("reports", [])))
    return {
        "format": FORMAT,
        "passed": all(c["passed"] for c in checks.values()),
        "checks": checks,
        "flagged": {"images": copies, "reports": flagged_reports},
        "dropped_labels": dropped_labels(checks, policy),
        "sites": [_site_row(a) for a in answers],
        "policy": policy.model_dump(mode="json"),
        "inputs": inputs or {},
    }


def _site_row(a: dict) -> dict:
    row = {"site": a["site"], "n_train": a["n_train"], "n_holdout": a["n_holdout"]}
    if "images" in a:
        i = a["images"]
        row.update(
            copies=len(i["copies"]),
            lateral_copies=len(i.get("lateral_copies", [])),
            copy_match=i.get("copy_match", ""),
            copy_threshold=i["copy_threshold"],
            holdout_copy_rate=i["holdout_copy_rate"],
            closeness=i["closeness_share"],
            closeness_ci=i["closeness_ci"],
            dcr_hist=i["dcr_hist"],
            copy_hist=i["copy_hist"],
            dcr_median=i["dcr_median"],
        )
    if "rare_ngrams" in a:
        row["rare_ngram_reports"] = len(a["rare_ngrams"]["leaking_reports"])
    if "near_duplicates" in a:
        row.update(
            near_dup_rate=a["near_duplicates"]["rate"], near_dup_holdout_rate=a["near_duplicates"]["holdout_rate"]
        )
    fid = (a.get("fidelity") or {}).get("auroc") or {}
    if fid:
        row.update(fidelity_macro_auroc=float(np.mean(list(fid.values()))), fidelity_labels=len(fid))
    m = a.get("membership") or {}
    if m.get("status") == "ran":
        row.update(mia_auc=m["auc"], mia_auc_ci=m["auc_ci"], tpr_at_1pct_fpr=m["tpr_at_1pct_fpr"], roc=m["roc"])
    elif m:
        row["mia"] = m.get("status")
    return row
