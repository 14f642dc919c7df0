"""The aggregation strategy, chosen by `federation.strategy`, and its state for `--resume`.

A GAN's generator and discriminators travel in one ArrayRecord (`model.state()` prefixes each
network's weights with its name), so every strategy aggregates all of them alike.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from cxrsynth.config import FederationConfig

# Server state a strategy carries from round to round: FedAdam's moments (Reddi et al. 2021,
# Alg. 2) and the adaptive clipping norm (Andrew et al. 2021). Lost state would change the run.
_ARRAY_STATE = ("m_t", "v_t")
_SCALAR_STATE = ("clipping_norm",)


def make_strategy(fed: FederationConfig) -> Strategy:
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=fed.min_sites,
        min_evaluate_nodes=fed.min_sites,
        min_available_nodes=fed.min_sites,
    )
    if fed.strategy == "fedavg":
        strategy: Strategy = FedAvg(**common)
    elif fed.strategy == "fedprox":
        strategy = FedProx(**common, proximal_mu=fed.proximal_mu)
    else:
        # eta is the server learning rate; tau keeps the first rounds' steps bounded (Reddi et al. 2021, sec. 5).
        strategy = FedAdam(**common, eta=fed.server_lr, eta_l=fed.server_lr, tau=1e-3)
    if fed.client_dp == "fixed":
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, fed.client_dp_noise, fed.client_dp_clip, num_sampled_clients=fed.min_sites
        )
    elif fed.client_dp == "adaptive":
        strategy = DifferentialPrivacyServerSideAdaptiveClipping(
            strategy, fed.client_dp_noise, num_sampled_clients=fed.min_sites, initial_clipping_norm=fed.client_dp_clip
        )
    return strategy


def _layers(strategy: Strategy):
    while strategy is not None:
        yield strategy
        strategy = getattr(strategy, "strategy", None)


def strategy_state(strategy: Strategy) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Arrays (prefixed `m_t.`, `v_t.`) and scalars that the strategy needs to continue a run."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, float] = {}
    for layer in _layers(strategy):
        for attr in _ARRAY_STATE:
            for k, v in (getattr(layer, attr, None) or {}).items():
                arrays[f"{attr}.{k}"] = np.asarray(v)
        for attr in _SCALAR_STATE:
            if isinstance(getattr(layer, attr, None), (int, float)):
                scalars[attr] = float(getattr(layer, attr))
    return arrays, scalars


def load_strategy_state(strategy: Strategy, arrays: dict[str, np.ndarray], scalars: dict[str, float]) -> None:
    for layer in _layers(strategy):
        for attr in _ARRAY_STATE:
            if hasattr(layer, attr):
                part = {k[len(attr) + 1 :]: v for k, v in arrays.items() if k.startswith(attr + ".")}
                setattr(layer, attr, part or None)
        for attr in _SCALAR_STATE:
            if attr in scalars and hasattr(layer, attr):
                setattr(layer, attr, scalars[attr])
