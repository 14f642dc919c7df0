"""Data-parallel training within a site: 2 gloo processes on this CPU against one process.

A family draws its own noise per record (z, diffusion noise, the reparameterisation), and each
rank draws it for its own records, so a family's weights on 2 ranks match one process's in
distribution, not bit for bit. What must hold exactly is checked on a model that draws nothing
(a linear probe through the real loop, Opacus and the gradient exchange): the same weights as one
process at the same global batch, with DP-SGD on and off. On a real family (MoPoE): both ranks
end with the same weights, and the ledger equals one process's.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cxrsynth.config import load_config
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import LABELS
from cxrsynth.data.transforms import frontal_images
from cxrsynth.models.base import GenerativeModel


class Probe(GenerativeModel):
    """Labels from 16x16 pixels by one linear layer: a model whose step draws no random number."""

    family = "probe"

    def __init__(self):
        super().__init__(None)
        torch.manual_seed(0)
        self.nets["head"] = nn.Linear(16 * 16, len(LABELS))

    def reads_real_data(self, name: str) -> bool:
        return True

    def make_optimizers(self):
        return {"head": torch.optim.Adam(self.nets["head"].parameters(), lr=0.05)}

    def train_step(self, records):
        if not records:
            self.noise_only_step(["head"])
            return {}
        x = frontal_images(records, 16, "cpu", "probe").flatten(1)
        y = torch.as_tensor(np.stack([r.label_vector() for r in records]))
        self.opts["head"].zero_grad(set_to_none=True)
        loss = nn.functional.binary_cross_entropy_with_logits(self.nets["head"](x), y)
        loss.backward()
        self.opts["head"].step()
        return {"loss": loss.item()}


def _records():
    return make_phantom(n=48, sites=1, seed=0, image_size=16, lateral=False)


def _cfg(dp: bool, family: str = "mopoe", grad_sample: str = "hooks", batch_size: int = 8):
    return load_config(
        f"{family}-tiny",
        {
            "dp": {
                "enabled": dp,
                "noise_multiplier": 1.0,
                "max_grad_norm": 1.0,
                "privacy_unit": "study",
                "grad_sample": grad_sample,
                # One process and rank 0 draw the same noise only from the same seed.
                "seeded_noise": True,
            },
            "train": {"batch_size": batch_size},
        },
    )


def _train(
    model_kind: str,
    dp: bool,
    steps: int,
    rank: int = 0,
    world: int = 1,
    grad_sample: str = "hooks",
    batch_size: int = 8,
) -> dict:
    from cxrsynth.models import build_model
    from cxrsynth.privacy.dp import privatize
    from cxrsynth.train import dp_sampling, seed_everything, train_steps

    torch.set_num_threads(1)
    records = _records()
    family = "mopoe" if model_kind == "probe" else model_kind
    cfg = _cfg(dp, family, grad_sample, batch_size)
    seed_everything(0)
    if model_kind == "probe":
        model = Probe()
    else:
        model = build_model(cfg.model)
        model.setup(records)
    model.opts = model.make_optimizers()
    ledger, sampling = None, "shuffle"
    if dp:
        sampling, rate, _ = dp_sampling(records, cfg.train.batch_size, "study")
        ledger = privatize(model, cfg, rate, [])
    # How many records this process stepped on at each step (0: none of the global batch).
    shares: list[int] = []
    train_step, empty_share_step = model.train_step, model.empty_share_step
    model.train_step = lambda records: shares.append(len(records)) or train_step(records)
    model.empty_share_step = lambda: shares.append(0) or empty_share_step()
    torch.manual_seed(1 + (rank if model_kind != "probe" else 0))
    train_steps(
        model,
        records,
        steps=steps,
        batch_size=cfg.train.batch_size,
        seed=3,
        sampling=sampling,
        rank=rank,
        world_size=world,
    )
    return {
        "state": {k: v.tolist() for k, v in model.state().items()},
        "ledger": ledger() if ledger else None,
        "shares": shares,
    }


def _rank(
    rank: int,
    world: int,
    port: int,
    out: str,
    model_kind: str,
    dp: bool,
    steps: int,
    grad_sample: str,
    batch_size: int,
) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _train(model_kind, dp, steps, rank, world, grad_sample, batch_size)
        with open(f"{out}.{rank}", "w", encoding="utf-8") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(
    tmp_path, model_kind: str, dp: bool, steps: int, grad_sample: str = "hooks", batch_size: int = 8
) -> list[dict]:
    out = str(tmp_path / f"{model_kind}-{dp}")
    ranks = mp.spawn(
        _rank, args=(2, _free_port(), out, model_kind, dp, steps, grad_sample, batch_size), nprocs=2, join=False
    )
    # Ranks that wait for an exchange the other never makes would wait for ever.
    limit = 600
    deadline = time.monotonic() + limit
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ranks.processes:
                proc.kill()
            pytest.fail(
                f"the two ranks did not finish in {limit} s: one waits for an exchange the other does not make"
            )
    results = []
    for r in (0, 1):
        with open(f"{out}.{r}", encoding="utf-8") as f:
            results.append(json.load(f))
    return results


@pytest.mark.parametrize(
    "dp, grad_sample",
    [(False, "hooks"), (True, "hooks"), (True, "bookkeeping")],
    ids=["non-private", "dp-sgd", "dp-sgd-bookkeeping"],
)
def test_two_gloo_ranks_reach_the_weights_and_ledger_of_one_process_at_the_same_batch(tmp_path, dp, grad_sample):
    ranks = _two_ranks(tmp_path, "probe", dp, steps=4, grad_sample=grad_sample)
    one = json.loads(json.dumps(_train("probe", dp, steps=4, grad_sample=grad_sample)))
    for r in ranks:
        for k, v in one["state"].items():
            np.testing.assert_allclose(np.array(r["state"][k]), np.array(v), rtol=1e-5, atol=1e-6)
        assert r["ledger"] == one["ledger"]
    # Training moved the weights: the comparison is not between two untouched models.
    assert not np.allclose(np.array(one["state"]["head.weight"]), np.array(Probe().state()["head.weight"]))
    if dp:
        assert (
            one["ledger"]["steps"] == 4
            and one["ledger"]["epsilon"] > 0
            and one["ledger"]["sample_rate"] == pytest.approx(8 / 48)
        )


@pytest.mark.parametrize("grad_sample", ["hooks", "bookkeeping"])
def test_a_family_on_two_ranks_keeps_one_set_of_weights_and_the_ledger_of_one_process(tmp_path, grad_sample):
    ranks = _two_ranks(tmp_path, "mopoe", True, steps=3, grad_sample=grad_sample)
    assert ranks[0]["state"] == ranks[1]["state"]
    one = json.loads(json.dumps(_train("mopoe", True, steps=3, grad_sample=grad_sample)))
    assert ranks[0]["ledger"] == ranks[1]["ledger"] == one["ledger"]
    assert set(ranks[0]["state"]) == set(one["state"])


def test_an_emixer_rank_that_draws_no_record_of_a_batch_still_steps_with_the_other(tmp_path):
    # Poisson batches of 1 record in 48 expected: many hold one record, which rank 0 steps on
    # alone. Rank 1 must still make every exchange of that step, the generator's included (a
    # plain optimizer that reads no real data), or the two wait on each other for ever.
    ranks = _two_ranks(tmp_path, "emixer", True, steps=8, batch_size=1)
    lone = [i for i, (a, b) in enumerate(zip(ranks[0]["shares"], ranks[1]["shares"])) if a > 0 and b == 0]
    assert lone, (ranks[0]["shares"], ranks[1]["shares"])
    assert ranks[0]["state"] == ranks[1]["state"]
    one = json.loads(json.dumps(_train("emixer", True, steps=8, batch_size=1)))
    assert ranks[0]["ledger"] == ranks[1]["ledger"] == one["ledger"]
