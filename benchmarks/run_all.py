"""Run every benchmarks/bench_*.py and write results.json and results.md (a markdown table).

    .venv/bin/python benchmarks/run_all.py [--quick] [--only train,generate] [--out benchmarks/results]

Each script is run as `python bench_X.py --out FILE [--quick]` and is expected to write
`{"benchmark", "rows": [{"name", "value", "unit", "note"?, "peak_rss_mb"?}]}`; other JSON shapes
are flattened into rows, and a script that fails is listed with its error, never left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "threads_per_measurement": 1,
    }


def flatten(obj, prefix: str = "") -> list[dict]:
    """Rows from a benchmark's JSON when it does not use the rows format."""
    if isinstance(obj, dict) and isinstance(obj.get("rows"), list):
        return obj["rows"]
    rows = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            rows += flatten(v, f"{prefix}{k} " if prefix or k else "")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            rows += flatten(v, f"{prefix}{i} ")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        rows.append({"name": prefix.strip(), "value": obj, "unit": ""})
    return rows


def run_one(script: Path, out: Path, quick: bool, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    base = [sys.executable, str(script), "--out", str(out)]
    t0 = time.perf_counter()
    for cmd in ([*base, "--quick"], base) if quick else (base,):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s", "seconds": timeout}
        # argparse exits 2 on an option it does not know: try again without --quick.
        if not (proc.returncode == 2 and "--quick" in proc.stderr):
            break
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}", "seconds": seconds}
    if not out.is_file():
        try:
            return {"rows": flatten(json.loads(proc.stdout)), "seconds": seconds}
        except json.JSONDecodeError:
            return {"error": f"wrote no {out.name} and printed no JSON", "seconds": seconds}
    return {"rows": flatten(json.loads(out.read_text(encoding="utf-8"))), "seconds": seconds}


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Measured {results['date']} on {m['cpu']}, {m['cores']} cores (shared), {m['memory_gb']} GB RAM, "
        f"Python {m['python']}, torch {m['torch']}, one thread per measurement{' (--quick)' if results['quick'] else ''}.",
        "",
        "| benchmark | measure | value | unit | peak RSS MB | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in results["benchmarks"].items():
        if "error" in res:
            lines.append(f"| {name} | (did not run) | | | | {res['error']} |")
            continue
        for r in res["rows"]:
            lines.append(
                f"| {name} | {r.get('name', '')} | {fmt(r.get('value'))} | {r.get('unit', '')} | {fmt(r.get('peak_rss_mb'))} | {str(r.get('note', '')).replace('|', '/')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--quick", action="store_true", help="smoke run: fewer steps")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated names (train,generate,deid,fl,audit); the others' earlier results are kept",
    )
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    scripts = [s for s in sorted(HERE.glob("bench_*.py")) if not only or s.stem.removeprefix("bench_") in only]
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": machine(),
        "benchmarks": {},
    }
    previous = out / "results.json"
    if only and previous.is_file():
        # A partial run updates the named benchmarks and keeps the others' earlier results.
        earlier = json.loads(previous.read_text(encoding="utf-8"))
        results["benchmarks"] = {k: v for k, v in earlier.get("benchmarks", {}).items() if k not in only}
        results["date"] = f"{earlier.get('date', '?')}; {', '.join(sorted(only))} {results['date']}"
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        print(f"== {name}", file=sys.stderr, flush=True)
        res = run_one(script, out / f"{script.stem}.json", args.quick, args.timeout)
        print(
            f"   {name}: {'error: ' + res['error'] if 'error' in res else str(len(res['rows'])) + ' rows'} ({res['seconds']:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
        results["benchmarks"][name] = res
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    return 0 if all("error" not in r for r in results["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
