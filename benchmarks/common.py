"""What every benchmark here shares: one measurement per child process, results as JSON rows.

A benchmark script writes `{"benchmark": NAME, "rows": [{"name", "value", "unit", ...}]}` to the
file given by `--out`; `run_all.py` collects them. Each measurement runs in a fresh child process
so its peak resident memory (ru_maxrss) is its own, and one thread is used throughout because
the machine is shared: ratios measured within one run are what compare, not absolute figures.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def child(script: str, *args: str, timeout: float = 900) -> dict:
    """Run `script --child ARGS...` in a fresh interpreter; it prints one JSON object last."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, str(Path(script).resolve()), "--child", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Seconds per call over `repeat` calls (after the first, which warms up)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def write(out: str | Path, benchmark: str, rows: list[dict]) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"benchmark": benchmark, "rows": rows}, indent=2), encoding="utf-8")
    for r in rows:
        print(f"{benchmark}: {r['name']}: {r['value']} {r.get('unit', '')}".rstrip(), file=sys.stderr)


def model_config(family: str, size: str):
    """`tiny` is the family's preset; `mid` the same at 64x64 pixels, twice the tiny side."""
    from cxrsynth.config import load_config

    cfg = load_config(f"{family}-tiny", {"train": {"num_threads": 1}})
    if size == "mid":
        cfg = load_config(f"{family}-tiny", {"train": {"num_threads": 1}, "model": {"image_size": 64}})
    return cfg


def phantom_records(n: int, image_size: int):
    from cxrsynth.data.phantom import make_phantom

    return make_phantom(n=n, sites=1, seed=0, image_size=image_size, lateral=True)
