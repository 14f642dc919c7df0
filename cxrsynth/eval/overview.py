"""The demo's one-page overview: every stage's status and figures, read from this run's outputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cxrsynth.eval.stages import OK  # noqa: E402
from cxrsynth.pages.html import esc, figure_img, fmt, page, table  # noqa: E402

STATUS_CLASS = {"ok": "ok", "refused": "warn", "skipped": "warn"}


def _link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def _phantom(v: dict) -> str:
    rows = [(site, d["studies"], d["patients"], d["holdout"]) for site, d in v["per_site"].items()]
    return table(["site", "studies", "patients", "held out"], rows) + "<p>A raw report as the site holds it (phantom PHI; it never leaves the site):</p>" + f"<pre>{esc(v['example_raw_report'])}</pre>"


def _deid(v: dict) -> str:
    rows = [(site, d["in"], d["clean"], d["quarantined"], d["audit_log"]) for site, d in v["per_site"].items()]
    return table(["site", "records in", "de-identified", "quarantined", "audit log (stays on site)"], rows) + f"<div class='pair'><div><b>before</b><pre>{esc(v['before'])}</pre></div><div><b>after</b><pre>{esc(v['after'])}</pre></div></div>"


def _pretrain(v: dict) -> str:
    card = v["card"]
    rows = [
        ("pretrained on", card["pretrained_on"]),
        ("studies / patients", f"{card['records']} / {card['patients']}"),
        ("steps (no DP, no federation)", card["steps"]),
        ("seconds", card["seconds"]),
        ("privacy cost", card["privacy_cost"]),
        ("SHA-256 (pinned in the run, checked by every site)", card["sha256"]),
    ]
    reused = "<p>Reused from an earlier <code>cxrsynth pretrain</code>.</p>" if v.get("reused") else ""
    return reused + table(["base model", ""], rows)


def _federate(v: dict) -> str:
    parts = [f"<p>Checkpoint after round {esc(v['rounds'])}: {esc(v['checkpoint'])}</p>"]
    hist = v.get("history") or []
    losses: dict[str, list] = {}
    for h in hist:
        for k, x in (h.get("metrics") or {}).items():
            if isinstance(x, (int, float)):
                losses.setdefault(k, []).append((h["round"], x))
    if losses:
        fig, ax = plt.subplots(figsize=(5, 3))
        for k, pts in list(losses.items())[:6]:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
        parts.append(figure_img(fig, "round metrics"))
    if hist:
        parts.append(table(["round", "sites", "accepted", "rejected", "no reply", "seconds"], [(h["round"], h["sites"], h["accepted"], h["rejected"], h["no_reply"], h["seconds"]) for h in hist]))
    ledger = v.get("privacy_ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("sites"), dict):
        rows = [(site, e.get("epsilon"), e.get("delta"), e.get("steps"), e.get("noise_multiplier"), e.get("sample_rate")) for site, e in ledger["sites"].items()]
        parts.append(f"<p>Privacy ledger: epsilon {esc(fmt(ledger.get('epsilon')))} at delta {esc(ledger.get('delta'))} (the largest over sites).</p>" + table(["site node", "epsilon", "delta", "DP-SGD steps", "noise multiplier", "sample rate"], rows))
    elif ledger is not None:
        parts.append(f"<p>Privacy ledger:</p><pre>{esc(_short_json(ledger))}</pre>")
    return "".join(parts)


def _evaluate(v: dict) -> str:
    from cxrsynth.eval.evaluate import summary_lines

    lines = "".join(f"<li>{esc(x)}</li>" for x in summary_lines(v["metrics"]))
    return f"<ul>{lines}</ul><p>{_link(v['page'], 'the evaluation page')} (image grids, plots, per-label tables).</p>"


def _audit(v: dict) -> str:
    rows, classes = [], []
    for name, check in v["checks"].items():
        figures = {k: x for k, x in check.items() if k != "passed" and isinstance(x, (int, float, str, bool)) and not isinstance(x, dict)}
        rows.append((name, "passed" if check.get("passed") else "FAILED", ", ".join(f"{k}={fmt(x)}" for k, x in list(figures.items())[:6])))
        classes.append("ok" if check.get("passed") else "bad")
    verdict = "<p class='ok'>The audit passed.</p>" if v["passed"] else "<p class='bad'>The audit did not pass; the release gate must refuse.</p>"
    flagged = v.get("flagged") or {}
    extra = f"<p>Flagged: {len(flagged.get('images', []))} image(s), {len(flagged.get('reports', []))} report(s).</p>" if flagged else ""
    return verdict + table(["check", "result", "figures"], rows, classes) + extra + f"<p>{_link('audit/audit.json', 'audit.json')}</p>"


def _release(v: dict) -> str:
    if v["released"]:
        return "<p class='ok'>Signed release written.</p><ul>" + "".join(f"<li>{_link(f, f)}</li>" for f in v["files"]) + "</ul>"
    return "<p class='warn'>Release refused.</p><ul>" + "".join(f"<li>{_link(f, f)}</li>" for f in v["files"]) + "</ul>"


def _short_json(obj, limit: int = 1500) -> str:
    import json

    text = json.dumps(obj, indent=1, default=str)
    return text if len(text) <= limit else text[:limit] + "\n..."


SECTIONS = {
    "pretraining on public data": _pretrain,
    "phantom data": _phantom,
    "de-identification": _deid,
    "federated fine-tuning (DP-SGD)": _federate,
    "evaluation": _evaluate,
    "privacy audit": _audit,
    "release": _release,
}


def _side_by_side(demo) -> str:
    from cxrsynth.data.dataset import read_dataset
    from cxrsynth.eval.page import sample_pairs_html
    from cxrsynth.pages.html import grid_img

    syn_dir, real_dir, base_dir = demo.out / "synthetic", demo.out / "data" / "holdout", demo.out / "base-synthetic"
    if not (syn_dir / "manifest.csv").is_file() or not (real_dir / "manifest.csv").is_file():
        return ""
    syn, _ = read_dataset(syn_dir)
    real, _ = read_dataset(real_dir)
    step = max(1, demo.cfg.samples_per_condition)
    columns = [("real (de-identified holdout)", real), ("synthetic: fine-tuned at the sites with DP (the release)", syn)]
    if (base_dir / "manifest.csv").is_file():
        columns.append(("base model only, same label sets (not released)", read_dataset(base_dir)[0]))
    cells = "".join(f"<div><b>{esc(title)}</b><br>{grid_img([r.image for r in recs[:16]], cols=8, cell=48)}</div>" for title, recs in columns)
    return "<h2>Real and synthetic, side by side</h2><div class='pair'>" + cells + "</div>" + sample_pairs_html(real, syn[::step], 4)


def write_overview(path: Path, demo) -> Path:
    c = demo.cfg
    rows = [(s.name, s.status, f"{s.seconds:.1f}", s.detail) for s in demo.stages]
    classes = [STATUS_CLASS.get(s.status, "bad") for s in demo.stages]
    parts = [
        f"<p>A base model (family <b>{esc(c.family)}</b>) pretrained on a public phantom cohort, then fine-tuned at {c.sites} phantom hospitals ({c.studies} studies) "
        f"in {c.rounds} federated round(s) of {c.local_steps} local steps with DP-SGD (noise multiplier {c.noise_multiplier}, clipping norm {c.max_grad_norm}, "
        f"budget epsilon {c.epsilon_budget:g} per site); total {demo.facts.get('seconds', 0):.0f}s.</p>",
        table(["stage", "status", "seconds", "detail"], rows, classes),
    ]
    for s in demo.stages:
        render = SECTIONS.get(s.name)
        if s.status == OK and render is not None:
            parts.append(f"<h2>{esc(s.name)}</h2>{render(s.value)}")
        elif s.status == OK and s.name == "generation":
            parts.append(f"<h2>generation</h2><p>{esc(s.value['records'])} synthetic records, conditioned on {esc(s.value['conditioned_on'])}.</p>")
        elif s.status != OK:
            parts.append(f"<h2>{esc(s.name)}</h2><p class='{STATUS_CLASS.get(s.status, 'bad')}'>{esc(s.status)}: {esc(s.detail)}</p>")
    parts.append(_side_by_side(demo))
    path.write_text(page("cxrsynth demo overview", parts), encoding="utf-8")
    return path
