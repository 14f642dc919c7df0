"""Training throughput (images/s) per family, tiny and mid size, DP-SGD off and on.

The DP overhead is the ratio of the two throughputs measured in the same run (Opacus reports
DP-SGD 2.6-8x slower than non-private training, Yousefpour et al. 2021, sec. 5). A second block
measures the same on the evaluation classifier with Opacus' per-sample hooks and with ghost
clipping, which the Opacus authors report roughly halves the overhead.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import child, model_config, peak_rss_mb, phantom_records, write

from cxrsynth.models import registry

SIZES = ("tiny", "mid")


def one_family(family: str, size: str, steps: int) -> dict:
    """DP off and on in one process, steps interleaved, so both see the same machine load."""
    import time

    import torch

    torch.set_num_threads(1)
    from cxrsynth.models import build_model
    from cxrsynth.privacy.dp import privatize
    from cxrsynth.train import BatchSampler

    cfg = model_config(family, size)
    records = phantom_records(256, cfg.model.image_size)
    batch = cfg.train.batch_size
    models, peaks = {}, {}
    for dp in ("off", "on"):
        model = build_model(cfg.model)
        model.setup(records)
        model.opts = model.make_optimizers()
        if dp == "on":
            privatize(
                model, cfg.model_copy(update={"dp": cfg.dp.model_copy(update={"enabled": True})}), batch / len(records)
            )
        model.train()
        sampler = BatchSampler(records, batch, seed=0)
        model.train_step(next(sampler))  # warm-up
        models[dp] = (model, sampler)
        peaks[dp] = peak_rss_mb()
    seconds = {"off": 0.0, "on": 0.0}
    for _ in range(steps):
        for dp, (model, sampler) in models.items():
            b = next(sampler)
            t0 = time.perf_counter()
            model.train_step(b)
            seconds[dp] += time.perf_counter() - t0
    return {"images_per_s": {dp: steps * batch / t for dp, t in seconds.items()}, "batch": batch, "peak_rss_mb": peaks}


class PerStudyBCE:
    """Binary cross-entropy averaged over the 14 labels first, so a study is one privacy unit;
    Opacus' ghost clipping sets `reduction` to "none" to get one loss per sample."""

    reduction = "mean"

    def __call__(self, logits, target):
        import torch.nn.functional as F

        per_study = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
        return per_study if self.reduction == "none" else per_study.mean()


def one_classifier(steps: int) -> dict:
    """The evaluation classifier non-private, with Opacus hooks and with ghost clipping, interleaved."""
    import time

    import numpy as np
    import torch
    from opacus import PrivacyEngine

    torch.set_num_threads(1)
    from cxrsynth.data.transforms import images_to_tensor
    from cxrsynth.eval.classifier import CXRClassifier

    records = phantom_records(256, 64)
    x = images_to_tensor([r.image for r in records], 64)
    y = torch.as_tensor(np.stack([r.label_vector() for r in records]))
    batch = 32
    g = torch.Generator().manual_seed(0)
    steppers = {}
    for mode in ("off", "hooks", "ghost"):
        torch.manual_seed(0)
        model = CXRClassifier(16, 64)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        criterion = PerStudyBCE()
        if mode != "off":
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
            kwargs = {"grad_sample_mode": "ghost"} if mode == "ghost" else {}
            out = PrivacyEngine().make_private(
                module=model,
                optimizer=opt,
                data_loader=loader,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                criterion=criterion,
                poisson_sampling=False,
                **kwargs,
            )
            model, opt = out[0], out[1]
            if mode == "ghost":
                criterion = out[2]  # ghost mode returns (module, optimizer, criterion, loader)

        def step(model=model, opt=opt, criterion=criterion):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            loss = criterion(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()  # warm-up
        steppers[mode] = step
    seconds = dict.fromkeys(steppers, 0.0)
    for _ in range(steps):
        for mode, step in steppers.items():
            t0 = time.perf_counter()
            step()
            seconds[mode] += time.perf_counter() - t0
    return {"images_per_s": {m: steps * batch / t for m, t in seconds.items()}, "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results/bench_train.json")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        kind, *rest = args.child
        res = one_family(rest[0], rest[1], int(rest[2])) if kind == "family" else one_classifier(int(rest[0]))
        print(json.dumps(res))
        return 0
    steps = 3 if args.quick else 10
    rows = []
    for family in registry.names():
        for size in SIZES:
            r = child(__file__, "family", family, size, str(steps))
            if "error" in r:
                rows.append({"name": f"train {family} {size}", "value": None, "unit": "images/s", "note": r["error"]})
                continue
            ips = r["images_per_s"]
            for dp in ("off", "on"):
                held = " (process also holds the DP-off model)" if dp == "on" else ""
                rows.append(
                    {
                        "name": f"train {family} {size} DP {dp}",
                        "value": round(ips[dp], 2),
                        "unit": "images/s",
                        "peak_rss_mb": round(r["peak_rss_mb"][dp]),
                        "note": f"batch {r['batch']}, {steps} steps interleaved with the other mode{held}",
                    }
                )
            rows.append(
                {
                    "name": f"DP overhead {family} {size}",
                    "value": round(ips["off"] / ips["on"], 2),
                    "unit": "x slower",
                    "note": "non-private / DP-SGD throughput, same process",
                }
            )
    r = child(__file__, "classifier", str(steps * 3))
    if "error" in r:
        rows.append({"name": "eval classifier 64px", "value": None, "unit": "images/s", "note": r["error"]})
    else:
        ips = r["images_per_s"]
        for mode in ("off", "hooks", "ghost"):
            rows.append(
                {
                    "name": f"train eval classifier 64px DP {mode}",
                    "value": round(ips[mode], 2),
                    "unit": "images/s",
                    "note": f"batch 32, {steps * 3} steps interleaved; peak {r['peak_rss_mb']:.0f} MB for all three",
                }
            )
        for mode in ("hooks", "ghost"):
            rows.append(
                {
                    "name": f"DP overhead eval classifier ({mode})",
                    "value": round(ips["off"] / ips[mode], 2),
                    "unit": "x slower",
                    "note": "non-private / DP-SGD, Opacus "
                    + ("per-sample gradient hooks" if mode == "hooks" else "ghost clipping"),
                }
            )
    write(args.out, "train", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
