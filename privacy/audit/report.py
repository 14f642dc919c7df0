"""The audit's HTML report: checks, per-site table, distance histograms, ROC, flagged pairs."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_PAIRS = 24


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


LABELS = {"synthetic_to_train": "synthetic → train", "synthetic_to_holdout": "synthetic → holdout", "holdout_to_train": "holdout → train"}


def _hist_figure(rows: list[dict], key: str, xlabel: str, threshold: bool) -> Optional[str]:
    rows = [r for r in rows if key in r]
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.2), squeeze=False)
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
    fig, ax = plt.subplots(figsize=(4, 4))
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
    fig, axes = plt.subplots(len(pairs), 2, figsize=(4, 2 * len(pairs)), squeeze=False)
    for (pair, syn, real), row in zip(pairs, axes):
        row[0].imshow(syn, cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"synthetic {pair.synthetic_id} ({pair.synthetic_view})", fontsize=7)
        row[1].imshow(real, cmap="gray", vmin=0, vmax=255)
        row[1].set_title(f"train {pair.train_record_id} ({pair.train_view}, patient {pair.patient_id}), d={pair.distance:.3f}", fontsize=7)
        for ax in row:
            ax.axis("off")
    return _png(fig)


def _fidelity_figure(rows: list[dict], floor_auroc: float, floor_f1: float) -> Optional[str]:
    rows = [r for r in rows if r["auroc"] is not None or r["f1"] is not None]
    if not rows:
        return None
    colour = {"carried": "#2a7", "dropped": "#c33", "weak": "#c33", "not checked": "#999"}
    y = np.arange(len(rows))[::-1]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 0.38 * len(rows) + 1.4), sharey=True)
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
    ax.set_xlabel("synthetic images: AUROC against their labels (bar, 95% CI)\n\u25c6 the same classifier on real holdout images")
    bx.set_xlabel("synthetic reports: positive F1 of the labeler\nagainst their labels")
    ax.set_title("images", fontsize=9)
    bx.set_title("reports", fontsize=9)
    return _png(fig)


def _fidelity_section(audit: dict) -> str:
    from cxrsynth.config import AuditPolicy
    from privacy.audit.fidelity import label_rows

    policy = AuditPolicy.model_validate(audit.get("policy", {}))
    rows = label_rows(audit["checks"], policy)
    if not rows:
        return ""
    parts = ["<h2>Label fidelity: do the synthetic records carry their labels?</h2>"]
    parts.append(
        f"<p>Images: a classifier trained on each site's real training images scores the synthetic images against the labels they were generated with "
        f"(floor {policy.min_label_fidelity_auroc}, and above chance at {policy.confidence:.0%} confidence). Reports: the report labeler's reading against the "
        f"labels (floor {policy.min_report_label_agreement}). Weak labels: {policy.weak_labels}. Dropped labels are emptied in the released manifest.</p>"
    )
    fig = _fidelity_figure(rows, policy.min_label_fidelity_auroc, policy.min_report_label_agreement)
    if fig:
        parts.append(fig)
    parts.append("<table><tr><th>label</th><th>synthetic positives</th><th>image AUROC</th><th>95% CI</th><th>classifier on real holdout</th><th>report positive F1</th><th>release</th></tr>")
    for r in rows:
        cls = {"carried": "pass", "not checked": ""}.get(r["status"], "fail")
        parts.append(
            f"<tr><td>{html.escape(r['label'])}</td><td>{_fmt(r['positives'] if r['positives'] is not None else '')}</td><td>{_fmt(r['auroc']) if r['auroc'] is not None else 'not judged'}</td>"
            f"<td>{_fmt(r['ci']) if r['ci'] else ''}</td><td>{_fmt(r['real_auroc']) if r['real_auroc'] is not None else 'n/a'}</td>"
            f"<td>{_fmt(r['f1']) if r['f1'] is not None else 'not judged'}</td><td class='{cls}'>{r['status']}</td></tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
    return html.escape(str(v))


def write_report(audit: dict, out: Path, pairs: Sequence[tuple] = ()) -> Path:
    """`pairs`: (CopyPair, synthetic image, training image); given only where the training image lives."""
    verdict = "PASSED" if audit["passed"] else "FAILED"
    parts = ["<!doctype html><meta charset='utf-8'><title>cxrsynth privacy audit</title><style>body{font-family:sans-serif;max-width:1100px;margin:auto} td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px} table{border-collapse:collapse} .fail{color:#b00} .pass{color:#070}</style>"]
    parts.append(f"<h1>Privacy audit: <span class='{'pass' if audit['passed'] else 'fail'}'>{verdict}</span></h1>")
    parts.append("<h2>Checks</h2><table><tr><th>check</th><th>result</th><th>status</th><th>figures</th><th>reasons</th></tr>")
    for name, c in audit["checks"].items():
        figs = ", ".join(f"{k}={_fmt(v)}" for k, v in c.items() if k not in ("passed", "status", "reasons", "note", "sites", "reports", "by_type", "problems") and not isinstance(v, dict))
        res = "<span class='pass'>pass</span>" if c["passed"] else "<span class='fail'>FAIL</span>"
        said = "; ".join(c.get("reasons", [])) or c.get("note", "")
        parts.append(f"<tr><td>{name}</td><td>{res}</td><td>{c.get('status', '')}</td><td>{figs}</td><td>{html.escape(said)}</td></tr>")
    parts.append("</table>")
    if audit.get("dropped_labels"):
        what = "Labels dropped from the release (their column emptied)" if audit["passed"] else "Labels not carried (below a fidelity floor; a release would drop them)"
        parts.append(f"<p class='fail'>{what}: {html.escape(', '.join(audit['dropped_labels']))}</p>")
    parts.append(_fidelity_section(audit))
    cols = ["site", "n_train", "n_holdout", "copies", "lateral_copies", "copy_threshold", "holdout_copy_rate", "closeness", "closeness_ci", "rare_ngram_reports", "near_dup_rate", "near_dup_holdout_rate", "mia_auc", "mia_auc_ci", "tpr_at_1pct_fpr", "fidelity_macro_auroc", "fidelity_labels"]
    parts.append("<h2>Per site</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for r in audit["sites"]:
        parts.append("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>")
    parts.append("</table>")
    # The copy-match method is the steward's policy: federated answers do not echo it back per site.
    aligned = audit.get("policy", {}).get("copy_match") == "aligned" or any(r.get("copy_match") == "aligned" for r in audit["sites"])
    for title, fig in (
        ("Distance to closest record (encoder embedding)", _hist_figure(audit["sites"], "dcr_hist", "embedding distance", not aligned)),
        ("Copy search: distance after best alignment", _hist_figure(audit["sites"], "copy_hist", "aligned distance", True) if aligned else None), ("Membership inference", _roc_figure(audit["sites"])), ("Flagged pairs (synthetic | training)", _pairs_figure(pairs)),
    ):
        if fig:
            parts.append(f"<h2>{title}</h2>{fig}")
    flagged = audit["flagged"]
    parts.append(f"<h2>Flagged records</h2><p>images ({len(flagged['images'])}): {html.escape(', '.join(flagged['images'][:200]))}</p><p>reports ({len(flagged['reports'])}): {html.escape(', '.join(flagged['reports'][:200]))}</p>")
    path = Path(out) / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
