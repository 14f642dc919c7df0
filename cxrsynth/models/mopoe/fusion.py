"""Mixture of products of experts (Sutter, Daunhawer and Vogt, "Generalized Multimodal ELBO", ICLR 2021).

Each subset S of the modalities a record has gets the product of its unimodal Gaussian experts
and the prior expert N(0, I) (Sec. 3, eq. 4); the joint posterior is the uniform mixture of the
subset posteriors (eq. 5). The KL term of the ELBO is the mixture weights times the subsets' KLs,
the upper bound the paper optimises.

A model's modalities are the paper's three (frontal, lateral, report) by default, or any set
with the frontal image (`MoPoEConfig.modalities`); the functions here take the model's own,
in the order its experts are listed.
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch

MODALITIES = ("frontal", "lateral", "report")  # the paper's three
ALL_MODALITIES = MODALITIES + ("labels",)
LETTERS = {"frontal": "F", "lateral": "L", "report": "T", "labels": "Y"}
# The order and names of the subsets in Table 1 of Klug, Sutter and Vogt.
TABLE_ORDER = ("F", "L", "T", "LF", "FT", "LT", "LFT")
_CANONICAL = "LFTY"


def subset_name(subset: Sequence[str]) -> str:
    """('frontal', 'report') -> 'FT', spelled as in the paper's table."""
    letters = {LETTERS[m] for m in subset}
    return "".join(c for c in _CANONICAL if c in letters)


def subsets_of(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of `modalities`, smallest first, in the order given."""
    mods = tuple(modalities)
    return [c for k in range(1, len(mods) + 1) for c in combinations(mods, k)]


SUBSETS: list[tuple[str, ...]] = subsets_of(MODALITIES)
BY_NAME: dict[str, tuple[str, ...]] = {subset_name(s): s for s in subsets_of(ALL_MODALITIES)}


def product_of_experts(
    mus: torch.Tensor, logvars: torch.Tensor, mask: torch.Tensor, prior: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision-weighted product of the masked experts and (by default) the prior expert N(0, I).

    mus, logvars: (E, B, D); mask: (E, B), 1 where expert e takes part for record b.
    Returns (mu, logvar) of shape (B, D).
    """
    precision = torch.exp(-logvars) * mask[..., None]
    total = float(prior) + precision.sum(0)
    mu = (mus * precision).sum(0) / total
    return mu, -torch.log(total)


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def subset_posteriors(
    mus: dict[str, torch.Tensor], logvars: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
):
    """PoE posterior of every subset for every record.

    `mus`, `logvars`: one (B, D) entry per modality of the model, in its order. `present[m]` is a
    (B,) float mask of records that have modality m. Returns (mu, logvar) of shape (B, K, D) over
    the K subsets of those modalities (`subsets_of`), and `valid` (B, K): 1 where the record has
    every modality of the subset.
    """
    mods = tuple(mus)
    stack_mu = torch.stack([mus[m] for m in mods])
    stack_lv = torch.stack([logvars[m] for m in mods])
    out_mu, out_lv, valid = [], [], []
    for subset in subsets_of(mods):
        sel = torch.tensor([m in subset for m in mods], dtype=stack_mu.dtype, device=stack_mu.device)
        mask = sel[:, None] * torch.stack([present[m] for m in mods])
        mu, lv = product_of_experts(stack_mu, stack_lv, mask)
        out_mu.append(mu)
        out_lv.append(lv)
        valid.append(torch.stack([present[m] for m in subset]).prod(0))
    return torch.stack(out_mu, 1), torch.stack(out_lv, 1), torch.stack(valid, 1)


def mixture_sample(
    mu: torch.Tensor, logvar: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One reparameterised sample per record from the uniform mixture of its valid subset posteriors."""
    b = mu.shape[0]
    if b == 0:
        return mu[:, 0]
    # A record with no modality at all has no valid subset; it draws any (its terms are masked).
    weights = valid + (valid.sum(1, keepdim=True) == 0).float()
    pick = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    rows = torch.arange(b, device=mu.device)
    m, lv = mu[rows, pick], logvar[rows, pick]
    eps = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
    return m + torch.exp(0.5 * lv) * eps


def mixture_kl(mu: torch.Tensor, logvar: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Uniform-mixture weights times each valid subset's KL to the prior, per record (B,)."""
    weights = valid / valid.sum(1, keepdim=True).clamp_min(1.0)
    return (weights * kl_to_prior(mu, logvar)).sum(1)
