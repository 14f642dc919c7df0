"""The page of a MoPoE checkpoint: the linear-probe table and what each direction generates. The
data and the chart are built here; page.html beside this file draws them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from matplotlib.figure import Figure

from cxrsynth import pages
from cxrsynth.data.records import Record
from cxrsynth.models.condition import Condition
from cxrsynth.models.mopoe.fusion import TABLE_ORDER
from cxrsynth.models.mopoe.probe import PAPER_FINDING, format_probe_table

TEMPLATE = Path(__file__).with_name("page.html")


def _probe_figure(table_: dict[str, float], label: str, random: Optional[float]) -> str:
    subsets = [s for s in TABLE_ORDER if s in table_]
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    x = range(len(subsets))
    ax.bar([i - 0.2 for i in x], [table_[s] for s in subsets], width=0.4, label=f"this model ({label})")
    ax.bar(
        [i + 0.2 for i in x], [PAPER_FINDING[s] for s in subsets], width=0.4, label="Klug et al., MIMIC-CXR (Finding)"
    )
    if random is not None:
        ax.axhline(random, color="k", linestyle=":", label="random (this data)")
    ax.set_xticks(list(x), subsets)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("average precision")
    ax.legend(fontsize=7, loc="lower right")
    return pages.figure_uri(fig)


def write_page(
    path: str | Path,
    model,
    probe: dict[str, float],
    label: str,
    random: Optional[float],
    test: Sequence[Record],
    n: int = 8,
    seed: int = 0,
) -> Path:
    """Probe table and chart; rows of real vs generated images; reports written from frontal images."""
    shown = [r for r in test if r.image is not None and r.lateral is not None and r.report.strip()][:n]
    from_frontal = model.generate(len(shown), [Condition(frontal=r.image) for r in shown], seed) if shown else []
    from_report = model.generate(len(shown), [Condition(prompt=r.report) for r in shown], seed) if shown else []
    prior = model.generate(n, None, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return pages.write(
        path,
        TEMPLATE,
        title="MoPoE-VAE checkpoint",
        probe_table=format_probe_table(probe, label, random),
        probe_figure=_probe_figure(probe, label, random),
        directions=pages.grid_uri(
            [r.image for r in shown]
            + [r.lateral for r in shown]
            + [g.lateral for g in from_frontal]
            + [g.image for g in from_report],
            cols=max(len(shown), 1),
        ),
        from_frontal=[(r.report, g.report) for r, g in zip(shown, from_frontal)],
        prior=pages.grid_uri([g.image for g in prior] + [g.lateral for g in prior], cols=n),
        prior_reports=[
            (g.report, ", ".join(k for k, v in g.labels.items() if v == 1) or "none positive") for g in prior
        ],
    )
