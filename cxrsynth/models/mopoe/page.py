"""An HTML page for a MoPoE checkpoint: the linear-probe table and what each direction generates."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from cxrsynth.data.records import Record
from cxrsynth.models.mopoe.fusion import TABLE_ORDER
from cxrsynth.models.mopoe.probe import PAPER_FINDING, format_probe_table
from cxrsynth.pages.html import esc, figure_img, grid_img, page, table


def _probe_figure(table_: dict[str, float], label: str, random: Optional[float]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = [s for s in TABLE_ORDER if s in table_]
    fig, ax = plt.subplots(figsize=(6, 3))
    x = range(len(subsets))
    ax.bar([i - 0.2 for i in x], [table_[s] for s in subsets], width=0.4, label=f"this model ({label})")
    ax.bar([i + 0.2 for i in x], [PAPER_FINDING[s] for s in subsets], width=0.4, label="Klug et al., MIMIC-CXR (Finding)")
    if random is not None:
        ax.axhline(random, color="k", linestyle=":", label="random (this data)")
    ax.set_xticks(list(x), subsets)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("average precision")
    ax.legend(fontsize=7, loc="lower right")
    return figure_img(fig, "linear probe average precision per subset")


def write_page(path: str | Path, model, probe: dict[str, float], label: str, random: Optional[float], test: Sequence[Record], n: int = 8, seed: int = 0) -> Path:
    """Probe table and chart; rows of real vs generated images; reports written from frontal images."""
    shown = [r for r in test if r.image is not None and r.lateral is not None and r.report.strip()][:n]
    from_frontal = model.generate(len(shown), [{"frontal": r.image} for r in shown], seed) if shown else []
    from_report = model.generate(len(shown), [{"report": r.report} for r in shown], seed) if shown else []
    prior = model.generate(n, None, seed)
    parts = [
        "<h2>Linear probe (Table 1 form)</h2>",
        f"<pre>{esc(format_probe_table(probe, label, random))}</pre>",
        _probe_figure(probe, label, random),
        "<h2>Conditional generation</h2>",
        "<p>Rows: real frontal; real lateral; lateral generated from the frontal; frontal generated from the report.</p>",
        grid_img([r.image for r in shown] + [r.lateral for r in shown] + [g.lateral for g in from_frontal] + [g.image for g in from_report], cols=max(len(shown), 1)),
        "<h3>Reports generated from frontal images</h3>",
        table(["real report", "generated from the frontal image"], [(r.report, g.report) for r, g in zip(shown, from_frontal)]),
        "<h2>Unconditional samples (prior)</h2>",
        grid_img([g.image for g in prior] + [g.lateral for g in prior], cols=n),
        table(["generated report", "labels from the labeler"], [(g.report, ", ".join(k for k, v in g.labels.items() if v == 1) or "none positive") for g in prior]),
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page("MoPoE-VAE checkpoint", parts), encoding="utf-8")
    return path
