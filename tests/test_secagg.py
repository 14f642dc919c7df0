"""Secure aggregation (issue 15, item 7): Flower's SecAgg+ around the real ClientApp and ServerApp loop.

The simulation test runs three phantom sites through two DP rounds in Flower's simulation engine
with `federation.secure_aggregation: secagg+`. A mod at each site records what it was sent and
what left it; afterwards each site's round is trained again here, in the clear, from the same
global weights and config, which gives the plain FedAvg the secure sum must match.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.task_identity import TaskIdentity
from sim_apps import SIM_APPS

from cxrsynth.checkpoint import load_checkpoint
from cxrsynth.client.app import make_app
from cxrsynth.client.egress import ERROR_KINDS, EgressRefused, check_reply
from cxrsynth.config import load_config
from cxrsynth.data.dataset import write_dataset
from cxrsynth.data.phantom import make_phantom
from cxrsynth.errors import ConfigError
from cxrsynth.models import build_model
from cxrsynth.privacy.secagg import mask_stream, summed_names
from cxrsynth.privacy.wire import from_arrays, round_config, to_arrays
from cxrsynth.server.simulate import simulate

SMALL = {
    "model": {"image_size": 16, "text_length": 16, "channels": 8},
    "data": {"phantom": {"n": 60, "sites": 3, "image_size": 16}},
    "train": {"batch_size": 4, "num_threads": 1},
    # Seeded noise: the test trains each site again in the clear and compares with the secure sum.
    "dp": {"enabled": True, "noise_multiplier": 1.0, "epsilon_budget": 50.0, "seeded_noise": True},
    "federation": {
        "sites": 3,
        "rounds": 2,
        "local_steps": 2,
        "min_sites": 2,
        "vocab_min_count": 2,
        "secure_aggregation": "secagg+",
    },
}


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 11, 0


def _train_in_the_clear(root: Path, rnd: int, site: int) -> tuple[dict, int]:
    """The site's round again, here and without SecAgg+: its local weights and sample count."""
    glob = dict(np.load(root / f"r{rnd}-site{site}-global.npz"))
    config = ConfigRecord(json.loads((root / f"r{rnd}-site{site}-config.json").read_text()))
    msg = Message(RecordDict({"arrays": to_arrays(glob), "config": config}), dst_node_id=1, message_type="train")
    ctx = Context(
        run_id=11,
        node_id=1,
        node_config={"partition-id": site, "num-partitions": 3},
        state=RecordDict(),
        run_config={},
    )
    reply = make_app()(msg, ctx)
    assert not reply.has_error(), reply.error.reason
    return from_arrays(reply.content["arrays"]), int(reply.content["metrics"]["num-examples"])


@pytest.mark.long
def test_secure_sum_equals_fedavg_hides_each_update_and_drops_a_site_that_lies(tmp_path):
    cfg = load_config("mopoe-tiny", SMALL)
    sa = cfg.federation.secagg
    seen = tmp_path / "seen"
    seen.mkdir()
    out = tmp_path / "run"
    # Each site records what it was sent and what left it; site 2 lies about its epsilon in round 2 (tests/sim_apps.py).
    simulate(cfg, out, client_app=(SIM_APPS, "secagg_recorded_liar"), run_config={"test-seen": str(seen)})
    state = json.loads((out / "fl_state.json").read_text())
    assert [h["accepted"] for h in state["history"]] == [3, 2]
    lied = [r for r in state["rejections"] if r["round"] == 2]
    assert len(lied) == 1 and "claims epsilon 0" in lied[0]["reason"]
    # The server never held one site's update: no per-site norms, only the sum's.
    assert all(h["update_norms"] == {} and h["secure"]["sites"] == h["accepted"] for h in state["history"])
    weight_scale = max(state["vocabulary"]["site_reports"].values())

    for rnd, sites in ((1, (0, 1, 2)), (2, (0, 1))):
        glob = dict(np.load(seen / f"r{rnd}-site0-global.npz"))
        names = summed_names(glob)
        local = {i: _train_in_the_clear(seen, rnd, i) for i in sites}
        total = sum(n for _, n in local.values())
        fedavg = {k: sum(w[k].astype(np.float64) * n for w, n in local.values()) / total for k in names}
        model, _, _ = load_checkpoint(out / "rounds" / f"round-{rnd:03d}")
        secure = model.state()
        # Each site's weighted update is rounded to a step of 2 clip / T; the mean divides the
        # sites' summed rounding by their summed weights (n / W); then float32 (the new weights,
        # and the strategy's weighted mean of the identical arrays: a few ulps).
        step = 2 * sa.clipping_range / sa.quantization_range
        ulp = max(float(np.spacing(np.abs(v).max().astype(np.float32))) for v in fedavg.values())
        bound = len(sites) * step / (total / weight_scale) + (len(sites) + 1) * ulp
        error = max(float(np.abs(secure[k] - fedavg[k]).max()) for k in names)
        moved = max(float(np.abs(fedavg[k] - glob[k]).max()) for k in names)
        assert error <= bound, (rnd, error, bound)
        assert moved > 100 * bound, (rnd, moved, bound)  # the sites trained: the match is not the global model's
        if rnd == 1:
            # What left a site is masked: the quantized update lies in [0, T], the masked one
            # spreads over the whole ring and does not follow it.
            for i in sites:
                masked = np.load(seen / f"r1-site{i}-masked.npz")
                vec = np.concatenate([masked[f"arr_{j + 1}"].ravel() for j in range(len(names))]).astype(np.float64)
                w, n = local[i]
                ratio = round(n / weight_scale * sa.quantization_range) / sa.quantization_range
                delta = np.concatenate([(w[k].astype(np.float64) - glob[k]).ravel() for k in names]) * ratio
                quantized = (
                    (np.clip(delta, -sa.clipping_range, sa.clipping_range) + sa.clipping_range)
                    * sa.quantization_range
                    / (2 * sa.clipping_range)
                )
                assert np.mean(vec > sa.quantization_range) > 0.99
                assert abs(np.corrcoef(vec, quantized)[0, 1]) < 0.05
    # Nothing but the protocol's record, counts/scalars and the ledger left a site: no array at all.
    for i in range(3):
        for line in (seen / f"site{i}-sent.jsonl").read_text().splitlines():
            sent = json.loads(line)
            if sent == "error":
                continue
            assert set(sent) <= {"secaggplus_configs", "metrics", "ledger"}, sent
            assert all(kind != "ArrayRecord" for kind, _ in sent.values()), sent


