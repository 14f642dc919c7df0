"""The evaluation's HTML page: image grids, sample reports side by side, plots and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cxrsynth.data.records import LABELS, Record  # noqa: E402
from cxrsynth.eval.config import EvalConfig  # noqa: E402
from cxrsynth.pages.html import esc, figure_img, fmt, grid_img, page, table  # noqa: E402


def _positive(rec: Record) -> str:
    pos = [k for k in LABELS if rec.labels.get(k) == 1]
    unc = [k for k in LABELS if rec.labels.get(k) == -1]
    return ", ".join(pos + [f"{k}?" for k in unc]) or "(none)"


def _auroc_plot(util: dict) -> str:
    arms = list(util["arms"])
    names = [k for k in LABELS if any(util["arms"][a]["auroc"].get(k) is not None for a in arms)]
    if not names:
        return ""
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.2))
    x = np.arange(len(names))
    w = 0.8 / len(arms)
    for i, a in enumerate(arms):
        vals = [util["arms"][a]["auroc"].get(k) or 0.0 for k in names]
        ax.bar(x + i * w - 0.4 + w / 2, vals, w, label=f"{a} (macro {fmt(util['arms'][a]['macro_auroc'])})")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC on real holdout")
    ax.legend(fontsize=8)
    return figure_img(fig, "AUROC per label")


def _msssim_plot(div: dict) -> str:
    fig, ax = plt.subplots(figsize=(5, 3))
    for key, color in (("synthetic", "tab:orange"), ("real", "tab:blue")):
        vals = div[key]["values"]
        if vals:
            ax.hist(vals, bins=20, range=(0, 1), alpha=0.6, color=color, label=f"{key} (mean {fmt(div[key]['mean'])}, {len(vals)} pairs)")
    ax.set_xlabel("MS-SSIM within a conditioning (lower: more diverse)")
    ax.legend(fontsize=8)
    return figure_img(fig, "MS-SSIM")


def _status_table(metrics: dict) -> str:
    rows = [(name, st["status"], st["detail"], st["seconds"]) for name, st in metrics["status"].items()]
    classes = ["ok" if st["status"] == "ok" else "bad" for st in metrics["status"].values()]
    return table(["part", "status", "detail", "seconds"], rows, classes)


def sample_pairs_html(real: Sequence[Record], synthetic: Sequence[Record], n: int) -> str:
    """Real and synthetic studies side by side: image, labels, report."""
    parts = []
    for r, s in list(zip(real, synthetic))[:n]:
        cells = []
        for title, rec in (("real (holdout)", r), ("synthetic", s)):
            imgs = [im for im in (rec.image, rec.lateral) if im is not None]
            cells.append(f"<div><b>{esc(title)}</b> {esc(rec.record_id)}<br>{grid_img(imgs, cols=2, cell=128)}<br><small>labels: {esc(_positive(rec))}</small><pre>{esc(rec.report or '(no report)')}</pre></div>")
        parts.append(f"<div class='pair'>{''.join(cells)}</div>")
    return "".join(parts)


def write_page(
    path: Path, metrics: dict, train: Sequence[Record], holdout: Sequence[Record], synthetic: Sequence[Record], cfg: EvalConfig, baseline: Optional[Sequence[Record]] = None
) -> Path:
    parts = [f"<p>Synthetic: {esc(metrics['synthetic']['dir'])} ({metrics['synthetic']['records']} records, family {esc(', '.join(metrics['synthetic']['families']))}); real: {esc(metrics['real']['dir'])} ({metrics['real']['train_records']} train, {metrics['real']['holdout_records']} holdout).</p>", _status_table(metrics)]
    parts.append("<h2>Images</h2><h3>Real (holdout)</h3>" + grid_img([r.image for r in holdout[: cfg.grid]], alt="real") + "<h3>Synthetic</h3>" + grid_img([r.image for r in synthetic[: cfg.grid]], alt="synthetic"))
    if baseline:
        parts.append("<h3>Base model only (before the sites fine-tuned it)</h3>" + grid_img([r.image for r in baseline[: cfg.grid]], alt="base-only synthetic"))
    lat = [r.lateral for r in synthetic[: cfg.grid] if r.lateral is not None]
    if lat:
        parts.append("<h3>Synthetic laterals</h3>" + grid_img(lat, alt="synthetic lateral"))
    fid = metrics.get("fidelity")
    if fid:
        rows = [("FID synthetic vs real holdout", fid["fid_synthetic_vs_holdout"]), ("FID real holdout half vs half (for scale)", fid["fid_holdout_halves"]), ("extractor", fid["extractor"])]
        if "fid_baseline_vs_holdout" in fid:
            rows.insert(1, ("FID base-only synthetic vs real holdout", fid["fid_baseline_vs_holdout"]))
        parts.append("<h2>Fidelity</h2>" + table(["measure", "value"], rows))
    div = metrics.get("diversity")
    if div:
        parts.append("<h2>Diversity</h2>" + _msssim_plot(div))
    util = metrics.get("utility")
    if util:
        rows = [(k, *[util["arms"][a]["auroc"].get(k) for a in util["arms"]]) for k in LABELS] + [("macro", *[util["arms"][a]["macro_auroc"] for a in util["arms"]])]
        parts.append(f"<h2>Utility</h2><p>Classifiers trained {util['steps']} steps ({util['seeds']} seed(s)), AUROC on {util['holdout_records']} real holdout records; augmentation gain (real+synthetic minus real): {esc(fmt(util['augmentation_gain']))}; synthetic-only / real-only: {esc(fmt(util.get('synthetic_to_real')))}"
            + (f"; fine-tuning gain (synthetic minus base-only synthetic): {esc(fmt(util['fine_tuning_gain']))}" if util.get("fine_tuning_gain") is not None else "")
            + ".</p>" + _auroc_plot(util) + table(["label", *util["arms"]], rows))
    rep = metrics.get("reports")
    if rep:
        keys = [k for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d", "n") if k in rep]
        parts.append(f"<h2>Reports</h2><p>References: {esc(rep['references'])}.</p>" + table(keys, [[rep[k] for k in keys]]))
    lab = metrics.get("label_agreement")
    if lab:
        rows = [(k, lab["synthetic"].get("positive_f1", {}).get(k), lab["real_holdout"].get("positive_f1", {}).get(k)) for k in LABELS]
        parts.append(f"<h2>Label agreement</h2><p>Exact agreement of the labeler's reading of a report with the record's labels: synthetic {esc(fmt(lab['synthetic'].get('exact_agreement')))}, real holdout {esc(fmt(lab['real_holdout'].get('exact_agreement')))}.</p>" + table(["label", "positive F1 synthetic", "positive F1 real"], rows))
    probe = metrics.get("probe")
    if probe and isinstance(probe.get("table"), dict):
        parts.append(f"<h2>{esc(probe['title'])}</h2><p>{esc(probe['note'])}</p>" + table(list(probe["table"]), [list(probe["table"].values())]))
    elif probe:
        parts.append(f"<h2>Probe of the {esc(probe.get('family', 'model'))} latent space</h2><p>{esc(probe.get('skipped', probe))}</p>")
    parts.append("<h2>Sample studies</h2>" + sample_pairs_html(holdout, synthetic, cfg.sample_reports))
    path.write_text(page("cxrsynth evaluation", parts), encoding="utf-8")
    return path
