"""The page of a federated run (report.html in the run folder): losses, update norms and each
site's epsilon, round by round. The data and figures are built here; templates/federation.html
draws them."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cxrsynth import pages
from cxrsynth.pages import fmt


def _plot_rounds(
    series: dict[str, list[tuple[int, float]]], ylabel: str, title: str, limit: float | None = None
) -> str:
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    for name, points in series.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if limit is not None:
        ax.axhline(limit, color="#b00", linestyle="--", label="budget")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1 or limit is not None:
        ax.legend(fontsize=7)
    return pages.figure_uri(fig)


def write_page(out: Path, fl_state: dict, title: str = "Federated run") -> Path:
    hist = fl_state.get("history", [])
    losses: dict[str, list] = {}
    norms: dict[str, list] = {}
    for h in hist:
        for k, v in h.get("metrics", {}).items():
            if k.startswith("loss-"):
                losses.setdefault(k[5:], []).append((h["round"], v))
        for site, v in h.get("update_norms", {}).items():
            norms.setdefault(f"site {site}", []).append((h["round"], v))
    ledger = None
    book = fl_state.get("privacy_ledger")
    if book and book.get("sites"):
        eps = {
            f"site {s}": [(r["round"], r["epsilon"]) for r in e.get("rounds", [])] for s, e in book["sites"].items()
        }
        budget = next((e.get("epsilon_budget") for e in book["sites"].values() if e.get("epsilon_budget")), None)
        ledger = {
            "delta": fmt(book.get("delta"), 8),
            "plot": _plot_rounds(eps, "epsilon", "epsilon spent by each site", budget),
            "rows": [
                [
                    s,
                    e.get("epsilon"),
                    e.get("epsilon_budget"),
                    e.get("noise_multiplier"),
                    e.get("sample_rate"),
                    e.get("steps"),
                ]
                for s, e in book["sites"].items()
            ],
        }
    return pages.write(
        Path(out) / "report.html",
        "federation.html",
        title=title,
        out=str(out),
        rounds=len(hist),
        failure=fl_state.get("failure"),
        round_rows=[
            [h["round"], h["sites"], h["accepted"], h["rejected"], h["no_reply"], fmt(h["seconds"], 1)] for h in hist
        ],
        losses=_plot_rounds(losses, "loss", "losses by round") if losses else "",
        norms=_plot_rounds(norms, "|update|", "norm of each site's update") if norms else "",
        secure=[
            [h["round"], h["secure"]["sites"], h["secure"]["update_norm"], h["secure"]["clipped_share"]]
            for h in hist
            if "secure" in h
        ],
        ledger=ledger,
        rejections=[[r["round"], r["node"], r["reason"]] for r in fl_state.get("rejections", [])],
    )
