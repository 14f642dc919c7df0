"""What the sites' looks can add at most: a synthetic set rendered in each site's exact look.

Takes a cell of `bench_utility.py` (its de-identified training data and its base-only samples),
renders every sample in one site's look, drawn in proportion to the sites' studies, through the
grey-level map of `cxrsynth.models.acquisition`, with each site's exact mean quantiles (no DP,
no clipping), and writes the result as a dataset for `cxrsynth evaluate`. Against the same
cell's DP looks this shows what the Gaussian mechanism costs.

    python benchmarks/bench_looks_oracle.py runs/bu-p2/cells/ldm-eps8-seed0 --out runs/oracle-p2
    cxrsynth evaluate --synthetic runs/oracle-p2 --real runs/bu-p2/cells/ldm-eps8-seed0/data/all \\
        --baseline runs/bu-p2/cells/ldm-eps8-seed0/base-synthetic --out runs/oracle-p2-eval --classifier-steps 600
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from cxrsynth.data.dataset import read_dataset, write_dataset
from cxrsynth.models.acquisition import SiteLooks, mean_quantiles


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", type=Path, help="a bench_utility cell folder (data/train, base-synthetic)")
    ap.add_argument("--samples", default="base-synthetic", help="the cell's sample folder to render")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    train, _ = read_dataset(a.cell / "data" / "train", with_phi=False)
    samples, _ = read_dataset(a.cell / a.samples, with_phi=False)
    sites = sorted({r.site for r in train})
    looks = SiteLooks(
        [sum(r.site == s for r in train) for s in sites],
        [mean_quantiles(r.image for r in train if r.site == s) for s in sites],
    )
    reference = mean_quantiles(r.image for r in samples)
    picks = looks.draw(len(samples), np.random.default_rng(a.seed))
    for s, q in zip(sites, looks.quantiles):
        print(f"{s}: {np.round(q, 3).tolist()}", file=sys.stderr)
    print(f"samples: {np.round(reference, 3).tolist()}", file=sys.stderr)
    write_dataset(
        a.out,
        [
            r.with_(image=looks.render(r.image, int(k), reference), lateral=looks.render(r.lateral, int(k), reference))
            for r, k in zip(samples, picks)
        ],
    )
    print(f"wrote {len(samples)} samples in the sites' exact looks to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
