"""De-identification throughput (reports/s, one process and a worker pool) and quality on the gold files.

Reports are the gold corpus texts (tune and held-out parts, radiology reports of 300-900
characters) repeated to N. The model is loaded before timing; the pool forks after loading, so
its figure includes process start and result transfer but not spaCy loading. Quality rows are
`deid eval` on the held-out parts: recall per type (a span counts only if all its characters are
covered), overall precision and damaged `keep` spans.

    .venv/bin/python benchmarks/bench_deid.py [--quick] [--out benchmarks/results/bench_deid.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import ROOT, child, peak_rss_mb, write

GOLD = ROOT / "privacy" / "deid" / "gold"


def texts(n: int) -> list[str]:
    from privacy.deid.evaluate import read_gold

    rows = [row for f in ("tune.jsonl", "heldout.jsonl") for row in read_gold(GOLD / f)]
    return [rows[i % len(rows)]["text"] for i in range(n)]


def speed(workers: int, n: int, pipes: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from privacy.deid import DeidConfig, DeidItem, deidentify_batch
    from privacy.deid.deidentifier import cached_deidentifier

    config = DeidConfig(spacy_pipes=pipes, batch_size=16)
    t0 = time.perf_counter()
    cached_deidentifier(config)
    load_s = time.perf_counter() - t0
    items = [DeidItem(str(i), t) for i, t in enumerate(texts(n))]
    deidentify_batch(items[:8], config, workers=1)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    results = deidentify_batch(items, config, workers=workers)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(r.status == "ok" for r in results)
    return {"reports_per_s": n / wall, "cpu_ms_per_report": 1000 * cpu / n if workers == 1 else None, "load_s": load_s, "peak_rss_mb": peak_rss_mb()}


def presidio_defaults(deid):
    """Presidio's predefined English recognizers on the same spaCy model: the out-of-the-box anchor.
    Its email recognizer is swapped for the offline one (the stock one tries to fetch a suffix list)."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    from privacy.deid.engine import OfflineEmailRecognizer

    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=deid.analyzer.nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    return AnalyzerEngine(registry=registry, nlp_engine=deid.analyzer.nlp_engine, supported_languages=["en"])


def quality() -> dict:
    from privacy.deid import DeidConfig
    from privacy.deid.deidentifier import Finding, cached_deidentifier
    from privacy.deid.evaluate import evaluate_gold, read_gold, score

    deid = cached_deidentifier(DeidConfig())
    plain = presidio_defaults(deid)
    out = {}
    for name in ("heldout", "heldout_b"):
        rows = read_gold(GOLD / f"{name}.jsonl")
        base = score(rows, [[Finding("ANY", r.start, r.end, r.score) for r in plain.analyze(row["text"], "en")] for row in rows])
        out[f"{name} (Presidio predefined recognizers only)"] = {
            "recall": {},
            "overall_recall": base["overall"]["recall"],
            "overall_precision": base["overall"]["precision"],
            "keep_damaged": base["keep_damaged"],
            "spans": base["overall"]["gold"],
        }
        r = evaluate_gold(GOLD / f"{name}.jsonl", deid)
        out[name] = {
            "recall": {t: s["recall"] for t, s in r["per_type"].items()},
            "overall_recall": r["overall"]["recall"],
            "overall_precision": r["overall"]["precision"],
            "keep_damaged": r["keep_damaged"],
            "spans": r["overall"]["gold"],
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results/bench_deid.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        if args.child[0] == "quality":
            print(json.dumps(quality()))
        else:
            print(json.dumps(speed(int(args.child[1]), int(args.child[2]), args.child[3])))
        return 0
    n = 64 if args.quick else 320
    rows = []
    for pipes in ("ner", "all"):
        for workers in (1, 2):
            r = child(__file__, "speed", str(workers), str(n), pipes)
            if "error" in r:
                rows.append({"name": f"reports/s, spacy_pipes={pipes}, workers={workers}", "value": None, "unit": "reports/s", "note": r["error"]})
                continue
            note = f"{n} reports; spaCy load {r['load_s']:.1f} s"
            if r["cpu_ms_per_report"] is not None:
                note += f"; {r['cpu_ms_per_report']:.1f} ms CPU per report"
            rows.append({"name": f"reports/s, spacy_pipes={pipes}, workers={workers}", "value": round(r["reports_per_s"], 1), "unit": "reports/s", "note": note, "peak_rss_mb": round(r["peak_rss_mb"])})
    q = child(__file__, "quality")
    for name, res in q.items() if "error" not in q else []:
        for t, rec in sorted(res["recall"].items()):
            rows.append({"name": f"{name} recall {t}", "value": None if rec is None else round(rec, 4), "unit": "", "note": f"{res['spans']} spans in the file"})
        rows.append({"name": f"{name} recall ALL", "value": round(res["overall_recall"], 4), "unit": ""})
        rows.append({"name": f"{name} precision ALL", "value": round(res["overall_precision"], 4), "unit": ""})
        rows.append({"name": f"{name} keep spans damaged", "value": res["keep_damaged"], "unit": "spans"})
    if "error" in q:
        rows.append({"name": "quality", "value": None, "unit": "", "note": q["error"]})
    write(args.out, "deid", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
