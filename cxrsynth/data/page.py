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
from cxrsynth.data.stream import has_images, image_at, metadata_view

PAGE = "overview.html"


def _prevalence_plot(sites: dict[str, int], positives: dict[str, Counter]) -> str:
    from matplotlib.figure import Figure

    from cxrsynth.pages import figure_uri

    fig = Figure(figsize=(10, 3.4))
    ax = fig.subplots()
    x = np.arange(len(LABELS))
    w = 0.8 / max(len(sites), 1)
    for i, site in enumerate(sorted(sites)):
        share = [positives[site][n] / sites[site] for n in LABELS]
        ax.bar(x + i * w - 0.4 + w / 2, share, w, label=f"{site or '(no site)'} ({sites[site]})")
    ax.set_xticks(x, LABELS, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("share positive")
    ax.legend(fontsize=8)
    return figure_uri(fig)


def write_page(
    out: str | Path,
    records: Sequence[Record],
    report: Optional[DatasetReport] = None,
    title: str = "Dataset overview",
    examples: int = 6,
) -> Path:
    """`records` may be lazy (`cxrsynth.data.stream.RecordView`): the counts are taken in one pass
    over the records' metadata and only the example images shown are decoded."""
    from cxrsynth import pages
    from cxrsynth.pages import grid_uri

    meta, with_lateral = metadata_view(records), has_images(records, lateral=True)
    views, splits, sites = Counter(), Counter(), Counter()
    positives: dict[str, Counter] = {}
    patients: set[str] = set()
    # Per label, the positive examples with the fewest other findings (then the first ones):
    # (number of positive labels, position), trimmed to the best `examples` as the pass goes.
    shown: dict[str, list[tuple[int, int]]] = {name: [] for name in LABELS}
    first: dict[str, list[int]] = {}
    for i, r in enumerate(meta):
        views[r.view] += 1
        splits[r.split or "(none)"] += 1
        sites[r.site] += 1
        patients.add(r.patient_id)
        first.setdefault(r.site, [])
        if len(first[r.site]) < 2 * examples:
            first[r.site].append(i)
        pos = [name for name in LABELS if r.labels.get(name) == 1]
        positives.setdefault(r.site, Counter()).update(pos)
        for name in pos:
            shown[name].append((len(pos), i))
            if len(shown[name]) > 4 * examples:
                shown[name] = sorted(shown[name])[:examples]
    counts = [
        ("studies", len(meta)),
        ("patients", len(patients)),
        ("sites", ", ".join(f"{k or '(none)'}: {v}" for k, v in sorted(sites.items()))),
        ("views", ", ".join(f"{k}: {v}" for k, v in sorted(views.items()))),
        ("with a lateral", int(with_lateral.sum())),
        ("splits", ", ".join(f"{k}: {v}" for k, v in sorted(splits.items()))),
    ]
    ingest = None
    if report is not None:
        d = report.as_dict()
        problems = report.problems[:200]
        ingest = {
            "counts": [(d["read"], d["kept"], d["skipped"])],
            "by_reason": sorted(d["skipped_by_reason"].items()),
            "problems": [(p.file, "" if p.row is None else p.row, p.reason) for p in problems],
        }
    by_label, by_site = [], []
    if len(meta):
        total = Counter()
        for c in positives.values():
            total.update(c)
        for name in LABELS:
            imgs = []
            for _, i in sorted(shown[name])[:examples]:
                image = image_at(records, i)
                imgs += [image, image_at(records, i, lateral=True) if with_lateral[i] else np.zeros_like(image)]
            by_label.append(
                {"name": name, "positive": total[name], "grid": grid_uri(imgs, cols=2 * examples, cell=96)}
            )
        for site in sorted(sites):
            by_site.append(
                {
                    "name": site or "(no site)",
                    "grid": grid_uri([image_at(records, i) for i in first[site]], cols=2 * examples),
                }
            )
    return pages.write(
        Path(out) / PAGE,
        "dataset.html",
        title=title,
        counts=counts,
        ingest=ingest,
        prevalence=_prevalence_plot(sites, positives) if len(meta) else "",
        by_label=by_label,
        by_site=by_site,
    )
