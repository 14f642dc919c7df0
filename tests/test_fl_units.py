"""The federation's parts without the simulation engine: screening, vocabulary, egress, strategy state, ClientApp."""

from collections import Counter

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from cxrsynth.client.app import make_app
from cxrsynth.client.egress import EgressRefused, check_reply
from cxrsynth.client.task import label_counts, token_counts
from cxrsynth.config import load_config
from cxrsynth.data.records import Record, empty_labels, findings_key
from cxrsynth.data.text import pseudo_reports, tokenize
from cxrsynth.models.label_prior import LabelPrior
from cxrsynth.privacy.wire import from_arrays, ledger_from_record, round_config, to_arrays
from cxrsynth.server.screen import screen
from cxrsynth.server.strategy import load_strategy_state, make_strategy, strategy_state
from cxrsynth.server.vocab import merge_counts


@pytest.fixture(autouse=True)
def _identity():
    # A Message needs the process's Flower identity; a SuperNode or the simulation sets it.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 11, 0


def _reply(node: int, arrays: dict, n: int = 10, message_type: str = "train") -> Message:
    incoming = Message(RecordDict(), dst_node_id=node, message_type=message_type)
    return Message(
        RecordDict({"arrays": to_arrays(arrays), "metrics": MetricRecord({"num-examples": n})}), reply_to=incoming
    )


def test_screen_rejects_nan_shape_outlier_and_failed_sites():
    g = {"a.w": np.zeros((3, 2), np.float32), "a.b": np.zeros(2, np.float32)}
    ok = [_reply(i, {"a.w": np.full((3, 2), 0.1 * i, np.float32), "a.b": np.zeros(2, np.float32)}) for i in (1, 2, 3)]
    nan = _reply(4, {"a.w": np.full((3, 2), np.nan, np.float32), "a.b": np.zeros(2, np.float32)})
    shape = _reply(5, {"a.w": np.zeros((2, 3), np.float32), "a.b": np.zeros(2, np.float32)})
    huge = _reply(6, {"a.w": np.full((3, 2), 1e4, np.float32), "a.b": np.zeros(2, np.float32)})
    missing = _reply(7, {"a.w": np.zeros((3, 2), np.float32)})
    from flwr.app import Error

    crashed = Message(
        Error(code=2, reason="RuntimeError at the site"),
        reply_to=Message(RecordDict(), dst_node_id=8, message_type="train"),
    )
    s = screen(ok + [nan, shape, huge, missing, crashed], g, norm_factor=10.0)
    assert sorted(m.metadata.src_node_id for m in s.accepted) == [1, 2, 3]
    reasons = {r["node"]: r["reason"] for r in s.rejected}
    assert "NaN" in reasons[4] and "shape" in reasons[5] and "median" in reasons[6]
    assert "missing" in reasons[7] and "failed" in reasons[8]


def test_vocabulary_counts_need_enough_patients_and_merge_exactly():
    recs = [
        Record(f"r{i}", f"p{i % 4}", f"s{i}", findings="heart normal. mrn 1234" if i % 4 == 0 else "heart normal.")
        for i in range(12)
    ]
    counts, n = token_counts(recs, min_patients=2)
    assert n == 12 and counts["heart"] == 12 and "." in counts
    assert "1234" not in counts and "mrn" not in counts  # one patient's token, whatever its count (3)
    merged = merge_counts([counts, {"heart": 3, "effusion": 5}])
    fake = pseudo_reports(merged, n_reports=15)
    assert Counter(t for r in fake for t in tokenize(r.report)) == merged
    assert len(fake) <= 15


@pytest.mark.parametrize("preset", ["emixer-tiny", "mopoe-tiny"])
def test_vocabulary_from_site_counts_equals_the_one_built_on_the_records(preset):
    """With every token shared (threshold 1), the server's vocabulary from one site's counts is the
    vocabulary that site would build from its own records."""
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.models import build_model, model_class

    cfg = load_config(preset).model
    records = make_phantom(80, sites=1, seed=3, image_size=16, lateral=False)
    counts, n = token_counts(records, 1, lambda r: model_class(cfg).vocabulary_text(cfg, r))
    local, fed = build_model(cfg), build_model(cfg)
    local.setup(records)
    fed.setup_from_counts(counts, n)
    assert fed.vocab.itos == local.vocab.itos and len(fed.vocab) > 20


