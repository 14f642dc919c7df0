"""Book-keeping DP-SGD (privacy/bookkeeping.py) releases the clipped gradient sum Opacus' hooks release.

Without noise, a DP optimizer steps with sum_i c_i grad_i / B. Each comparison sets every
network's clip bound to the median of its records' gradient norms (measured with the hooks), so
half the records are clipped and half are not.
"""

import copy

import pytest
import torch
from opacus import GradSampleModule
from opacus.layers import DPLSTM
from opacus.optimizers import DPOptimizer
from torch import nn

from cxrsynth.config import load_config
from cxrsynth.data.phantom import make_phantom
from cxrsynth.models import build_model
from cxrsynth.privacy.bookkeeping import BookkeepingDPOptimizer, BookkeepingGradSampleModule, recorded_parts
from cxrsynth.privacy.dp import privatize
from cxrsynth.train import seed_everything


def _record_norms(opt: DPOptimizer, into: list) -> None:
    """Keep the per-record gradient norms a hooks optimizer clips (before it clips them)."""
    clip = opt.clip_and_accumulate

    def clip_and_record():
        norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in opt.grad_samples], 1).norm(dim=1)
        into.append(norms)
        clip()

    opt.clip_and_accumulate = clip_and_record


def _keep_step_grads(opt: DPOptimizer, params: dict, into: dict) -> None:
    """The gradient each step is taken with (a family may clear it after its step)."""
    step = opt.original_optimizer.step

    def step_and_keep(*args, **kwargs):
        into.update({k: p.grad.clone() for k, p in params.items() if p.grad is not None})
        return step(*args, **kwargs)

    opt.original_optimizer.step = step_and_keep


def _assert_same_clipped_sum(hooks: dict, bookkeeping: dict) -> None:
    assert hooks and hooks.keys() == bookkeeping.keys()
    scale = max(g.abs().max().item() for g in hooks.values())
    for k, g in hooks.items():
        torch.testing.assert_close(bookkeeping[k], g, rtol=1e-4, atol=1e-5 * scale, msg=k)


def _straddles(norms: torch.Tensor, bound: float) -> bool:
    return bool((norms > bound * 1.001).any() and (norms < bound * 0.999).any())


