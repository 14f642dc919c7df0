"""The audit's page (report.html, the file name the seal and release bundles use): checks, per-site
table, distance histograms, ROC, flagged pairs. The data and figures are built here;
templates/audit.html draws them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from cxrsynth import pages

MAX_PAIRS = 24


def _png(fig: Figure) -> str:
    return pages.figure_uri(fig, dpi=90)


LABELS = {
    "synthetic_to_train": "synthetic → train",
    "synthetic_to_holdout": "synthetic → holdout",
    "holdout_to_train": "holdout → train",
}


def _hist_figure(rows: list[dict], key: str, xlabel: str, threshold: bool) -> Optional[str]:
    rows = [r for r in rows if key in r]
    if not rows:
        return None
    fig = Figure(figsize=(4.2 * len(rows), 3.2))
    axes = fig.subplots(1, len(rows), squeeze=False)
    for ax, r in zip(axes[0], rows):
        h = r[key]
        counts = {k: np.asarray(v, dtype=float) for k, v in h.items() if k in LABELS}
        n = len(next(iter(counts.values())))
        edges = np.linspace(0, h["top"], n + 1)
        mids = (edges[1:] + edges[:-1]) / 2
        for k, c in counts.items():
            ax.step(mids, c / max(c.sum(), 1), where="mid", label=LABELS[k])
        if threshold:
            ax.axvline(r["copy_threshold"], color="red", ls="--", lw=1, label="copy threshold")
        ax.set_title(f"{r['site']}", fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel("share")
    axes[0][0].legend(fontsize=7)
    return _png(fig)


def _roc_figure(rows: list[dict]) -> Optional[str]:
    rows = [r for r in rows if "roc" in r]
    if not rows:
        return None
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    for r in rows:
        ax.plot(r["roc"]["fpr"], r["roc"]["tpr"], label=f"{r['site']} (AUC {r['mia_auc']:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set_xlabel("false positive rate (holdout called member)")
    ax.set_ylabel("true positive rate (training called member)")
    ax.set_title("membership inference ROC")
    ax.legend(fontsize=7)
    return _png(fig)


def _pairs_figure(pairs: Sequence[tuple]) -> Optional[str]:
    if not pairs:
        return None
    pairs = list(pairs)[:MAX_PAIRS]
    fig = Figure(figsize=(4, 2 * len(pairs)))
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for (pair, syn, real), row in zip(pairs, axes):
        row[0].imshow(syn, cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"synthetic {pair.synthetic_id} ({pair.synthetic_view})", fontsize=7)
        row[1].imshow(real, cmap="gray", vmin=0, vmax=255)
        row[1].set_title(
            f"train {pair.train_record_id} ({pair.train_view}, patient {pair.patient_id}), d={pair.distance:.3f}",
            fontsize=7,
        )
        for ax in row:
            ax.axis("off")
    return _png(fig)


def _fidelity_figure(rows: list[dict], floor_auroc: float, floor_f1: float) -> Optional[str]:
    rows = [r for r in rows if r["auroc"] is not None or r["f1"] is not None]
    if not rows:
        return None
    colour = {"carried": "#2a7", "dropped": "#c33", "weak": "#c33", "not checked": "#999"}
    y = np.arange(len(rows))[::-1]
    fig = Figure(figsize=(10, 0.38 * len(rows) + 1.4))
    ax, bx = fig.subplots(1, 2, sharey=True)
    for yi, r in zip(y, rows):
        if r["auroc"] is not None:
            lo, hi = r["ci"]
            ax.barh(yi, r["auroc"] - 0.5, left=0.5, color=colour[r["status"]], height=0.6)
            ax.plot([lo, hi], [yi, yi], color="black", lw=1)
        if r["real_auroc"] is not None:
            ax.plot(r["real_auroc"], yi, "D", color="black", ms=4)
        if r["f1"] is not None:
            bx.barh(yi, r["f1"], color=colour[r["status"]], height=0.6)
    ax.axvline(floor_auroc, color="red", ls="--", lw=1)
    bx.axvline(floor_f1, color="red", ls="--", lw=1)
    ax.set_xlim(0.3, 1.0)
    bx.set_xlim(0, 1.0)
    ax.set_yticks(y, [f"{r['label']} ({r['status']})" for r in rows], fontsize=8)
    ax.set_xlabel(
        "synthetic images: AUROC against their labels (bar, 95% CI)\n\u25c6 the same classifier on real holdout images"
    )
    bx.set_xlabel("synthetic reports: positive F1 of the labeler\nagainst their labels")
    ax.set_title("images", fontsize=9)
    bx.set_title("reports", fontsize=9)
    return _png(fig)


def _fidelity(audit: dict) -> Optional[dict]:
    from cxrsynth.config import AuditPolicy
    from cxrsynth.privacy.audit.fidelity import label_rows

    policy = AuditPolicy.model_validate(audit.get("policy", {}))
    rows = label_rows(audit["checks"], policy)
    if not rows:
        return None
    return {
        "policy": policy,
        "figure": _fidelity_figure(rows, policy.min_label_fidelity_auroc, policy.min_report_label_agreement),
        "rows": [
            {
                "label": r["label"],
                "positives": r["positives"] if r["positives"] is not None else "",
                "auroc": r["auroc"] if r["auroc"] is not None else "not judged",
                "ci": r["ci"] or "",
                "real_auroc": r["real_auroc"] if r["real_auroc"] is not None else "n/a",
                "f1": r["f1"] if r["f1"] is not None else "not judged",
                "status": r["status"],
                "cls": {"carried": "ok", "not checked": ""}.get(r["status"], "bad"),
            }
            for r in rows
        ],
    }


SITE_COLUMNS = [
    "site",
    "n_train",
    "n_holdout",
    "copies",
    "lateral_copies",
    "copy_threshold",
    "holdout_copy_rate",
    "closeness",
    "closeness_ci",
    "rare_ngram_reports",
    "near_dup_rate",
    "near_dup_holdout_rate",
    "mia_auc",
    "mia_auc_ci",
    "tpr_at_1pct_fpr",
    "fidelity_macro_auroc",
    "fidelity_labels",
]
# Keys of a check that are not figures to list beside it.
NOT_FIGURES = ("passed", "status", "reasons", "note", "sites", "reports", "by_type", "problems")


def write_page(audit: dict, out: Path, pairs: Sequence[tuple] = ()) -> Path:
    """`pairs`: (CopyPair, synthetic image, training image); given only where the training image lives."""
    checks = [
        {
            "name": name,
            "passed": c["passed"],
            "status": c.get("status", ""),
            "figures": ", ".join(
                f"{k}={pages.sig(v)}" for k, v in c.items() if k not in NOT_FIGURES and not isinstance(v, dict)
            ),
            "reasons": "; ".join(c.get("reasons", [])) or c.get("note", ""),
        }
        for name, c in audit["checks"].items()
    ]
    # The copy-match method is the steward's policy: federated answers do not echo it back per site.
    aligned = audit.get("policy", {}).get("copy_match") == "aligned" or any(
        r.get("copy_match") == "aligned" for r in audit["sites"]
    )
    figures = [
        (
            "Distance to closest record (encoder embedding)",
            _hist_figure(audit["sites"], "dcr_hist", "embedding distance", not aligned),
        ),
        (
            "Copy search: distance after best alignment",
            _hist_figure(audit["sites"], "copy_hist", "aligned distance", True) if aligned else None,
        ),
        ("Membership inference", _roc_figure(audit["sites"])),
        ("Flagged pairs (synthetic | training)", _pairs_figure(pairs)),
    ]
    return pages.write(
        Path(out) / "report.html",
        "audit.html",
        title="cxrsynth privacy audit",
        passed=audit["passed"],
        checks=checks,
        dropped_labels=audit.get("dropped_labels") or [],
        fidelity=_fidelity(audit),
        site_columns=SITE_COLUMNS,
        site_rows=[[r.get(c, "") for c in SITE_COLUMNS] for r in audit["sites"]],
        figures=[(title, uri) for title, uri in figures if uri],
        flagged=audit["flagged"],
    )
