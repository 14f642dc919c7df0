"""Generation speed (samples/s) and peak memory per family, tiny and mid size.

Weights are untrained: sampling cost does not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import child, model_config, peak_rss_mb, phantom_records, timed, write

from cxrsynth.models import registry


def one(family: str, size: str, n: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from cxrsynth.models import build_model

    cfg = model_config(family, size)
    records = phantom_records(128, cfg.model.image_size)
    model = build_model(cfg.model)
    model.setup(records)
    model.eval()
    # No conditions: each family draws its own (a label mix fitted to the records, or the prior).
    per_call = timed(lambda: model.generate(n, None, seed=0), 2)
    return {"samples_per_s": n / per_call, "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results/bench_generate.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.child[0], args.child[1], int(args.child[2]))))
        return 0
    n = 8 if args.quick else 32
    rows = []
    for family in registry.names():
        for size in ("tiny", "mid"):
            r = child(__file__, family, size, str(n))
            name = f"generate {family} {size}"
            if "error" in r:
                rows.append({"name": name, "value": None, "unit": "samples/s", "note": r["error"]})
            else:
                rows.append(
                    {
                        "name": name,
                        "value": round(r["samples_per_s"], 2),
                        "unit": "samples/s",
                        "peak_rss_mb": round(r["peak_rss_mb"]),
                        "note": f"batches of {n}",
                    }
                )
    write(args.out, "generate", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
