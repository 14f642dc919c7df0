"""`deid eval` as an HTML page: recall and precision per type as a chart, the table, the settings."""

from __future__ import annotations

from pathlib import Path

from cxrsynth.pages.html import esc, figure_img, page, table


def _chart(result: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(result["per_type"])
    rec = [result["per_type"][t]["recall"] or 0.0 for t in types]
    prec = [result["per_type"][t]["precision"] or 0.0 for t in types]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    x = range(len(types))
    ax.bar([i - 0.2 for i in x], rec, 0.4, label="recall")
    ax.bar([i + 0.2 for i in x], prec, 0.4, label="precision")
    ax.axhline(0.99, color="k", lw=0.8, ls="--", label="0.99 target (names, IDs, dates)")
    ax.set_xticks(list(x), types)
    ax.set_ylim(min(0.8, min(rec + prec) - 0.02), 1.005)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{result['reports']} reports, {result['overall']['gold']} PHI spans")
    fig.tight_layout()
    return figure_img(fig, "recall and precision per type")


def _fmt(v):
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else v


def write_html(result: dict, path: str | Path, versions: dict, config: dict) -> None:
    rows = [[t, s["gold"], s["recall"], s["predicted"], s["precision"]] for t, s in result["per_type"].items()]
    o = result["overall"]
    rows.append(["ALL", o["gold"], o["recall"], o["predicted"], o["precision"]])
    parts = [
        f"<p>Gold file <code>{esc(result['gold_file'])}</code>. A PHI span counts as found only if every character is covered.</p>",
        _chart(result),
        table(["type", "gold", "recall", "predicted", "precision"], [[_fmt(v) for v in r] for r in rows]),
        f"<p>Medical terms (<code>keep</code> spans) damaged: <b>{result['keep_damaged']}</b> of {result['keep_spans']}. Time {result['seconds']:.1f} s.</p>",
        f"<h2>Versions and settings</h2><pre>{esc(str(versions))}\n{esc(str(config))}</pre>",
    ]
    Path(path).write_text(page("De-identification evaluation", parts), encoding="utf-8")
