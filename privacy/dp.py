"""DP-SGD per site with Opacus, and the privacy ledger that travels with every update.

`privatize(model, cfg, sample_rate, history)` wraps, in place, each network of `model.nets` that
reads real data in an Opacus `GradSampleModule` and its optimizer in a `DPOptimizer`; the other
networks (a GAN generator, which only sees the discriminator's verdicts) are post-processing of
DP outputs and stay as they are. The accountant counts one step per sampled batch, at the joint
noise of every real-data network's release on that batch (see `privatize`).

The accountant's history `[(noise_multiplier, sample_rate, steps), ...]` is the whole privacy
state of a site. It is passed in (from the node's persistent state across rounds, or from the
ledger file a site keeps across runs) and returned in every ledger entry, so epsilon accumulates
over rounds and runs instead of starting again at zero each round.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from opacus import GradSampleModule
from opacus.accountants import create_accountant
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.grad_sample.utils import register_grad_sampler
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from cxrsynth.config import DPConfig, RunConfig
from cxrsynth.errors import InputError, SiteRefused
from cxrsynth.models.base import GenerativeModel, unwrap
from cxrsynth.privacy.bookkeeping import BookkeepingDPOptimizer, BookkeepingGradSampleModule

History = list[tuple[float, float, int]]


@register_grad_sampler([nn.Conv1d, nn.Conv2d, nn.Conv3d])
def _conv_grad_sample(layer, activations, backprops):
    # Opacus 1.6's convolution grad sampler unfolds its input as if it were contiguous; torch's
    # CPU kernels hand channels-last inputs to some of the LDM VAE's convolutions, for which it
    # returned wrong per-sample gradients (zeros, or sums over other records' pixels).
    return compute_conv_grad_sample(layer, [a.contiguous() for a in activations], backprops.contiguous())


def epsilon_of(history: Sequence[Sequence[float]], dp: DPConfig) -> float:
    """Epsilon at `dp.delta` spent by a site with this accountant history (0 with no steps)."""
    if not history:
        return 0.0
    acc = create_accountant(dp.accountant)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(acc.get_epsilon(delta=dp.delta))


def _merge(history: History, noise: float, rate: float, steps: int) -> History:
    # Opacus' RDP accountant merges equal (sigma, q) entries the same way; keeps ledgers short.
    out = [tuple(h) for h in history]
    if out and out[-1][0] == noise and out[-1][1] == rate:
        out[-1] = (noise, rate, out[-1][2] + steps)
    else:
        out.append((noise, rate, steps))
    return [(float(s), float(q), int(n)) for s, q, n in out]


def check_budget(
    history: History, dp: DPConfig, sample_rate: float, planned_steps: int, site: str = "this site"
) -> float:
    """Refuse (CheckFailed) when `planned_steps` more noisy steps would take the site past its budget.

    Returns the epsilon the site would have spent afterwards.
    """
    after = epsilon_of(_merge(history, dp.noise_multiplier, sample_rate, planned_steps), dp)
    if dp.epsilon_budget is not None and after > dp.epsilon_budget:
        spent = epsilon_of(history, dp)
        raise SiteRefused(
            f"{site} refuses to train: its privacy budget is epsilon {dp.epsilon_budget:g} at delta {dp.delta:g}; "
            f"it has spent {spent:.3f} and this round's {planned_steps} noisy steps (noise multiplier "
            f"{dp.noise_multiplier:g}, sample rate {sample_rate:.4f}) would bring it to {after:.3f}. "
            "Stop the run, or raise dp.epsilon_budget / dp.noise_multiplier knowingly."
        )
    return after


def _validate(name: str, net) -> None:
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        details = "; ".join(str(e) for e in errors[:3])
        raise InputError(
            f"network {name!r} cannot be trained with DP-SGD: {details}. Per-sample gradients need layers "
            "that treat samples independently: use GroupNorm or LayerNorm instead of BatchNorm (or "
            "opacus.validators.ModuleValidator.fix), and no in-place tricks over the batch dimension."
        )


def effective_noise(multipliers: Sequence[float]) -> float:
    """The noise multiplier of one Gaussian release equal to several on the same batch.

    k releases of per-sample-clipped gradients (bound C_i, noise sigma_i * C_i) computed on one
    sampled batch are one Gaussian mechanism on their concatenation: rescaling each part by
    1/(sigma_i C_i) gives unit noise and sensitivity sqrt(sum 1/sigma_i^2), so the joint noise
    multiplier is (sum 1/sigma_i^2) ** -1/2, sigma / sqrt(k) when all are equal.
    """
    if any(float(s) <= 0 for s in multipliers):
        return 0.0
    # Rounded, so sigma * sqrt(k) over k releases gives back sigma and ledger entries merge.
    return round(sum(1.0 / float(s) ** 2 for s in multipliers) ** -0.5, 9)


def privatize(
    model: GenerativeModel,
    cfg: RunConfig,
    sample_rate: float,
    history: Optional[History] = None,
    ledger_file: Optional[Path] = None,
) -> Callable[[], dict]:
    """Wrap the real-data networks of `model` for DP-SGD in place; return the ledger callable.

    `model.opts` must exist (call `model.make_optimizers()` first). `history` is the site's
    accountant history so far. Calling the returned function gives the current ledger entry.
    `ledger_file`: the site's ledger on disk (single-site `cxrsynth train`): the accounting
    starts from it when it records more steps than `history` (another run on the same data), and
    every ledger entry is written back to it, so a new `--out` does not start again at epsilon 0.

    Accounting is per sampled batch, not per optimizer step. Every real-data network that steps
    on a batch releases a noisy gradient of the same Poisson sample, so the batch's releases
    are one subsampled Gaussian mechanism, not independent ones (counting them as independent
    would credit each with its own subsampling and understate epsilon). Each of the k networks
    stepping on a batch (`model.nets_stepping()`) gets noise multiplier sigma * sqrt(k), so the
    batch as a whole is released with the configured `dp.noise_multiplier` sigma; the
    accountant then counts one step at the joint multiplier of the releases that actually
    happened (`effective_noise`).
    """
    dp = cfg.dp
    if not 0.0 < sample_rate <= 1.0:
        raise InputError(
            f"DP sample rate must be in (0, 1], got {sample_rate}; check train.batch_size and the dataset size."
        )
    if not model.opts:
        raise InputError("privatize() needs the model's optimizers; call model.make_optimizers() first.")
    # A network frozen whole (train.finetune) releases nothing, so it needs neither clipping nor noise.
    real = [
        name
        for name in model.nets
        if model.reads_real_data(name) and any(p.requires_grad for p in model.nets[name].parameters())
    ]
    if not real:
        raise InputError(
            f"{model.family}: no network is marked as reading real data, so DP-SGD would protect nothing."
        )
    if "train_step" in vars(model):
        raise InputError(
            "privatize() was already applied to this model; a second accountant would count every batch twice."
        )
    spent: History = [(float(s), float(q), int(n)) for s, q, n in (history or [])]
    on_disk = read_ledger_file(ledger_file)
    if sum(n for _, _, n in on_disk) > sum(n for _, _, n in spent):
        spent = on_disk
    releases: list[float] = []  # noise multipliers of this batch's releases so far

    def hook(optim: DPOptimizer) -> None:
        # Runs after clipping and noising, before the update: raising here leaves the weights
        # untouched, so no release past the budget is ever applied, whatever the round's estimate was.
        if dp.epsilon_budget is not None:
            joint = effective_noise([*releases, optim.noise_multiplier])
            nxt = epsilon_of(_merge(spent, joint, sample_rate, 1), dp)
            if nxt > dp.epsilon_budget:
                raise SiteRefused(
                    f"privacy budget reached: one more noisy step would spend epsilon {nxt:.3f} > budget "
                    f"{dp.epsilon_budget:g} at delta {dp.delta:g}; training stops here."
                )
        releases.append(optim.noise_multiplier)

    # The loop samples each record with rate batch_size / n, so the expected batch is the
    # configured batch size; Opacus divides the noisy gradient sum by it.
    expected_batch = cfg.train.batch_size
    bookkeeping = dp.grad_sample == "bookkeeping"
    wrapper = BookkeepingGradSampleModule if bookkeeping else GradSampleModule
    for name in real:
        net = unwrap(model.nets[name])
        _validate(name, net)
        if not isinstance(model.nets[name], GradSampleModule):
            model.nets[name] = wrapper(net, force_functorch=dp.grad_sample == "functorch")
        opt = model.opts[name]
        if not isinstance(opt, DPOptimizer):
            opt = (BookkeepingDPOptimizer if bookkeeping else DPOptimizer)(
                opt,
                noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm,
                expected_batch_size=expected_batch,
            )
            if not dp.seeded_noise:
                opt.generator = entropy_generator(next(net.parameters()).device)
            model.opts[name] = opt
        opt.attach_step_hook(hook)

    def accounted(step):
        """`step` with its batch's releases counted as one step of the accountant."""

        def run(*args):
            stepping = [n for n in model.nets_stepping() if n in real]
            for n in stepping:
                model.opts[n].noise_multiplier = dp.noise_multiplier * len(stepping) ** 0.5
            releases.clear()
            try:
                return step(*args)
            finally:
                if releases:
                    spent[:] = _merge(spent, effective_noise(releases), sample_rate, 1)
                releases.clear()

        return run

    # A data-parallel rank with no record of a batch releases its share of the batch's noisy
    # gradients through `empty_share_step`: the same batch, counted the same way.
    model.train_step = accounted(model.train_step)
    model.empty_share_step = accounted(model.empty_share_step)

    def ledger() -> dict:
        entry = ledger_entry(spent, dp, dp.noise_multiplier, sample_rate, real)
        write_ledger_file(ledger_file, entry)
        return entry

    return ledger


