"""The page of a dataset directory (`overview.html`): what the data looks like, per site and per
label. The data and figures are built here; templates/dataset.html draws them.

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
    from matplotlib.figure import Figure

    from cxrsynth.pages import figure_uri

    sites = sorted({r.site for r in records})
    fig = Figure(figsize=(10, 3.4))
    ax = fig.subplots()
    x = np.arange(len(LABELS))
    w = 0.8 / max(len(sites), 1)
    for i, site in enumerate(sites):
        recs = [r for r in records if r.site == site]
        share = [np.mean([r.labels.get(n) == 1 for r in recs]) for n in LABELS]
        ax.bar(x + i * w - 0.4 + w / 2, share, w, label=f"{site or '(no site)'} ({len(recs)})")
    ax.set_xticks(x, LABELS, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("share positive")
    ax.legend(fontsize=8)
    return figure_uri(fig)


def write_page(out: str | Path, records: Sequence[Record], report: Optional[DatasetReport] = None, title: str = "Dataset overview", examples: int = 6) -> Path:
    from cxrsynth import pages
    from cxrsynth.pages import grid_uri

    views = Counter(r.view for r in records)
    splits = Counter(r.split or "(none)" for r in records)
    counts = [
        ("studies", len(records)),
        ("patients", len({r.patient_id for r in records})),
        ("sites", ", ".join(f"{k or '(none)'}: {v}" for k, v in sorted(Counter(r.site for r in records).items()))),
        ("views", ", ".join(f"{k}: {v}" for k, v in sorted(views.items()))),
        ("with a lateral", sum(r.lateral is not None for r in records)),
        ("splits", ", ".join(f"{k}: {v}" for k, v in sorted(splits.items()))),
    ]
    ingest = None
    if report is not None:
        d = report.as_dict()
        shown = report.problems[:200]
        ingest = {
            "counts": [(d["read"], d["kept"], d["skipped"])],
            "by_reason": sorted(d["skipped_by_reason"].items()),
            "problems": [(p.file, "" if p.row is None else p.row, p.reason) for p in shown],
        }
    by_label, by_site = [], []
    if records:
        for name in LABELS:
            pos = sorted((r for r in records if r.labels.get(name) == 1), key=lambda r: sum(v == 1 for v in r.labels.values()))[:examples]
            imgs = [im for r in pos for im in (r.image, r.lateral if r.lateral is not None else np.zeros_like(r.image))]
            by_label.append({"name": name, "positive": sum(r.labels.get(name) == 1 for r in records), "grid": grid_uri(imgs, cols=2 * examples, cell=96)})
        for site in sorted({r.site for r in records}):
            by_site.append({"name": site or "(no site)", "grid": grid_uri([r.image for r in records if r.site == site][: 2 * examples], cols=2 * examples)})
    return pages.write(
        Path(out) / PAGE,
        "dataset.html",
        title=title,
        counts=counts,
        ingest=ingest,
        prevalence=_prevalence_plot(records) if records else "",
        by_label=by_label,
        by_site=by_site,
    )