# ---- every layer type, on its own small network ------------------------------------------------
class EveryLayer(nn.Module):
    """One of each layer type the families use, in the ways they use them."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(12, 6)  # 12 rows <= T^2: each record's gradient
        self.words = nn.Embedding(300, 6)  # 300 rows > T^2: ghost norm
        self.lstm = DPLSTM(6, 8, batch_first=True)  # its RNNLinear cells run once per position
        self.per_position = nn.Linear(8, 8)  # T = 5 positions: each record's gradient
        self.widen = nn.Linear(8, 64)  # T = 2 positions: ghost norm
        self.norm = nn.LayerNorm(8)
        self.conv1d = nn.Conv1d(8, 8, 2, dilation=2)  # 3 positions, 16 inputs, 8 outputs: ghost norm
        self.conv1d_direct = nn.Conv1d(8, 4, 3, padding=1)  # 5 positions, 24 inputs, 4 outputs: each record's
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.group_norm = nn.GroupNorm(2, 8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.reflect = nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect")  # no formula: Opacus' path
        self.squeeze = nn.Conv2d(4, 32, 3, stride=2, padding=1)  # 2 x 4 positions, 36 inputs, 32 outputs: ghost
        self.head = nn.Linear(32 * 2 * 2 + 8 + 4 + 64, 3)  # one position: ghost norm
        self.shared = nn.Linear(3, 3)  # called twice: the calls add up per record

    def forward(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.tokens(ids) + self.words(ids * 23 % 300))
        wide = self.widen(h[:, :2]).mean(1)
        h = self.norm(torch.tanh(self.per_position(h)))
        h = torch.cat([self.conv1d(h.transpose(1, 2)).mean(2), self.conv1d_direct(h.transpose(1, 2)).mean(2)], 1)
        # channels-last, as torch's CPU kernels hand some of the LDM VAE's convolutions their input
        x = torch.relu(self.group_norm(self.conv(image))).contiguous(memory_format=torch.channels_last)
        x = self.reflect(torch.relu(self.grouped(x)))
        x = self.squeeze(x) + self.squeeze(x.flip(-1))
        out = self.head(torch.cat([x.flatten(1), h, wide], 1))
        return self.shared(torch.tanh(self.shared(out)))


def _layer_step(wrapper, optimizer, net, batch, bound):
    net = wrapper(net)
    opt = optimizer(
        torch.optim.SGD(net.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=bound,
        expected_batch_size=len(batch[0]),
    )
    norms: list = []
    if optimizer is DPOptimizer:
        _record_norms(opt, norms)
    ids, image, weight = batch
    opt.zero_grad()
    (net(ids, image).pow(2).sum(1) * weight).mean().backward()
    opt.step()
    return {k: p.grad.clone() for k, p in net.named_parameters()}, norms


def test_every_layer_type_gives_the_clipped_sum_of_opacus_hooks():
    torch.manual_seed(0)
    net = EveryLayer()
    # Records' losses weighted over four orders of magnitude: their norms spread on both sides of the bound.
    batch = (torch.randint(0, 12, (8, 5)), torch.randn(8, 1, 8, 8), torch.logspace(-2, 2, 8))
    _, norms = _layer_step(GradSampleModule, DPOptimizer, copy.deepcopy(net), batch, 1e9)
    bound = norms[0].median().item()
    hooks, norms = _layer_step(GradSampleModule, DPOptimizer, copy.deepcopy(net), batch, bound)
    assert _straddles(norms[0], bound)
    bookkeeping, _ = _layer_step(BookkeepingGradSampleModule, BookkeepingDPOptimizer, copy.deepcopy(net), batch, bound)
    _assert_same_clipped_sum(hooks, bookkeeping)
    # Every parameter took part, the reflect-padded convolution through Opacus' per-sample path.
    assert all(g.abs().sum() > 0 for g in bookkeeping.values())
    wrapped = BookkeepingGradSampleModule(copy.deepcopy(net))
    assert not hasattr(wrapped._module.reflect.weight, "_bookkeeping_layer")
    assert hasattr(wrapped._module.lstm.l0.ih.weight, "_bookkeeping_layer")


def test_every_layer_type_gives_each_records_norm_and_the_weighted_sum_of_opacus_per_sample_gradients():
    """Layer by layer, so a small layer's error cannot hide behind the clip factors of the large ones."""
    torch.manual_seed(0)
    net = EveryLayer()
    ids, image, weight = torch.randint(0, 12, (8, 5)), torch.randn(8, 1, 8, 8), torch.logspace(-2, 2, 8)
    per_sample = GradSampleModule(copy.deepcopy(net))
    (per_sample(ids, image).pow(2).sum(1) * weight).mean().backward()
    bookkeeping = BookkeepingGradSampleModule(copy.deepcopy(net))
    (bookkeeping(ids, image).pow(2).sum(1) * weight).mean().backward()
    expected = {k: p.grad_sample for k, p in per_sample._module.named_parameters()}
    names = {id(p): k for k, p in bookkeeping._module.named_parameters()}
    c = torch.rand(8)
    seen = set()
    for layer in bookkeeping._module.modules():
        if not hasattr(layer, "_bookkeeping_calls"):
            continue
        for p, (sq, clipped) in recorded_parts(layer).items():
            gs = expected[names[id(p)]]
            torch.testing.assert_close(sq, gs.flatten(1).pow(2).sum(1), rtol=1e-4, atol=1e-6, msg=names[id(p)])
            torch.testing.assert_close(clipped(c), torch.einsum("i,i...->...", c, gs), rtol=1e-4, atol=1e-6)
            seen.add(names[id(p)])
    assert seen == set(expected) - {"reflect.weight", "reflect.bias"}


