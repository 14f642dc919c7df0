"""report.html of a federated run: losses, update norms and each site's epsilon, round by round."""

from __future__ import annotations

from pathlib import Path

from cxrsynth.pages.html import esc, figure_img, fmt, page, table


def _plot_rounds(series: dict[str, list[tuple[int, float]]], ylabel: str, title: str, limit: float | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, points in series.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if limit is not None:
        ax.axhline(limit, color="#b00", linestyle="--", label="budget")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1 or limit is not None:
        ax.legend(fontsize=7)
    return figure_img(fig, title)


def write_report(out: Path, fl_state: dict, title: str = "Federated run") -> Path:
    hist = fl_state.get("history", [])
    parts = [f"<p>{len(hist)} round(s) complete; checkpoint in <code>{esc(out)}</code>.</p>"]
    if fl_state.get("failure"):
        parts.append(f'<p class="bad"><strong>The run stopped:</strong> {esc(fl_state["failure"])}</p>')
    rows = [[h["round"], h["sites"], h["accepted"], h["rejected"], h["no_reply"], fmt(h["seconds"], 1)] for h in hist]
    parts.append(table(["round", "sites asked", "accepted", "rejected", "no reply", "seconds"], rows))
    losses: dict[str, list] = {}
    for h in hist:
        for k, v in h.get("metrics", {}).items():
            if k.startswith("loss-"):
                losses.setdefault(k[5:], []).append((h["round"], v))
    if losses:
        parts.append("<h2>Training losses (sample-weighted mean over sites)</h2>" + _plot_rounds(losses, "loss", "losses by round"))
    norms: dict[str, list] = {}
    for h in hist:
        for site, v in h.get("update_norms", {}).items():
            norms.setdefault(f"site {site}", []).append((h["round"], v))
    if norms:
        parts.append("<h2>Update norms</h2>" + _plot_rounds(norms, "|update|", "norm of each site's update"))
    secure = [[h["round"], h["secure"]["sites"], fmt(h["secure"]["update_norm"]), fmt(h["secure"]["clipped_share"])] for h in hist if "secure" in h]
    if secure:
        parts.append(
            "<h2>Secure aggregation (SecAgg+)</h2><p>The server saw only the sum of the sites' updates: no site's own update or norm.</p>"
            + table(["round", "sites in the sum", "norm of the mean update", "share of coordinates clipped"], secure)
        )
    book = fl_state.get("privacy_ledger")
    if book and book.get("sites"):
        eps = {f"site {s}": [(r["round"], r["epsilon"]) for r in e.get("rounds", [])] for s, e in book["sites"].items()}
        parts.append(f"<h2>Privacy ledger (delta {fmt(book.get('delta'), 8)})</h2>" + _plot_rounds(eps, "epsilon", "epsilon spent by each site", next((e.get("epsilon_budget") for e in book["sites"].values() if e.get("epsilon_budget")), None)))
        parts.append(
            table(
                ["site", "epsilon", "budget", "noise multiplier", "sample rate", "noisy steps"],
                [[s, fmt(e.get("epsilon")), fmt(e.get("epsilon_budget")), fmt(e.get("noise_multiplier")), fmt(e.get("sample_rate")), e.get("steps")] for s, e in book["sites"].items()],
            )
        )
    rej = fl_state.get("rejections", [])
    if rej:
        parts.append("<h2>Rejected updates</h2>" + table(["round", "site", "reason"], [[r["round"], r["node"], r["reason"]] for r in rej]))
    path = Path(out) / "report.html"
    path.write_text(page(title, parts), encoding="utf-8")
    return path
