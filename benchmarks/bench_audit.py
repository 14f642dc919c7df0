"""Audit speed: chunked exact nearest-neighbour search against the bare matrix multiplication,
and the aligned copy search per query.

    .venv/bin/python benchmarks/bench_audit.py [--quick] [--out benchmarks/results/bench_audit.json]

Full size is the issue's: 10k synthetic x 100k training embeddings of 512 dims. The matmul
reference does the same block products (queries x base, 4096-row blocks) and throws the
result away; the search adds the norms, the running minimum and the argmin. A full
10k x 100k product would need a 4 GB result, which is what the chunking avoids. One thread.
"""

from __future__ import annotations

import argparse
import time

from common import peak_rss_mb, write


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="1k x 10k instead of 10k x 100k")
    p.add_argument("--out", default="benchmarks/results/bench_audit.json")
    args = p.parse_args()
    import numpy as np
    import torch

    from cxrsynth.privacy.audit.neighbors import nearest

    torch.set_num_threads(1)
    nq, nb, dim, chunk = (1_000, 10_000, 512, 4096) if args.quick else (10_000, 100_000, 512, 4096)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((nq, dim), dtype=np.float32)
    b = rng.standard_normal((nb, dim), dtype=np.float32)
    rss0 = peak_rss_mb()

    t0 = time.perf_counter()
    nearest(q, b, chunk=chunk)
    t_search = time.perf_counter() - t0
    rss_search = peak_rss_mb()

    qt, bt = torch.as_tensor(q), torch.as_tensor(b)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, nq, chunk):
            for e in range(0, nb, chunk):
                torch.mm(qt[s : s + chunk], bt[e : e + chunk].T)
    t_mm = time.perf_counter() - t0

    from cxrsynth.privacy.audit.align import aligned_nearest

    n_al, n_base = (50, 500) if args.quick else (200, 2000)
    imgs = (rng.random((n_al + n_base, 64, 64)) * 255).astype(np.uint8)
    t0 = time.perf_counter()
    aligned_nearest(list(imgs[:n_al]), list(imgs[n_al:]))
    t_al = time.perf_counter() - t0

    flops = 2.0 * nq * nb * dim
    rows = [
        {"name": f"nearest neighbour {nq}x{nb}x{dim} (chunk {chunk})", "value": round(t_search, 2), "unit": "s"},
        {"name": f"same block matmuls {nq}x{nb}x{dim}", "value": round(t_mm, 2), "unit": "s"},
        {"name": "search / matmul time", "value": round(t_search / t_mm, 3), "unit": "x"},
        {"name": "matmul throughput", "value": round(flops / t_mm / 1e9, 2), "unit": "GFLOP/s"},
        {"name": "peak RSS added by the search", "value": round(rss_search - rss0, 1), "unit": "MB"},
        {
            "name": f"aligned copy search, per query ({n_base} training images)",
            "value": round(1000 * t_al / n_al, 1),
            "unit": "ms",
        },
    ]
    write(args.out, "audit", rows)


if __name__ == "__main__":
    main()