def test_an_empty_batch_releases_a_zero_sum():
    torch.manual_seed(0)
    net = BookkeepingGradSampleModule(EveryLayer())
    opt = BookkeepingDPOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=4
    )
    # What GenerativeModel.noise_only_step leaves for an empty Poisson batch ...
    for p in net.parameters():
        p.grad_sample = torch.zeros((0, *p.shape))
    opt.step()
    assert all((p.grad == 0).all() for p in net.parameters())
    # ... and a pass on no records (MoPoE's lateral encoder when no record in the batch has a lateral view).
    opt.zero_grad()
    net(torch.zeros((0, 5), dtype=torch.long), torch.zeros((0, 1, 8, 8))).sum().backward()
    opt.step()
    assert all((p.grad == 0).all() for p in net.parameters())


# ---- each family's tiny preset, through privatize ----------------------------------------------
FAMILIES = {
    "emixer": {},
    "ldm-vae-stage": {},
    "ldm-diffusion-stage": {"model": {"vae_steps": 0}},
    # Three (timestep, noise) draws a record: three calls of every U-Net layer in one step.
    "ldm-noise-draws": {"model": {"vae_steps": 0, "noise_draws": 3}},
    "mopoe": {},
}


def _family_step(case: str, mode: str, bounds: dict | None = None):
    family = case.split("-")[0]
    batch = 6
    cfg = load_config(
        f"{family}-tiny",
        {
            **FAMILIES[case],
            "train": {"batch_size": batch, "num_threads": 1},
            "dp": {"enabled": True, "noise_multiplier": 0.0, "grad_sample": mode},
        },
    )
    records = make_phantom(n=24, sites=1, seed=0, image_size=cfg.model.image_size, lateral=True)
    seed_everything(0)
    model = build_model(cfg.model)
    model.setup(records)
    model.opts = model.make_optimizers()
    privatize(model, cfg, batch / len(records))
    grads: dict = {}
    norms: dict = {}
    for name in model.nets_stepping():
        opt = model.opts[name]
        if bounds is not None:
            opt.max_grad_norm = bounds[name]
        if mode == "hooks":
            _record_norms(opt, norms.setdefault(name, []))
        params = {f"{name}.{k}": p for k, p in model.nets[name].named_parameters() if p.requires_grad}
        _keep_step_grads(opt, params, grads)
    model.train()
    seed_everything(1)
    model.train_step(records[:batch])
    return grads, {n: v[0] for n, v in norms.items()}


@pytest.mark.parametrize("case", list(FAMILIES))
def test_each_family_gets_the_clipped_sum_of_opacus_hooks(case):
    _, norms = _family_step(case, "hooks", bounds=None)
    bounds = {name: n.median().item() for name, n in norms.items()}
    hooks, norms = _family_step(case, "hooks", bounds)
    assert norms and all(_straddles(n, bounds[name]) for name, n in norms.items()), norms
    bookkeeping, _ = _family_step(case, "bookkeeping", bounds)
    _assert_same_clipped_sum(hooks, bookkeeping)


def test_a_records_noise_draws_are_clipped_as_one_record():
    """The draws' mean is the record's gradient: as many clipped gradients as records, not draws."""
    _, norms = _family_step("ldm-noise-draws", "hooks")
    assert norms and all(len(n) == 6 for n in norms.values())


def test_the_noise_has_opacus_scale_for_every_parameter():
    torch.manual_seed(0)
    net = BookkeepingGradSampleModule(nn.Sequential(nn.Linear(60, 80), nn.Linear(80, 50)))
    opt = BookkeepingDPOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.1), noise_multiplier=1.5, max_grad_norm=2.0, expected_batch_size=4
    )
    for p in net.parameters():
        p.grad_sample = torch.zeros((0, *p.shape))
    opt.step()
    for p in net.parameters():
        # An empty batch: the gradient is the noise, std sigma * C, over the expected batch size.
        assert p.grad.std().item() == pytest.approx(1.5 * 2.0 / 4, rel=0.2 if p.numel() < 100 else 0.05)
    flat = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert flat.mean().abs() < 0.05 and len(set(flat.tolist())) == len(flat)


def test_a_layer_whose_input_it_cannot_see_is_refused_rather_than_left_unclipped():
    class KeywordCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(input=x)

    net = BookkeepingGradSampleModule(KeywordCall())
    with pytest.raises(ValueError, match="dp.grad_sample: hooks"):
        net(torch.randn(4, 3, requires_grad=True))
