"""`deid eval` as a page: recall and precision per type as a chart, the table, the settings. The
data and the chart are built here; templates/deid.html draws them."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from cxrsynth import pages


def _chart(result: dict) -> str:
    types = list(result["per_type"])
    rec = [result["per_type"][t]["recall"] or 0.0 for t in types]
    prec = [result["per_type"][t]["precision"] or 0.0 for t in types]
    fig = Figure(figsize=(7, 3.2), dpi=110)
    ax = fig.subplots()
    x = range(len(types))
    ax.bar([i - 0.2 for i in x], rec, 0.4, label="recall")
    ax.bar([i + 0.2 for i in x], prec, 0.4, label="precision")
    ax.axhline(0.99, color="k", lw=0.8, ls="--", label="0.99 target (names, IDs, dates)")
    ax.set_xticks(list(x), types)
    ax.set_ylim(min(0.8, min(rec + prec) - 0.02), 1.005)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{result['reports']} reports, {result['overall']['gold']} PHI spans")
    fig.tight_layout()
    return pages.figure_uri(fig)


def _fmt(v):
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else v


def write_page(result: dict, path: str | Path, versions: dict, config: dict) -> Path:
    rows = [[t, s["gold"], s["recall"], s["predicted"], s["precision"]] for t, s in result["per_type"].items()]
    o = result["overall"]
    rows.append(["ALL", o["gold"], o["recall"], o["predicted"], o["precision"]])
    return pages.write(
        path,
        "deid.html",
        title="De-identification evaluation",
        result=result,
        chart=_chart(result),
        rows=[[_fmt(v) for v in r] for r in rows],
        settings=f"{versions}\n{config}",
    )
