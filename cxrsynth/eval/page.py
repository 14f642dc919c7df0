"""The evaluation's page (index.html): image grids, sample studies side by side, plots and tables.
The data is built here; templates/evaluation.html draws it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from cxrsynth import pages
from cxrsynth.data.records import LABELS, Record
from cxrsynth.eval.bootstrap import format_interval
from cxrsynth.eval.config import EvalConfig
from cxrsynth.eval.evaluate import NO_REPORTS
from cxrsynth.pages import figure_uri, fmt, grid_uri

STATUS_CLASS = {"ok": "ok", NO_REPORTS: "warn"}  # the class of a part's row; any other status is a failure


def _positive(rec: Record) -> str:
    pos = [k for k in LABELS if rec.labels.get(k) == 1]
    unc = [k for k in LABELS if rec.labels.get(k) == -1]
    return ", ".join(pos + [f"{k}?" for k in unc]) or "(none)"


def _auroc_plot(util: dict) -> str:
    arms = list(util["arms"])
    names = [k for k in LABELS if any(util["arms"][a]["auroc"].get(k) is not None for a in arms)]
    if not names:
        return ""
    fig = Figure(figsize=(max(5, 0.9 * len(names) + 2), 3.2))
    ax = fig.subplots()
    x = np.arange(len(names))
    w = 0.8 / len(arms)
    for i, a in enumerate(arms):
        vals = [util["arms"][a]["auroc"].get(k) or 0.0 for k in names]
        ax.bar(x + i * w - 0.4 + w / 2, vals, w, label=f"{a} (macro {fmt(util['arms'][a]['macro_auroc'])})")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC on real holdout")
    # Beside the axes, not over the bars: with 14 labels no corner of the plot is free.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure_uri(fig)


def _msssim_plot(div: dict) -> str:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    for key, color in (("synthetic", "tab:orange"), ("real", "tab:blue")):
        vals = div[key]["values"]
        if vals:
            ax.hist(
                vals,
                bins=20,
                range=(0, 1),
                alpha=0.6,
                color=color,
                label=f"{key} (mean {fmt(div[key]['mean'])}, {len(vals)} pairs)",
            )
    ax.set_xlabel("MS-SSIM within a conditioning (lower: more diverse)")
    ax.legend(fontsize=8)
    return figure_uri(fig)


def sample_pairs(real: Sequence[Record], synthetic: Sequence[Record], n: int) -> list[list[dict]]:
    """Real and synthetic studies side by side (image, labels, report), for the `sample_pairs` macro."""
    return [
        [
            {
                "title": title,
                "record_id": rec.record_id,
                "grid": grid_uri([rec.image, rec.lateral], cols=2, cell=128),
                "labels": _positive(rec),
                "report": rec.report,
            }
            for title, rec in (("real (holdout)", r), ("synthetic", s))
        ]
        for r, s in zip(real[:n], synthetic[:n])
    ]


def write_page(
    path: Path,
    metrics: dict,
    train: Sequence[Record],
    holdout: Sequence[Record],
    synthetic: Sequence[Record],
    cfg: EvalConfig,
    baseline: Optional[Sequence[Record]] = None,
) -> Path:
    status = metrics["status"]
    util = metrics.get("utility")
    fid = metrics.get("fidelity")
    fidelity_rows = []
    if fid:
        fidelity_rows = [
            ("FID synthetic vs real holdout", fid["fid_synthetic_vs_holdout"]),
            ("FID real holdout half vs half (for scale)", fid["fid_holdout_halves"]),
            ("extractor", fid["extractor"]),
        ]
        if "fid_baseline_vs_holdout" in fid:
            fidelity_rows.insert(1, ("FID base-only synthetic vs real holdout", fid["fid_baseline_vs_holdout"]))
    rep = metrics.get("reports")
    report_keys = (
        [k for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d", "n") if k in rep] if rep else []
    )
    lab = metrics.get("label_agreement")
    probe = metrics.get("probe")
    return pages.write(
        path,
        "evaluation.html",
        title="cxrsynth evaluation",
        m=metrics,
        status_rows=[(name, st["status"], st["detail"], st["seconds"]) for name, st in status.items()],
        # "no reports" is neither a pass nor a failure: nothing to score the text against.
        status_classes=[STATUS_CLASS.get(st["status"], "bad") for st in status.values()],
        grids={
            "real": grid_uri([r.image for r in holdout[: cfg.grid]]),
            "synthetic": grid_uri([r.image for r in synthetic[: cfg.grid]]),
            "baseline": grid_uri([r.image for r in baseline[: cfg.grid]]) if baseline else None,
            "lateral": grid_uri([r.lateral for r in synthetic[: cfg.grid]]),
        },
        fidelity_rows=fidelity_rows,
        msssim=_msssim_plot(metrics["diversity"]) if metrics.get("diversity") else "",
        util=util,
        util_ci={
            k: format_interval(v, signed=k != "synthetic_to_real")
            for k, v in (util or {}).get("intervals", {}).items()
            if isinstance(v, list)
        },
        utility_header=["label", *util["arms"]] if util else [],
        utility_rows=[(k, *[util["arms"][a]["auroc"].get(k) for a in util["arms"]]) for k in LABELS]
        + [("macro", *[util["arms"][a]["macro_auroc"] for a in util["arms"]])]
        if util
        else [],
        auroc_plot=_auroc_plot(util) if util else "",
        **_site_table(util),
        report_keys=report_keys,
        report_values=[rep[k] for k in report_keys],
        reports=rep,
        labels=lab,
        label_rows=[
            (k, lab["synthetic"].get("positive_f1", {}).get(k), lab["real_holdout"].get("positive_f1", {}).get(k))
            for k in LABELS
        ]
        if lab
        else [],
        probe=probe,
        pairs=sample_pairs(holdout, synthetic, cfg.sample_reports),
    )


def _with_ci(site: dict, key: str) -> str:
    """A site's gain as the page shows it: the figure and its 95% interval over holdout resamples."""
    value = site.get(key)
    if value is None:
        return fmt(None)
    return f"{value:+.3f}" + format_interval((site.get("intervals") or {}).get(key))


def _site_table(util: Optional[dict]) -> dict:
    """`site_header` and `site_rows`: each site's macro AUROC alone and with the synthetic (and
    base-only) set, and the release's gain over each."""
    sites = (util or {}).get("sites") or {}
    if not sites:
        return {"site_header": [], "site_rows": []}
    arms = list(next(iter(sites.values()))["macro_auroc"])
    header = ["site", "training records", *arms, "release gain (with synthetic minus alone)"]
    rows = []
    for site, v in sites.items():
        rows.append((site, v["train_records"], *[v["macro_auroc"].get(a) for a in arms], _with_ci(v, "release_gain")))
    if "own+base-only" in arms:
        header.append("gain over the base-only set")
        rows = [(*row, _with_ci(sites[row[0]], "gain_over_base")) for row in rows]
    return {"site_header": header, "site_rows": rows}
