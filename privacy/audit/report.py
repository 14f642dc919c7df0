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
        row[0].set_title(f"synthetic {pair.synthetic_id}", fontsize=7)
        row[1].imshow(real, cmap="gray", vmin=0, vmax=255)
        row[1].set_title(f"train {pair.train_record_id} (patient {pair.patient_id}), d={pair.distance:.3f}", fontsize=7)
        for ax in row:
            ax.axis("off")
    return _png(fig)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
    return html.escape(str(v))


def write_report(audit: dict, out: Path, pairs: Sequence[tuple] = ()) -> Path:
    """`pairs`: (CopyPair, synthetic image, training image); given only where the training image lives."""
    verdict = "PASSED" if audit["passed"] else "FAILED"
    parts = [f"<!doctype html><meta charset='utf-8'><title>cxrsynth privacy audit</title><style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}} table{{border-collapse:collapse}} .fail{{color:#b00}} .pass{{color:#070}}</style>"]
    parts.append(f"<h1>Privacy audit: <span class='{'pass' if audit['passed'] else 'fail'}'>{verdict}</span></h1>")
    parts.append("<h2>Checks</h2><table><tr><th>check</th><th>result</th><th>status</th><th>figures</th><th>reasons</th></tr>")
    for name, c in audit["checks"].items():
        figs = ", ".join(f"{k}={_fmt(v)}" for k, v in c.items() if k not in ("passed", "status", "reasons", "sites", "reports", "by_type") and not isinstance(v, dict))
        res = "<span class='pass'>pass</span>" if c["passed"] else "<span class='fail'>FAIL</span>"
        parts.append(f"<tr><td>{name}</td><td>{res}</td><td>{c.get('status', '')}</td><td>{figs}</td><td>{html.escape('; '.join(c.get('reasons', [])))}</td></tr>")
    parts.append("</table>")
    cols = ["site", "n_train", "n_holdout", "copies", "copy_threshold", "holdout_copy_rate", "closeness", "closeness_ci", "rare_ngram_reports", "near_dup_rate", "near_dup_holdout_rate", "mia_auc", "mia_auc_ci", "tpr_at_1pct_fpr"]
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
