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

from common import child, model_config, peak_rss_mb, phantom_records, timed, write

FAMILIES = ("emixer", "ldm", "mopoe")
SIZES = ("tiny", "mid")


def one_family(family: str, size: str, dp: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from cxrsynth.models import build_model
    from cxrsynth.train import BatchSampler

    cfg = model_config(family, size)
    if dp == "on":
        cfg = cfg.model_copy(update={"dp": cfg.dp.model_copy(update={"enabled": True})})
    records = phantom_records(256, cfg.model.image_size)
    model = build_model(cfg.model)
    model.setup(records)
    model.opts = model.make_optimizers()
    batch = cfg.train.batch_size
    if dp == "on":
        from privacy.dp import privatize

        privatize(model, cfg, batch / len(records))
    model.train()
    sampler = BatchSampler(records, batch, seed=0)
    per_step = timed(lambda: model.train_step(next(sampler)), steps)
    return {"images_per_s": batch / per_step, "batch": batch, "peak_rss_mb": peak_rss_mb()}


class PerStudyBCE:
    """Binary cross-entropy averaged over the 14 labels first, so a study is one privacy unit;
    Opacus' ghost clipping sets `reduction` to "none" to get one loss per sample."""

    reduction = "mean"

    def __call__(self, logits, target):
        import torch.nn.functional as F

        per_study = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
        return per_study if self.reduction == "none" else per_study.mean()


def one_classifier(mode: str, steps: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from cxrsynth.data.transforms import images_to_tensor
    from cxrsynth.eval.classifier import CXRClassifier

    records = phantom_records(256, 64)
    x = images_to_tensor([r.image for r in records], 64)
    y = torch.as_tensor(np.stack([r.label_vector() for r in records]))
    model = CXRClassifier(16, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = 32
    criterion = PerStudyBCE()
    if mode != "off":
        from opacus import PrivacyEngine

        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
        engine = PrivacyEngine()
        kwargs = {"grad_sample_mode": "ghost"} if mode == "ghost" else {}
        out = engine.make_private(module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, criterion=criterion, poisson_sampling=False, **kwargs)
        model, opt = out[0], out[1]
        if mode == "ghost":
            criterion = out[2]  # ghost mode returns (module, optimizer, criterion, loader)
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = criterion(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    per_step = timed(step, steps)
    return {"images_per_s": batch / per_step, "batch": batch, "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results/bench_train.json")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        kind, *rest = args.child
        res = one_family(rest[0], rest[1], rest[2], int(rest[3])) if kind == "family" else one_classifier(rest[0], int(rest[1]))
        print(json.dumps(res))
        return 0
    steps = 3 if args.quick else 10
    rows = []
    for family in FAMILIES:
        for size in SIZES:
            got = {dp: child(__file__, "family", family, size, dp, str(steps)) for dp in ("off", "on")}
            for dp, r in got.items():
                name = f"train {family} {size} DP {dp}"
                if "error" in r:
                    rows.append({"name": name, "value": None, "unit": "images/s", "note": r["error"]})
                else:
                    rows.append({"name": name, "value": round(r["images_per_s"], 2), "unit": "images/s", "peak_rss_mb": round(r["peak_rss_mb"]), "note": f"batch {r['batch']}, {steps} steps"})
            if all("error" not in r for r in got.values()):
                rows.append({"name": f"DP overhead {family} {size}", "value": round(got["off"]["images_per_s"] / got["on"]["images_per_s"], 2), "unit": "x slower", "note": "non-private / DP-SGD throughput, same run"})
    cls = {mode: child(__file__, "classifier", mode, str(steps * 3)) for mode in ("off", "hooks", "ghost")}
    for mode, r in cls.items():
        name = f"eval classifier 64px DP {mode}"
        rows.append({"name": name, "value": None if "error" in r else round(r["images_per_s"], 2), "unit": "images/s", "note": r.get("error", f"batch 32, peak {r.get('peak_rss_mb', 0):.0f} MB")})
    if all("error" not in r for r in cls.values()):
        for mode in ("hooks", "ghost"):
            rows.append({"name": f"DP overhead eval classifier ({mode})", "value": round(cls["off"]["images_per_s"] / cls[mode]["images_per_s"], 2), "unit": "x slower", "note": "Opacus per-sample gradients vs ghost clipping"})
    write(args.out, "train", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
