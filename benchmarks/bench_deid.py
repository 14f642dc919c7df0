"""De-identification throughput (reports/s, one process and a worker pool) beside Presidio's default
engine on the same text, and quality on the gold files.

Reports are the committed gold texts (tune and held-out parts, 300-900 characters), or with
`--realtext DIR` the real-text corpus that `python -m cxrsynth.privacy.deid.gold.build_realtext build`
wrote there (IU reports with planted PHI; never committed), repeated to N. The full pipeline is
`deidentify_batch` (spaCy once per worker batch, every recognizer, surrogates, the header check);
Presidio's default is `AnalyzerEngine` with its predefined English recognizers on the same spaCy
model, analysis only (it writes nothing). The model is loaded before timing; the pool forks after
loading, so its figure includes process start and result transfer but not spaCy loading. Quality
rows are `deid eval` on the held-out parts (and, with --realtext, on its heldout.jsonl): recall per
type (a span counts only if all its characters are covered), precision and damaged `keep` spans,
for the project's engine and for Presidio's default.

    .venv/bin/python benchmarks/bench_deid.py [--quick] [--realtext runs/realtext] [--out benchmarks/results/bench_deid.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import ROOT, child, peak_rss_mb, write

GOLD = ROOT / "privacy" / "deid" / "gold"


def texts(n: int, source: str = "") -> list[str]:
    from cxrsynth.privacy.deid.evaluate import read_gold

    folder = Path(source) if source else GOLD
    rows = [row for f in ("tune.jsonl", "heldout.jsonl") for row in read_gold(folder / f)]
    return [rows[i % len(rows)]["text"] for i in range(n)]


def presidio_speed(n: int, source: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from cxrsynth.privacy.deid import DeidConfig
    from cxrsynth.privacy.deid.deidentifier import cached_deidentifier

    plain = presidio_defaults(cached_deidentifier(DeidConfig(ephemeral_secret=True)))
    items = texts(n, source)
    for t in items[:4]:
        plain.analyze(t, "en")
    t0 = time.perf_counter()
    for t in items:
        plain.analyze(t, "en")
    return {"reports_per_s": n / (time.perf_counter() - t0), "peak_rss_mb": peak_rss_mb()}


def speed(workers: int, n: int, pipes: str, source: str = "") -> dict:
    import torch

    torch.set_num_threads(1)
    from cxrsynth.privacy.deid import DeidConfig, DeidItem, deidentify_batch
    from cxrsynth.privacy.deid.deidentifier import cached_deidentifier

    config = DeidConfig(spacy_pipes=pipes, batch_size=16, ephemeral_secret=True)
    t0 = time.perf_counter()
    cached_deidentifier(config)
    load_s = time.perf_counter() - t0
    items = [DeidItem(str(i), t) for i, t in enumerate(texts(n, source))]
    deidentify_batch(items[:8], config, workers=1)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    results = deidentify_batch(items, config, workers=workers)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(r.status == "ok" for r in results)
    return {
        "reports_per_s": n / wall,
        "cpu_ms_per_report": 1000 * cpu / n if workers == 1 else None,
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
    }


def presidio_defaults(deid):
    """Presidio's predefined English recognizers on the same spaCy model: the out-of-the-box anchor.
    Its email recognizer is swapped for the offline one (the stock one tries to fetch a suffix list)."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    from cxrsynth.privacy.deid.engine import OfflineEmailRecognizer

    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=deid.analyzer.nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    return AnalyzerEngine(registry=registry, nlp_engine=deid.analyzer.nlp_engine, supported_languages=["en"])


