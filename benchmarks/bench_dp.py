"""Where a DP-SGD step's time goes, per family and size: per-sample gradients, clipping, noise.

    .venv/bin/python benchmarks/bench_dp.py [--steps 10] [--families emixer,emixer-f1,ldm,ldm-diffusion,mopoe]
        [--sizes tiny,mid]

For each family and size one child process holds four copies of the model: non-private, DP-SGD
with Opacus' per-layer per-sample gradient formulas (`dp.grad_sample: hooks`), DP-SGD with
torch.func's vmap over every layer (`functorch`) and book-keeping DP-SGD (`bookkeeping`,
privacy/bookkeeping.py: per-record norms and one clipped sum per layer from the layers' inputs
and output gradients); their steps are interleaved on the same batches so all four see the same
machine load, and the ratios are taken within the run. Inside a DP step, timers on Opacus'
backward hook (per-sample gradients), `clip_and_accumulate` (per-sample norms, clipping,
summing; with book-keeping also the per-record gradients of the layers it materializes) and
`add_noise` say where the extra time goes; "other" is the rest of the difference to the
non-private step (the hooks, the activations they keep; negative where book-keeping skips
autograd's own weight gradients).

The first steps of `ldm` train its VAE (`vae_steps`); `ldm-diffusion` is the same preset in its
second stage, the U-Net and the text encoder, where most of its steps are. EMIXER's non-private
step makes `f_steps` report-decoder updates where DP-SGD makes one (the accountant counts one
per batch); `emixer-f1` sets `f_steps: 1`, so both modes do the same work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

from common import child, model_config, phantom_records, write

MODES = ("off", "hooks", "functorch", "bookkeeping")
# Cases that are a family's preset with model settings changed: (family, model overrides).
VARIANTS = {"ldm-diffusion": ("ldm", {"vae_steps": 0}), "emixer-f1": ("emixer", {"f_steps": 1})}


def one(family: str, size: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from cxrsynth.models import build_model
    from cxrsynth.privacy.bookkeeping import BookkeepingDPOptimizer
    from cxrsynth.privacy.dp import privatize
    from cxrsynth.train import BatchSampler, seed_everything

    spent: dict[str, float] = defaultdict(float)
    active = {"mode": None}

    def timer(owner, name: str, key: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[(active["mode"], key)] += time.perf_counter() - t0

        setattr(owner, name, timed)

    timer(GradSampleModule, "capture_backprops_hook", "per-sample gradients")
    timer(DPOptimizer, "clip_and_accumulate", "clipping")
    timer(BookkeepingDPOptimizer, "clip_and_accumulate", "clipping")
    timer(BookkeepingDPOptimizer, "add_noise", "noise")
    timer(DPOptimizer, "add_noise", "noise")

    family, overrides = VARIANTS.get(family, (family, {}))
    cfg = model_config(family, size)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=overrides)})
    records = phantom_records(256, cfg.model.image_size)
    batch = cfg.train.batch_size
    models = {}
    for mode in MODES:
        seed_everything(0)
        model = build_model(cfg.model)
        model.setup(records)
        model.opts = model.make_optimizers()
        if mode != "off":
            dp = cfg.dp.model_copy(update={"enabled": True, "grad_sample": mode})
            privatize(model, cfg.model_copy(update={"dp": dp}), batch / len(records))
        model.train()
        models[mode] = model
    sampler = BatchSampler(records, batch, seed=0)
    first = next(sampler)
    for mode, model in models.items():  # warm-up
        active["mode"] = mode
        model.train_step(first)
    spent.clear()
    seconds = dict.fromkeys(MODES, 0.0)
    for _ in range(steps):
        b = next(sampler)
        for mode, model in models.items():
            active["mode"] = mode
            t0 = time.perf_counter()
            model.train_step(b)
            seconds[mode] += time.perf_counter() - t0
    per_step = {m: s / steps for m, s in seconds.items()}
    parts = {m: {k: v / steps for (mm, k), v in spent.items() if mm == m} for m in MODES[1:]}
    for m in MODES[1:]:
        parts[m]["other"] = per_step[m] - per_step["off"] - sum(parts[m].values())
    return {"per_step": per_step, "parts": parts, "batch": batch}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results/bench_dp.json")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--families", default="emixer,emixer-f1,ldm,ldm-diffusion,mopoe")
    p.add_argument("--sizes", default="tiny,mid")
    p.add_argument("--quick", action="store_true", help="3 steps")
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.child[0], args.child[1], int(args.child[2]))))
        return 0
    steps = 3 if args.quick else args.steps
    rows = []
    for family in args.families.split(","):
        for size in args.sizes.split(","):
            r = child(__file__, family, size, str(steps))
            if "error" in r:
                rows.append({"name": f"DP step {family} {size}", "value": None, "unit": "x", "note": r["error"]})
                continue
            off = r["per_step"]["off"]
            for mode in MODES[1:]:
                parts = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in r["parts"][mode].items())
                rows.append(
                    {
                        "name": f"DP step / non-private step, {family} {size}, grad_sample {mode}",
                        "value": round(r["per_step"][mode] / off, 2),
                        "unit": "x",
                        "note": f"batch {r['batch']}, {steps} steps interleaved; non-private {off * 1000:.0f} ms/step, DP {r['per_step'][mode] * 1000:.0f} ms/step: {parts}",
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
    write(args.out, "dp", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
