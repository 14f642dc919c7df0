"""benchmarks/run_all.py: collects every script's rows, lists a failing one with its error."""

import importlib.util
import json
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flatten_keeps_rows_and_flattens_other_shapes():
    ra = _run_all()
    rows = [{"name": "a", "value": 1.0, "unit": "x"}]
    assert ra.flatten({"benchmark": "b", "rows": rows}) == rows
    flat = ra.flatten({"deid": {"reports_per_s": 12.5, "n": 100}, "ok": True})
    assert {r["name"]: r["value"] for r in flat} == {"deid reports_per_s": 12.5, "deid n": 100}


def test_run_one_collects_rows_retries_without_quick_and_reports_errors(tmp_path):
    ra = _run_all()
    good = tmp_path / "bench_good.py"
    good.write_text(
        textwrap.dedent("""
        import argparse, json
        p = argparse.ArgumentParser(); p.add_argument("--out"); a = p.parse_args()
        json.dump({"benchmark": "good", "rows": [{"name": "speed", "value": 3.5, "unit": "items/s"}]}, open(a.out, "w"))
    """)
    )
    bad = tmp_path / "bench_bad.py"
    bad.write_text("raise SystemExit('no data here')\n")
    res = ra.run_one(good, tmp_path / "good.json", quick=True, timeout=60)
    assert res["rows"] == [{"name": "speed", "value": 3.5, "unit": "items/s"}]
    err = ra.run_one(bad, tmp_path / "bad.json", quick=False, timeout=60)
    assert "no data here" in err["error"]
    md = ra.markdown(
        {
            "date": "d",
            "quick": False,
            "machine": {"cpu": "c", "cores": 2, "memory_gb": 1, "python": "3", "torch": "t"},
            "benchmarks": {"good": res, "bad": err},
        }
    )
    assert "| good | speed | 3.5 | items/s |" in md and "| bad | (did not run) |" in md
    json.dumps(res)
