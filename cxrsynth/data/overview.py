"""`overview.html` in a dataset directory: what the data looks like, per site and per label.

Written by `data phantom` and `data ingest`. It shows images and counts, never report text (raw
reports hold PHI); it is still site data (images), for the site's own operators.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cxrsynth.data.dataset import DatasetReport
from cxrsynth.data.records import LABELS, Record

PAGE = "overview.html"


def _prevalence_plot(records: Sequence[Record]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxrsynth.pages.html import figure_img

    sites = sorted({r.site for r in records})
    fig, ax = plt.subplots(figsize=(10, 3.4))
    x = np.arange(len(LABELS))
    w = 0.8 / max(len(sites), 1)
    for i, site in enumerate(sites):
        recs = [r for r in records if r.site == site]
        share = [np.mean([r.labels.get(n) == 1 for r in recs]) for n in LABELS]
        ax.bar(x + i * w - 0.4 + w / 2, share, w, label=f"{site or '(no site)'} ({len(recs)})")
    ax.set_xticks(x, LABELS, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("share positive")
    ax.legend(fontsize=8)
    return figure_img(fig, "label prevalence per site")


def write_overview(out: str | Path, records: Sequence[Record], report: Optional[DatasetReport] = None, title: str = "Dataset overview", examples: int = 6) -> Path:
    from cxrsynth.pages.html import esc, grid_img, page, table

    out = Path(out)
    parts = ["<p>Site-only: this page shows the site's images. Report text is left out because raw reports hold PHI.</p>"]
    views = Counter(r.view for r in records)
    splits = Counter(r.split or "(none)" for r in records)
    rows = [
        ("studies", len(records)),
        ("patients", len({r.patient_id for r in records})),
        ("sites", ", ".join(f"{k or '(none)'}: {v}" for k, v in sorted(Counter(r.site for r in records).items()))),
        ("views", ", ".join(f"{k}: {v}" for k, v in sorted(views.items()))),
        ("with a lateral", sum(r.lateral is not None for r in records)),
        ("splits", ", ".join(f"{k}: {v}" for k, v in sorted(splits.items()))),
    ]
    parts.append(table(["", "count"], rows))
    if report is not None:
        d = report.as_dict()
        parts.append("<h2>Ingest</h2>" + table(["read", "kept", "skipped"], [(d["read"], d["kept"], d["skipped"])]))
        if d["skipped_by_reason"]:
            parts.append(table(["reason", "count"], sorted(d["skipped_by_reason"].items())))
        if report.problems:
            shown = report.problems[:200]
            parts.append("<h3>Problems</h3>" + table(["file", "row", "reason"], [(p.file, "" if p.row is None else p.row, p.reason) for p in shown], ["bad"] * len(shown)))
    if records:
        parts.append("<h2>Labels per site</h2>" + _prevalence_plot(records))
        parts.append("<h2>Examples per label</h2><p>Frontal and lateral of studies positive for the label (and for as few others as possible).</p>")
        for name in LABELS:
            pos = sorted((r for r in records if r.labels.get(name) == 1), key=lambda r: sum(v == 1 for v in r.labels.values()))[:examples]
            imgs = [im for r in pos for im in (r.image, r.lateral if r.lateral is not None else np.zeros_like(r.image))]
            parts.append(f"<h3>{esc(name)} ({sum(r.labels.get(name) == 1 for r in records)} positive)</h3>" + grid_img(imgs, cols=2 * examples, cell=96, alt=name))
        parts.append("<h2>Examples per site</h2>")
        for site in sorted({r.site for r in records}):
            parts.append(f"<h3>{esc(site or '(no site)')}</h3>" + grid_img([r.image for r in records if r.site == site][: 2 * examples], cols=2 * examples, alt=site))
    path = out / PAGE
    path.write_text(page(title, parts), encoding="utf-8")
    return path
