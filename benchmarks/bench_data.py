"""Data foundation speed: phantom generation, labeler, dataset write/read, ingest (records/s).

Issue 2 asks for 10k phantom records (64x64, frontal + lateral, reports) in under a minute;
`phantom 10k seconds` measures exactly that (not in --quick).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from common import child, peak_rss_mb, write


def one(what: str, n: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from cxrsynth.data.phantom import make_phantom

    if what == "phantom":
        t0, c0 = time.perf_counter(), time.process_time()
        make_phantom(n, sites=3, seed=0, image_size=64)
        sec = time.perf_counter() - t0
        # CPU seconds too: on a shared machine wall time mostly measures the neighbours.
        return {
            "seconds": sec,
            "cpu_seconds": time.process_time() - c0,
            "per_s": n / sec,
            "peak_rss_mb": peak_rss_mb(),
        }
    records = make_phantom(n, sites=3, seed=0, image_size=64)
    if what == "labeler":
        from cxrsynth.data.labeler import label_report

        texts = [r.report for r in records]
        t0 = time.perf_counter()
        for t in texts:
            label_report(t)
        sec = time.perf_counter() - t0
    else:
        from cxrsynth.data.dataset import read_dataset, write_dataset

        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            write_dataset(d, records)
            if what == "read":
                t0 = time.perf_counter()
                read_dataset(d)
            elif what == "ingest":
                from cxrsynth.data.ingest import ingest

                t0 = time.perf_counter()
                ingest("manifest", d, d + "_out", site="s")
            sec = time.perf_counter() - t0
    return {"seconds": sec, "per_s": n / sec, "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results/bench_data.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.child[0], int(args.child[1]))))
        return 0
    n = 300 if args.quick else 2000
    plan = [("phantom", n), ("labeler", n), ("write", n), ("read", n), ("ingest", n)]
    if not args.quick:
        plan.append(("phantom", 10000))
    rows = []
    for what, size in plan:
        r = child(__file__, what, str(size))
        if what == "phantom" and size == 10000:
            name, value, unit = "phantom 10k seconds (64x64, frontal+lateral, reports)", r.get("seconds"), "s"
        else:
            name, value, unit = f"{what} ({size} records, 64x64)", r.get("per_s"), "records/s"
        row = {"name": name, "value": None if value is None else round(value, 1), "unit": unit}
        if "error" in r:
            row["note"] = r["error"]
        elif "cpu_seconds" in r:
            row["note"] = f"{r['cpu_seconds']:.1f} CPU s"
        else:
            row["peak_rss_mb"] = round(r["peak_rss_mb"], 1)
        rows.append(row)
    write(args.out, "data", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
