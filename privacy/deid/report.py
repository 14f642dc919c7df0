"""`deid eval` as an HTML page: recall and precision per type as a chart, the table, the settings."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def write_html(result: dict, path: str | Path, versions: dict, config: dict) -> None:
    rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{s['gold']}</td><td>{_fmt(s['recall'])}</td><td>{s['predicted']}</td><td>{_fmt(s['precision'])}</td></tr>"
        for t, s in result["per_type"].items()
    )
    o = result["overall"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>De-identification evaluation</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>De-identification evaluation</h1>
<p>Gold file <code>{html.escape(result['gold_file'])}</code>. A PHI span counts as found only if every character is covered.</p>
<img alt="recall and precision per type" src="data:image/png;base64,{_chart(result)}">
<table><tr><th>type</th><th>gold</th><th>recall</th><th>predicted</th><th>precision</th></tr>{rows}
<tr><th>ALL</th><th>{o['gold']}</th><th>{o['recall']:.4f}</th><th>{o['predicted']}</th><th>{o['precision']:.4f}</th></tr></table>
<p>Medical terms (<code>keep</code> spans) damaged: <b>{result['keep_damaged']}</b> of {result['keep_spans']}. Time {result['seconds']:.1f} s.</p>
<h2>Versions and settings</h2><pre>{html.escape(str(versions))}
{html.escape(str(config))}</pre></body></html>"""
    Path(path).write_text(page, encoding="utf-8")