def entropy_generator(device) -> torch.Generator:
    """A generator for DP noise seeded from the operating system's entropy: the run's seed is known
    to the coordinator, who could otherwise draw a site's noise again and take it off its update."""
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


def ledger_entry(history: History, dp: DPConfig, noise: float, sample_rate: float, networks: list[str]) -> dict:
    """A site's ledger entry: its whole accountant history, the epsilon it gives, and the last release's settings."""
    hist = [(float(s), float(q), int(n)) for s, q, n in history]
    return {
        "noise_multiplier": float(noise),
        "max_grad_norm": dp.max_grad_norm,
        "sample_rate": float(sample_rate),
        "steps": int(sum(n for _, _, n in hist)),
        "epsilon": epsilon_of(hist, dp),
        "delta": dp.delta,
        "accountant": dp.accountant,
        "epsilon_budget": dp.epsilon_budget,
        "networks": list(networks),
        "privacy_unit": dp.privacy_unit,
        "history": hist,
    }


def gaussian_release(history: History, dp: DPConfig, noise_multiplier: float, site: str = "this site") -> History:
    """The accountant history after one release of the Gaussian mechanism on the whole data (a
    sum whose per-unit sensitivity is the clipping bound, noise `noise_multiplier` times it):
    one step at sample rate 1. SiteRefused when it would pass the budget."""
    after = _merge(history, noise_multiplier, 1.0, 1)
    eps = epsilon_of(after, dp)
    if dp.epsilon_budget is not None and eps > dp.epsilon_budget:
        raise SiteRefused(
            f"privacy budget: {site} would spend epsilon {eps:.3f} > budget {dp.epsilon_budget:g} at delta {dp.delta:g} on this release; it is not made."
        )
    return after


# ---- the ledger a site keeps on its own disk, across runs -------------------------------------
def read_ledger_file(path: Optional[Path]) -> History:
    if path is None or not Path(path).is_file():
        return []
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return [(float(s), float(q), int(n)) for s, q, n in data["history"]]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"{path}: the site's privacy ledger is unreadable ({e}); it records the epsilon already spent, "
            "so training cannot continue safely without it. Restore it from backup."
        ) from None


def write_ledger_file(path: Optional[Path], entry: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(entry, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