def test_masks_use_the_whole_seed():
    """Flower's generator folds a 32-byte seed to 32 bits: two seeds that fold alike give one mask. Ours does not."""
    seed = os.urandom(32)
    flip = os.urandom(4)
    twin = bytes(a ^ b for a, b in zip(seed[:4], flip)) + bytes(a ^ b for a, b in zip(seed[4:8], flip)) + seed[8:]
    shapes = [(3, 4), (), (7,)]
    same = all(
        np.array_equal(a, b)
        for a, b in zip(pseudo_rand_gen(seed, 2**32, shapes), pseudo_rand_gen(twin, 2**32, shapes))
    )
    assert same  # the weakness this module works around
    ours, ours_twin = mask_stream(seed, 2**32, shapes), mask_stream(twin, 2**32, shapes)
    assert [m.shape for m in ours] == shapes and not np.array_equal(ours[0], ours_twin[0])
    assert all(
        np.array_equal(a, b) for a, b in zip(ours, mask_stream(seed, 2**32, shapes))
    )  # both sides draw the same
    big = mask_stream(seed, 2**16, [(100_000,)])[0]
    assert big.min() >= 0 and big.max() < 2**16 and abs(big.mean() / 2**15 - 1) < 0.01


def test_egress_lets_the_secagg_record_out_of_train_replies_only():
    incoming = Message(RecordDict(), dst_node_id=1, message_type="train")
    ok = Message(
        RecordDict(
            {
                "secaggplus_configs": ConfigRecord({"dsts": [2, 3], "ctxts": [b"x", b"y"]}),
                "metrics": MetricRecord({"num-examples": 4}),
            }
        ),
        reply_to=incoming,
    )
    check_reply(ok)
    for bad in ({"dsts": [2], "note": "Smith"}, {"masked_params": ["Smith"]}):
        with pytest.raises(EgressRefused):
            check_reply(Message(RecordDict({"secaggplus_configs": ConfigRecord(bad)}), reply_to=incoming))
    query = Message(RecordDict(), dst_node_id=1, message_type="query")
    with pytest.raises(EgressRefused):
        check_reply(Message(RecordDict({"secaggplus_configs": ConfigRecord({"pk1": b"k"})}), reply_to=query))


def test_secure_aggregation_settings_that_cannot_work_are_refused():
    for bad, named in (
        ({"client_dp": "fixed"}, "client_dp"),
        ({"min_sites": 1}, "min_sites"),
        ({"secagg": {"modulus_range": 3 * 2**20}}, "power of 2"),
    ):
        with pytest.raises(ConfigError, match=named):
            load_config("mopoe-tiny", {"federation": {"secure_aggregation": "secagg+", **bad}})
    with pytest.raises(ConfigError, match="cannot hold the sum"):
        load_config(
            "mopoe-tiny",
            {"federation": {"secure_aggregation": "secagg+", "sites": 64, "secagg": {"quantization_range": 2**27}}},
        )


def test_a_site_that_requires_secure_aggregation_refuses_a_plain_round(tmp_path):
    root = tmp_path / "hospital-a"
    write_dataset(root, [r.with_(site="hospital-a") for r in make_phantom(n=8, sites=1, seed=5, image_size=16)])
    (root / "site-policy.yaml").write_text(yaml.safe_dump({"require_secure_aggregation": True}))
    cfg = load_config(
        "mopoe-tiny",
        {
            **SMALL,
            "dp": {"enabled": True, "noise_multiplier": 1.0, "epsilon_budget": 10.0},
            "federation": {"secure_aggregation": "off"},
        },
    )
    model = build_model(cfg.model)
    model.setup(make_phantom(n=8, sites=1, seed=1, image_size=16))
    conf = round_config(cfg, model.extra_state())
    conf["server-round"] = 1
    msg = Message(
        RecordDict({"arrays": to_arrays(model.state()), "config": conf}), dst_node_id=1, message_type="train"
    )
    ctx = Context(
        run_id=11,
        node_id=1,
        node_config={"data-path": str(root), "site": "hospital-a"},
        state=RecordDict(),
        run_config={},
    )
    reply = make_app()(msg, ctx)
    assert (
        reply.has_error()
        and reply.error.code == ERROR_KINDS["refused"]
        and "require_secure_aggregation" in reply.error.reason
    )


def test_a_secure_sum_far_above_earlier_rounds_is_refused_as_a_whole():
    from cxrsynth.server.secagg import sum_problem

    history = [
        {"round": 1, "secure": {"update_norm": 0.3}},
        {"round": 2, "secure": {"update_norm": 0.2}},
        {"round": 3, "update_norms": {"1": 9.0}},
    ]
    assert sum_problem(50.0, [], 10.0) == ""  # round 1: nothing to compare with
    assert sum_problem(1.9, history, 10.0) == ""
    reason = sum_problem(2.5, history, 10.0)
    assert "2.5" in reason and "0.2" in reason and "cannot tell which site" in reason
