"""How much of the sites' signal a DP-SGD step of an LDM fine-tuning carries, per parameter group.

    .venv/bin/python benchmarks/bench_dp_signal.py --base BASE_DIR [--records 128] [--draws 1,4]
        [--groups 'unet=unet.*' 'attention=unet.*attentions*' ...] [--noise-multiplier 1.32] [--batch 32]

For a base (`cxrsynth pretrain`) and phantom hospital records it did not see, each record's
gradient of the diffusion loss is computed alone (the mean over `draws` (timestep, noise) draws,
as `model.noise_draws` does), for the parameters of each group. Per group it reports:

- the records' gradient norms (median, and the spread q90 / q10): the clipping bound C that
  clips about half of them is the median;
- the signal: the norm of the expected clipped gradient at C = that median, estimated without
  bias as the square root of the dot product of the mean clipped gradients of two halves of the
  records (their noise does not correlate);
- the noise of one DP-SGD step at that C: sigma * C / batch per weight, sqrt(weights) of them;
- signal / noise per step. Over T steps at S sites the signal adds up T * S times and the noise
  sqrt(T * S) times, so sqrt(T * S) * (signal / noise) says whether fine-tuning can move the
  weights toward the sites' data at all, or only shakes them.

No DP step is taken and nothing is written; the records are phantom hospitals (sites 0..2).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

DEFAULT_GROUPS = (
    "unet=unet.*",
    "unet+text=unet.*,text_encoder.*",
    "biases+norms=unet.*norm*,unet.*bias",
    "attention=unet.*attentions*",
    "attention q/k/v/out=unet.*attn*.to_*",
    "resnets=unet.*resnets*",
    "label embedding=unet.class_embedding.*",
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="a base checkpoint folder (cxrsynth pretrain) of the ldm family")
    p.add_argument("--records", type=int, default=128, help="phantom hospital records to take gradients on")
    p.add_argument("--draws", default="1,4", help="comma-separated (timestep, noise) draws per record")
    p.add_argument("--groups", nargs="+", default=list(DEFAULT_GROUPS), metavar="NAME=GLOB[,GLOB]")
    p.add_argument("--noise-multiplier", type=float, default=1.32, help="sigma (the demo's at epsilon 8: 1.32)")
    p.add_argument("--batch", type=int, default=32, help="expected batch size of a DP step")
    p.add_argument("--steps", type=int, default=40, help="DP steps a site takes (the demo: 2 rounds x 20)")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from cxrsynth.checkpoint import load_checkpoint
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.models.ldm import prompts as P

    model, _, _ = load_checkpoint(Path(a.base))
    if model.family != "ldm":
        raise SystemExit(f"{a.base}: a {model.family} base; this benchmark measures the ldm family")
    model.start_fine_tuning()
    model.train()
    cfg = model.config
    records = make_phantom(a.records, sites=3, seed=a.seed + 11, image_size=cfg.image_size, lateral=False)
    params = {f"{n}.{k}": q for n, net in model.nets.items() for k, q in net.named_parameters() if q.requires_grad}
    groups = {}
    for spec in a.groups:
        name, _, globs = spec.partition("=")
        groups[name] = [k for k in params if any(fnmatch.fnmatchcase(k, g) for g in globs.split(","))]
        if not groups[name]:
            raise SystemExit(f"group {name!r}: no parameter matches {globs!r}")
    over = (a.steps * a.sites) ** 0.5
    print(
        f"base {a.base}: {a.records} phantom hospital records, sigma {a.noise_multiplier}, batch {a.batch}, "
        f"{a.steps} steps x {a.sites} sites\n"
    )
    print(
        "| draws | group | weights | median norm (C) | q90 / q10 | signal | noise a step | signal / noise | x sqrt(steps x sites) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for draws in (int(d) for d in a.draws.split(",")):
        torch.manual_seed(a.seed)
        rows = {name: [] for name in groups}
        for r in records:
            for q in params.values():
                q.grad = None
            x = model._images([r])
            ids, mask, _ = model._tokens([P.training_prompt(r, cfg.prompt_section)])
            classes = model._classes([r.labels])
            latents = model._latents(x)
            for _ in range(draws):
                noise = torch.randn_like(latents)
                t = torch.randint(0, cfg.train_timesteps, (1,))
                hidden = model._text_states(ids, mask)
                pred = model.nets["unet"](
                    model.noise.add_noise(latents, noise, t), t, encoder_hidden_states=hidden, class_labels=classes
                ).sample
                (F.mse_loss(pred, noise) / draws).backward()
            for name, keys in groups.items():
                rows[name].append(
                    torch.cat(
                        [
                            params[k].grad.flatten()
                            if params[k].grad is not None
                            else params[k].new_zeros(params[k].numel())
                            for k in keys
                        ]
                    )
                )
        for name, grads in rows.items():
            g = torch.stack(grads)
            norms = g.norm(dim=1)
            c = float(norms.median())
            clipped = g * torch.clamp(c / norms.clamp_min(1e-12), max=1.0)[:, None]
            half = len(clipped) // 2
            signal = max(float(clipped[:half].mean(0) @ clipped[half:].mean(0)), 0.0) ** 0.5
            noise = a.noise_multiplier * c / a.batch * g.shape[1] ** 0.5
            spread = float(norms.quantile(0.9) / norms.quantile(0.1).clamp_min(1e-12))
            print(
                f"| {draws} | {name} | {g.shape[1]:,} | {c:.4f} | {spread:.1f} | {signal:.4f} | {noise:.3f} | "
                f"{signal / noise:.4f} | {over * signal / noise:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