def test_label_counts_need_enough_patients_and_give_the_federated_label_mix():
    effusion = {**empty_labels(), "Pleural Effusion": 1, "Edema": 0}
    normal = {**empty_labels(), "No Finding": 1}
    rare = {**empty_labels(), "Fracture": 1, "Edema": -1}
    recs = [Record(f"r{i}", f"p{i % 5}", f"s{i}", labels=effusion) for i in range(10)]
    recs += [Record(f"n{i}", f"q{i}", f"n{i}", labels=normal) for i in range(6)]
    recs += [Record(f"x{i}", "p9", f"x{i}", labels=rare) for i in range(4)]  # four studies, one patient
    recs += [Record("u", "p3", "u")]  # unlabeled
    site = label_counts(recs, min_patients=2)
    assert site == {
        "labeled": 20,
        "pattern:Pleural Effusion=1": 10,
        "Pleural Effusion=1": 10,
        "pattern:No Finding=1": 6,
        "No Finding=1": 6,
    }  # the one patient's fracture and uncertain edema never leave, alone or in a combination
    merged = dict(merge_counts([site, {"labeled": 30, "Edema=1": 12, "No Finding=1": 8, "pattern:No Finding=1": 8}]))
    prior = LabelPrior.from_counts(merged, min_count=5)
    assert sorted((findings_key(p), c) for p, c in prior.patterns) == [
        ("No Finding=1", 14),
        ("Pleural Effusion=1", 10),
    ]
    assert prior.rest == 26 and prior.marginals["Edema"][0] == pytest.approx(12 / 26)
    drawn = prior.sample(2000, np.random.default_rng(0))
    assert all(any(v is not None for v in d.values()) for d in drawn)  # every draw is a labeled condition
    share = np.mean([d["Edema"] == 1 for d in drawn])
    assert share == pytest.approx(12 / 50, abs=0.03)
    with pytest.raises(ValueError, match="not <label>=1"):
        LabelPrior.from_counts({"labeled": 9, "pattern:Spleen=1": 9}, min_count=5)


def test_egress_rule_lets_only_arrays_counts_metrics_and_ledger_out():
    ok = _reply(1, {"w": np.ones(2)})
    check_reply(ok)
    text = _reply(1, {"w": np.ones(2)})
    text.content["notes"] = ConfigRecord({"report": "Patient John Smith"})
    with pytest.raises(EgressRefused, match="notes"):
        check_reply(text)
    arrays_in_query = _reply(1, {"w": np.ones(2)}, message_type="query")
    with pytest.raises(EgressRefused, match="only in train replies"):
        check_reply(arrays_in_query)
    bad_ledger = _reply(1, {"w": np.ones(2)})
    bad_ledger.content["ledger"] = ConfigRecord({"epsilon": 1.0, "site-name": "St Mary's"})
    with pytest.raises(EgressRefused, match="site-name"):
        check_reply(bad_ledger)


def test_fedadam_state_survives_a_save_and_load():
    cfg = load_config("mopoe-tiny", {"federation": {"strategy": "fedadam"}})
    s1 = make_strategy(cfg.federation)
    s1.m_t = {"a": np.arange(3.0)}
    s1.v_t = {"a": np.ones(3)}
    arrays, scalars = strategy_state(s1)
    s2 = make_strategy(cfg.federation)
    load_strategy_state(s2, arrays, scalars)
    assert np.array_equal(s2.m_t["a"], np.arange(3.0)) and np.array_equal(s2.v_t["a"], np.ones(3))
    dp = make_strategy(
        load_config("mopoe-tiny", {"federation": {"client_dp": "adaptive", "client_dp_clip": 2.5}}).federation
    )
    assert strategy_state(dp)[1]["clipping_norm"] == 2.5


