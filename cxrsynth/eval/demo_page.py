"""The demo's one-page overview (index.html): every stage's status and figures, read from this run's
outputs. The data is built here; templates/demo.html draws it, one block per stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cxrsynth import pages
from cxrsynth.eval.stages import OK
from cxrsynth.pages import figure_uri, fmt, grid_uri

STATUS_CLASS = {"ok": "ok", "refused": "warn", "skipped": "warn"}


def _short_json(obj, limit: int = 1500) -> str:
    text = json.dumps(obj, indent=1, default=str)
    return text if len(text) <= limit else text[:limit] + "\n..."


def _phantom(v: dict) -> dict:
    return {
        "rows": [(site, d["studies"], d["patients"], d["holdout"]) for site, d in v["per_site"].items()],
        "raw_report": v["example_raw_report"],
    }


def _deid(v: dict) -> dict:
    rows = [(site, d["in"], d["clean"], d["quarantined"], d["audit_log"]) for site, d in v["per_site"].items()]
    return {"rows": rows, "before": v["before"], "after": v["after"]}


def _pretrain(v: dict) -> dict:
    card = v["card"]
    rows = [
        ("pretrained on", card["pretrained_on"]),
        ("studies / patients", f"{card['records']} / {card['patients']}"),
        ("steps (no DP, no federation)", card["steps"]),
        ("seconds", card["seconds"]),
        ("privacy cost", card["privacy_cost"]),
        ("SHA-256 (pinned in the run, checked by every site)", card["sha256"]),
    ]
    return {"rows": rows, "reused": bool(v.get("reused"))}


def _round_plot(hist: list[dict]) -> str:
    """The sites' training losses by round (metrics `loss-<part>`; counts and timings are not losses)."""
    losses: dict[str, list] = {}
    for h in hist:
        for k, x in (h.get("metrics") or {}).items():
            if k.startswith("loss-") and isinstance(x, (int, float)):
                losses.setdefault(k[len("loss-") :], []).append((h["round"], x))
    if not losses:
        return ""
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    for k, pts in list(losses.items())[:6]:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss, mean over sites")
    if len(losses) > 1:
        ax.legend(fontsize=7)
    return figure_uri(fig)


def _federate(v: dict) -> dict:
    hist = v.get("history") or []
    out = {
        "rounds": v["rounds"],
        "checkpoint": v["checkpoint"],
        "plot": _round_plot(hist),
        "rows": [(h["round"], h["sites"], h["accepted"], h["rejected"], h["no_reply"], h["seconds"]) for h in hist],
        "ledger": None,
        "ledger_json": None,
    }
    ledger = v.get("privacy_ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("sites"), dict):
        rows = [
            (site, e.get("epsilon"), e.get("delta"), e.get("steps"), e.get("noise_multiplier"), e.get("sample_rate"))
            for site, e in ledger["sites"].items()
        ]
        out["ledger"] = {"epsilon": ledger.get("epsilon"), "delta": ledger.get("delta"), "rows": rows}
    elif ledger is not None:
        out["ledger_json"] = _short_json(ledger)
    out["looks"] = _looks(v.get("site_looks"))
    return out


def _looks(looks) -> Optional[dict]:
    """The sites' looks (cxrsynth.models.acquisition) as response curves: quantile level against grey level."""
    if not isinstance(looks, dict) or not looks.get("quantiles"):
        return None
    from cxrsynth.models.acquisition import LEVELS

    fig = Figure(figsize=(4.2, 3.0))
    ax = fig.subplots()
    for k, (q, w) in enumerate(zip(looks["quantiles"], looks.get("weights", []))):
        ax.plot(LEVELS, q, marker="o", ms=3, label=f"look {k} ({w:g} studies)")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set_xlabel("quantile level")
    ax.set_ylabel("grey level (0-1)")
    ax.legend(fontsize=7)
    return {"note": looks.get("note", ""), "plot": figure_uri(fig)}


def _generation(v: dict) -> dict:
    return {"records": v["records"], "conditioned_on": v["conditioned_on"]}


def _evaluate(v: dict) -> dict:
    from cxrsynth.eval.evaluate import summary_lines

    return {"lines": summary_lines(v["metrics"]), "page": v["page"]}


def _audit(v: dict) -> dict:
    rows, classes = [], []
    for name, check in v["checks"].items():
        figures = {
            k: x
            for k, x in check.items()
            if k != "passed" and isinstance(x, (int, float, str, bool)) and not isinstance(x, dict)
        }
        rows.append(
            (
                name,
                "passed" if check.get("passed") else "FAILED",
                ", ".join(f"{k}={fmt(x)}" for k, x in list(figures.items())[:6]),
            )
        )
        classes.append("ok" if check.get("passed") else "bad")
    flagged = v.get("flagged") or {}
    counts = (
        {"images": len(flagged.get("images", [])), "reports": len(flagged.get("reports", []))} if flagged else None
    )
    return {"passed": v["passed"], "rows": rows, "classes": classes, "flagged": counts}


def _release(v: dict) -> dict:
    return {"released": v["released"], "files": v["files"]}


SECTIONS = {
    "pretraining on public data": ("pretrain", _pretrain),
    "phantom data": ("phantom", _phantom),
    "de-identification": ("deid", _deid),
    "federated fine-tuning (DP-SGD)": ("federate", _federate),
    "generation": ("generation", _generation),
    "evaluation": ("evaluate", _evaluate),
    "privacy audit": ("audit", _audit),
    "release": ("release", _release),
}


def _side_by_side(demo) -> dict | None:
    from cxrsynth.data.dataset import read_dataset
    from cxrsynth.eval.page import sample_pairs

    syn_dir, real_dir, base_dir = demo.out / "synthetic", demo.out / "data" / "holdout", demo.out / "base-synthetic"
    if not (syn_dir / "manifest.csv").is_file() or not (real_dir / "manifest.csv").is_file():
        return None
    syn, _ = read_dataset(syn_dir)
    real, _ = read_dataset(real_dir)
    step = max(1, demo.cfg.samples_per_condition)
    columns = [
        ("real (de-identified holdout)", real),
        (
            "synthetic: fine-tuned at the sites with DP"
            + (", in the sites' looks" if demo.cfg.site_looks else "")
            + " (the release)",
            syn,
        ),
    ]
    if (base_dir / "manifest.csv").is_file():
        columns.append(("base model only, same label sets (not released)", read_dataset(base_dir)[0]))
    return {
        "columns": [
            {"title": title, "grid": grid_uri([r.image for r in recs[:16]], cols=8, cell=48)}
            for title, recs in columns
        ],
        "pairs": sample_pairs(real, syn[::step], 4),
    }


def write_page(path: Path, demo) -> Path:
    sections = []
    for s in demo.stages:
        kind, build = SECTIONS.get(s.name, (None, None))
        if s.status == OK and build is not None:
            sections.append({"name": s.name, "kind": kind, "data": build(s.value)})
        elif s.status != OK:
            sections.append(
                {
                    "name": s.name,
                    "kind": "not ok",
                    "data": None,
                    "status": s.status,
                    "detail": s.detail,
                    "cls": STATUS_CLASS.get(s.status, "bad"),
                }
            )
    return pages.write(
        path,
        "demo.html",
        title="cxrsynth demo overview",
        c=demo.cfg,
        seconds=demo.facts.get("seconds", 0),
        stage_rows=[(s.name, s.status, f"{s.seconds:.1f}", s.detail) for s in demo.stages],
        stage_classes=[STATUS_CLASS.get(s.status, "bad") for s in demo.stages],
        sections=sections,
        side_by_side=_side_by_side(demo),
    )