def quality(source: str = "") -> dict:
    from cxrsynth.privacy.deid import DeidConfig
    from cxrsynth.privacy.deid.deidentifier import Finding, cached_deidentifier
    from cxrsynth.privacy.deid.evaluate import evaluate_gold, read_gold, score

    deid = cached_deidentifier(DeidConfig(ephemeral_secret=True))
    plain = presidio_defaults(deid)
    out = {}
    files = {name: GOLD / f"{name}.jsonl" for name in ("heldout", "heldout_b")}
    if source:
        files["realtext heldout"] = Path(source) / "heldout.jsonl"
    for name, path in files.items():
        rows = read_gold(path)
        base = score(
            rows, [[Finding("ANY", r.start, r.end, r.score) for r in plain.analyze(row["text"], "en")] for row in rows]
        )
        out[f"{name} (Presidio default engine)"] = {
            "recall": {},
            "overall_recall": base["overall"]["recall"],
            "overall_precision": base["overall"]["precision"],
            "keep_damaged": base["keep_damaged"],
            "keep_spans": base["keep_spans"],
            "spans": base["overall"]["gold"],
        }
        r = evaluate_gold(path, deid)
        out[name] = {
            "recall": {t: s["recall"] for t, s in r["per_type"].items()},
            "overall_recall": r["overall"]["recall"],
            "overall_precision": r["overall"]["precision"],
            "keep_damaged": r["keep_damaged"],
            "keep_spans": r["keep_spans"],
            "spans": r["overall"]["gold"],
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results/bench_deid.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--realtext",
        default="",
        help="folder written by cxrsynth.privacy.deid.gold.build_realtext build (tune/heldout.jsonl)",
    )
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        source = args.child[-1] if args.child[-1].startswith("src=") else "src="
        source = source[4:]
        if args.child[0] == "quality":
            print(json.dumps(quality(source)))
        elif args.child[0] == "presidio":
            print(json.dumps(presidio_speed(int(args.child[1]), source)))
        else:
            print(json.dumps(speed(int(args.child[1]), int(args.child[2]), args.child[3], source)))
        return 0
    n = 64 if args.quick else 320
    src = f"src={args.realtext}"
    text_note = "real-text corpus" if args.realtext else "gold texts"
    rows = []
    for pipes in ("ner",) if args.quick else ("ner", "all"):
        for workers in (1, 2):
            r = child(__file__, "speed", str(workers), str(n), pipes, src)
            name = f"reports/s, full pipeline, spacy_pipes={pipes}, workers={workers}"
            if "error" in r:
                rows.append({"name": name, "value": None, "unit": "reports/s", "note": r["error"]})
                continue
            note = f"{n} reports ({text_note}); spaCy load {r['load_s']:.1f} s"
            if r["cpu_ms_per_report"] is not None:
                note += f"; {r['cpu_ms_per_report']:.1f} ms CPU per report"
            rows.append(
                {
                    "name": name,
                    "value": round(r["reports_per_s"], 1),
                    "unit": "reports/s",
                    "note": note,
                    "peak_rss_mb": round(r["peak_rss_mb"]),
                }
            )
    r = child(__file__, "presidio", str(n), src)
    rows.append(
        {
            "name": "reports/s, Presidio default engine (analysis only), 1 process",
            "value": None if "error" in r else round(r["reports_per_s"], 1),
            "unit": "reports/s",
            "note": r.get("error", f"{n} reports ({text_note}), same spaCy model"),
        }
    )
    q = child(__file__, "quality", src)
    for name, res in q.items() if "error" not in q else []:
        for t, rec in sorted(res["recall"].items()):
            rows.append(
                {
                    "name": f"{name} recall {t}",
                    "value": None if rec is None else round(rec, 4),
                    "unit": "",
                    "note": f"{res['spans']} spans in the file",
                }
            )
        rows.append({"name": f"{name} recall ALL", "value": round(res["overall_recall"], 4), "unit": ""})
        rows.append({"name": f"{name} precision ALL", "value": round(res["overall_precision"], 4), "unit": ""})
        rows.append(
            {
                "name": f"{name} keep spans damaged",
                "value": res["keep_damaged"],
                "unit": "spans",
                "note": f"of {res['keep_spans']}",
            }
        )
    if "error" in q:
        rows.append({"name": "quality", "value": None, "unit": "", "note": q["error"]})
    write(args.out, "deid", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