def test_client_app_vocab_then_dp_train_twice_grows_the_ledger(tmp_path):
    cfg = load_config(
        "mopoe-tiny",
        {
            "model": {"image_size": 16, "text_length": 16, "channels": 8},
            "data": {"phantom": {"n": 36, "sites": 3, "image_size": 16}},
            "train": {"batch_size": 4, "num_threads": 1},
            "dp": {"enabled": True, "noise_multiplier": 1.5},
            "federation": {"local_steps": 1, "vocab_min_count": 2},
        },
    )
    app = make_app()

    def site_1(run_id: int) -> Context:
        """Simulated site 1 with a fresh node state; its ledger file lives in tmp_path."""
        return Context(
            run_id=run_id,
            node_id=1,
            node_config={"partition-id": 1, "num-partitions": 3},
            state=RecordDict(),
            run_config={"site-ledgers": str(tmp_path)},
        )

    ctx = site_1(11)
    vocab = app(Message(RecordDict({"config": round_config(cfg, {})}), dst_node_id=1, message_type="query.vocab"), ctx)
    assert not vocab.has_error(), vocab.error.reason if vocab.has_error() else ""
    counts = dict(vocab.content["counts"])
    assert counts and all(isinstance(v, int) for v in counts.values())
    from cxrsynth.models import build_model

    model = build_model(cfg.model)
    model.setup_from_counts(dict(merge_counts([counts])), int(vocab.content["metrics"]["num-reports"]))
    arrays, extra = model.state(), model.extra_state()
    eps = []
    for rnd in (1, 2):
        conf = round_config(cfg, extra)
        conf["server-round"] = rnd
        reply = app(
            Message(RecordDict({"arrays": to_arrays(arrays), "config": conf}), dst_node_id=1, message_type="train"),
            ctx,
        )
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        check_reply(reply)
        assert set(reply.content.keys()) == {"arrays", "metrics", "ledger"}
        assert set(from_arrays(reply.content["arrays"])) == set(arrays)
        eps.append(ledger_from_record(reply.content["ledger"])["epsilon"])
    assert 0 < eps[0] < eps[1]
    assert (tmp_path / "site1.dp-ledger.json").is_file()
    # A fresh node state (a restarted SuperNode) still starts from the ledger the site keeps on disk.
    fresh = site_1(12)
    conf = round_config(cfg, extra)
    conf["server-round"] = 3
    reply = app(
        Message(RecordDict({"arrays": to_arrays(arrays), "config": conf}), dst_node_id=1, message_type="train"), fresh
    )
    assert ledger_from_record(reply.content["ledger"])["epsilon"] > eps[1]
    # Central evaluation answers with scalars only.
    ev = app(
        Message(
            RecordDict({"arrays": to_arrays(arrays), "config": round_config(cfg, extra)}),
            dst_node_id=1,
            message_type="evaluate",
        ),
        ctx,
    )
    assert not ev.has_error(), ev.error.reason if ev.has_error() else ""
    check_reply(ev)
    assert set(ev.content.keys()) == {"metrics"} and np.isfinite(ev.content["metrics"]["member-score"])


def test_fedprox_pull_keeps_a_site_closer_to_the_global_model():
    from cxrsynth.client.task import SiteData, train_round
    from cxrsynth.models import build_model
    from cxrsynth.train import load_run_data

    cfg = load_config(
        "mopoe-tiny",
        {
            "model": {"image_size": 16, "text_length": 16, "channels": 8},
            "data": {"phantom": {"n": 24, "sites": 1, "image_size": 16}},
            "train": {"batch_size": 4, "num_threads": 1},
            "federation": {"local_steps": 4},
        },
    )
    records = [r for r in load_run_data(cfg) if r.split != "holdout"]
    model = build_model(cfg.model)
    model.setup(records)
    g, extra = model.state(), model.extra_state()
    site = SiteData("s", records)

    def drift(mu: float) -> float:
        new = train_round(cfg, site, extra, g, server_round=1, proximal_mu=mu).arrays
        return float(sum(np.sum((new[k].astype(np.float64) - g[k]) ** 2) for k in g if g[k].dtype.kind == "f"))

    assert drift(200.0) < 0.8 * drift(0.0)


def test_ldm_label_prevalence_from_merged_counts():
    from cxrsynth.models import build_model
    from cxrsynth.models.ldm.prompts import sample_labels

    model = build_model(load_config("ldm-tiny").model)
    model.fit_label_counts({"labeled": 10, "Edema=1": 4, "Cardiomegaly=-1": 1})
    assert model.counts["Edema"] == {"1": 4, "-1": 0, "0": 6, "none": 0}
    drawn = sample_labels(model.counts, 2000, np.random.default_rng(0))
    assert np.mean([d["Edema"] == 1 for d in drawn]) == pytest.approx(0.4, abs=0.04)
