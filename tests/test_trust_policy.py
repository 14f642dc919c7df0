"""Issue 15, the privacy floor and the coordinator's checks: each test replays one probe of the
issue (a run config that lowers DP, a false epsilon, a poisoned sample count, an error that
quotes a cell, losses outside the accounting, an audit query used as a membership oracle)
against the real ClientApp, screen and Opacus accountant."""

import math

import numpy as np
import pytest
import yaml
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from cxrsynth.client.app import make_app
from cxrsynth.client.egress import ERROR_KINDS, check_reply
from cxrsynth.client.policy import PERMISSIVE, SitePolicy, enforce, load_policy
from cxrsynth.config import load_config
from cxrsynth.data.dataset import write_dataset
from cxrsynth.data.phantom import make_phantom
from cxrsynth.privacy.dp import SiteRefused, epsilon_of
from cxrsynth.privacy.wire import ledger_to_record, round_config, to_arrays
from cxrsynth.server.screen import screen

SMALL = {
    "model": {"image_size": 16, "text_length": 16, "channels": 8},
    "train": {"batch_size": 4, "num_threads": 1},
    "federation": {"local_steps": 1, "vocab_min_count": 10},
}
WITHIN_FLOOR = {"enabled": True, "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_budget": 10.0}


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 11, 0


def _cfg(dp: dict, **over):
    return load_config("mopoe-tiny", {**SMALL, "dp": dp, **over})


def _site(tmp_path, n: int = 24, policy: dict | None = None):
    recs = [r.with_(site="hospital-a") for r in make_phantom(n=n, sites=1, seed=5, image_size=16)]
    root = tmp_path / "hospital-a"
    write_dataset(root, recs)
    if policy is not None:
        (root / "site-policy.yaml").write_text(yaml.safe_dump(policy))
    return root


def _ctx(root, **extra):
    return Context(
        run_id=11,
        node_id=1,
        node_config={"data-path": str(root), "site": "hospital-a", **extra},
        state=RecordDict(),
        run_config={},
    )


def _train_msg(cfg, rnd: int = 1):
    from cxrsynth.models import build_model

    model = build_model(cfg.model)
    model.setup(make_phantom(n=8, sites=1, seed=1, image_size=16))
    conf = round_config(cfg, model.extra_state())
    conf["server-round"] = rnd
    return Message(
        RecordDict({"arrays": to_arrays(model.state()), "config": conf}), dst_node_id=1, message_type="train"
    )


@pytest.mark.parametrize(
    "dp, named",
    [
        ({"enabled": False}, "require_dp"),
        ({**WITHIN_FLOOR, "epsilon_budget": 1e9}, "epsilon_budget"),
        ({**WITHIN_FLOOR, "epsilon_budget": None}, "epsilon_budget"),
        ({**WITHIN_FLOOR, "delta": 0.5}, "delta"),
        ({**WITHIN_FLOOR, "noise_multiplier": 0.0}, "noise_multiplier"),
    ],
)
def test_hospital_site_refuses_a_run_that_lowers_its_privacy_floor(tmp_path, dp, named):
    reply = make_app()(_train_msg(_cfg(dp)), _ctx(tmp_path / "no-data-read"))
    assert reply.has_error() and reply.error.code == ERROR_KINDS["refused"]
    assert named in reply.error.reason and reply.error.reason.startswith("refused: site policy")


def test_site_policy_file_beside_the_data_sets_the_floor_and_bad_keys_are_named(tmp_path):
    root = _site(tmp_path, n=4, policy={"require_dp": False, "max_epsilon": 3.0})
    policy = load_policy({"data-path": str(root)})
    assert policy.require_dp is False and policy.max_epsilon == 3.0 and policy.min_count == SitePolicy().min_count
    assert enforce(_cfg({"enabled": False}), policy).dp.enabled is False
    with pytest.raises(SiteRefused, match="epsilon_budget <= 3"):
        enforce(_cfg(WITHIN_FLOOR), policy)
    (root / "site-policy.yaml").write_text("require_dp: maybe\n")
    from cxrsynth.errors import ConfigError

    with pytest.raises(ConfigError, match="require_dp"):
        load_policy({"data-path": str(root)})
    # A simulated site with no policy of its own follows the run config.
    assert load_policy({"partition-id": 0, "num-partitions": 2}) == PERMISSIVE


def test_vocab_min_count_below_the_site_floor_is_raised_to_it(tmp_path):
    root = _site(tmp_path, n=40)
    app, ctx = make_app(), _ctx(root)

    def counts(k: int) -> dict:
        cfg = _cfg(WITHIN_FLOOR, federation={**SMALL["federation"], "vocab_min_count": k})
        reply = app(
            Message(RecordDict({"config": round_config(cfg, {})}), dst_node_id=1, message_type="query.vocab"), ctx
        )
        assert not reply.has_error(), reply.error.reason
        return dict(reply.content["counts"]), dict(reply.content["label-counts"])

    asked_one, floor = counts(1), counts(SitePolicy().min_count)
    assert asked_one == floor and floor[0]
    # With k = 1 honoured, tokens of a single patient (MRNs, names) would have left.
    from cxrsynth.client.task import token_counts
    from cxrsynth.data.dataset import read_dataset

    records, _ = read_dataset(root)
    assert len(token_counts(records, 1)[0]) > len(floor[0])


def _dp_reply(node: int, arrays: dict, n: int, history: list, epsilon=None, ledger: bool = True, cfg=None) -> Message:
    cfg = cfg or _cfg(WITHIN_FLOOR)
    incoming = Message(RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict({"arrays": to_arrays(arrays), "metrics": MetricRecord({"num-examples": n})})
    if ledger:
        eps = epsilon_of(history, cfg.dp) if epsilon is None else epsilon
        entry = {
            "noise_multiplier": 1.0,
            "max_grad_norm": 1.0,
            "sample_rate": history[-1][1],
            "steps": sum(h[2] for h in history),
            "epsilon": eps,
            "delta": cfg.dp.delta,
            "epsilon_budget": 10.0,
            "accountant": cfg.dp.accountant,
            "privacy_unit": cfg.dp.privacy_unit,
            "history": history,
        }
        content["ledger"] = ledger_to_record(entry)
    return Message(content, reply_to=incoming)


def test_server_recomputes_epsilon_and_refuses_a_false_or_missing_ledger():
    cfg = _cfg(WITHIN_FLOOR)
    g = {"a.w": np.zeros((3, 2), np.float32)}
    upd = {"a.w": np.full((3, 2), 0.1, np.float32)}
    history = [(1.0, 4 / 20, 400)]
    true_eps = epsilon_of(history, cfg.dp)
    assert true_eps > 1.0
    replies = [
        _dp_reply(1, upd, 20, history),
        _dp_reply(2, upd, 20, history, epsilon=0.0),  # the site reporting 0.0
        _dp_reply(3, upd, 20, history, ledger=False),
        _dp_reply(
            4, upd, 20, [(1.0, 4 / 20, 400)], cfg=_cfg({**WITHIN_FLOOR, "delta": 1e-3})
        ),  # a larger delta, epsilon "halved"
        _dp_reply(5, upd, 40, history),  # rate 4/20 does not match 40 records
        _dp_reply(6, upd, 20, [(0.1, 4 / 20, 400)]),  # not the run's noise
    ]
    s = screen(replies, g, 10.0, dp=cfg.dp, batch_size=4, ledgers={"7": {"steps": 10, "epsilon": 2 * true_eps}})
    assert [m.metadata.src_node_id for m in s.accepted] == [1]
    reasons = {r["node"]: r["reason"] for r in s.rejected}
    assert f"{true_eps:.6g}" in reasons[2] and "claims epsilon 0" in reasons[2]
    assert "no DP ledger" in reasons[3]
    assert "delta" in reasons[4] and "sample rate" in reasons[5] and "noise multiplier" in reasons[6]
    # A ledger that spends less than the same site did in an earlier round is not believed either.
    later = screen(
        [_dp_reply(7, upd, 20, history)],
        g,
        10.0,
        dp=cfg.dp,
        batch_size=4,
        ledgers={"7": {"steps": 800, "epsilon": 2 * true_eps}},
    )
    assert not later.accepted and "earlier round" in later.rejected[0]["reason"]


@pytest.mark.parametrize("n", [math.nan, 0, -5, 2.5, 1e9, math.inf])
def test_server_refuses_a_sample_count_that_is_not_a_bounded_positive_count(n):
    g = {"a.w": np.zeros((3, 2), np.float32)}
    good = [_dp_reply(i, {"a.w": np.full((3, 2), 0.1, np.float32)}, 20, [(1.0, 0.2, 1)], ledger=False) for i in (1, 2)]
    bad = _dp_reply(3, {"a.w": np.full((3, 2), 0.1, np.float32)}, 20, [(1.0, 0.2, 1)], ledger=False)
    bad.content["metrics"]["num-examples"] = n
    s = screen([*good, bad], g, 10.0, bounds={1: 20, 2: 20, 3: 20})
    assert sorted(m.metadata.src_node_id for m in s.accepted) == [1, 2]
    assert "num-examples" in s.rejected[0]["reason"]


def test_server_refuses_arrays_of_another_dtype():
    g = {"a.w": np.zeros((3, 2), np.float32)}
    r = _dp_reply(1, {"a.w": np.zeros((3, 2), np.float64)}, 20, [(1.0, 0.2, 1)], ledger=False)
    s = screen([r], g, 10.0)
    assert not s.accepted and "dtype" in s.rejected[0]["reason"]


def test_losses_stay_at_the_site_under_dp_and_the_ledger_travels(tmp_path):
    root = _site(tmp_path, n=24)
    reply = make_app()(_train_msg(_cfg(WITHIN_FLOOR)), _ctx(root, **{"ledger-path": str(tmp_path / "ledger.json")}))
    assert not reply.has_error(), reply.error.reason
    check_reply(reply)
    keys = set(reply.content["metrics"].keys())
    assert "num-examples" in keys and not any(k.startswith("loss-") for k in keys), keys
    assert "ledger" in reply.content.config_records and (tmp_path / "ledger.json").is_file()
    # Central evaluation (a mean loss over training records) is refused under the same policy.
    ev = Message(
        RecordDict({"arrays": reply.content["arrays"], "config": _train_msg(_cfg(WITHIN_FLOOR)).content["config"]}),
        dst_node_id=1,
        message_type="evaluate",
    )
    out = make_app()(ev, _ctx(root))
    assert out.has_error() and "send_loss_metrics" in out.error.reason


def test_error_replies_carry_a_kind_and_no_cell_values_or_paths(tmp_path):
    """The issue's split cell holding a name and an MRN, read by the strict audit query."""
    root = _site(tmp_path, n=6, policy={"require_signed_audit_sets": False})
    manifest = root / "manifest.csv"
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("split")] = "John Smith MRN 4471920"
    manifest.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    from cxrsynth.config import AuditPolicy
    from cxrsynth.privacy.audit.protocol import make_query

    syn = [r.with_(site="synthetic", split="") for r in make_phantom(n=3, sites=1, seed=9, image_size=16)]
    msg = Message(
        make_query(syn, AuditPolicy(bootstrap=10, skip=("phi", "membership"))), dst_node_id=1, message_type="query"
    )
    reply = make_app()(msg, _ctx(root))
    assert reply.has_error() and reply.error.code == ERROR_KINDS["bad-input"]
    for secret in ("John", "4471920", str(root), "manifest.csv"):
        assert secret not in reply.error.reason


def _pinned_query(syn, key, arrays):
    from cxrsynth.config import AuditPolicy
    from cxrsynth.privacy.audit.protocol import make_query, sign_query, state_sha256

    content = make_query(syn, AuditPolicy(bootstrap=10, skip=("phi", "membership")))
    if key is not None:
        sign_query(content, key, "coordinator", state_sha256(arrays))
    return Message(content, dst_node_id=1, message_type="query")


def test_audit_query_answers_only_a_pinned_set_within_the_site_budget(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for d in ("keys", "other"):
        subprocess.run(
            [
                sys.executable,
                str(repo / "deploy" / "certs.py"),
                "--out",
                str(tmp_path / d),
                "--app-signer",
                "coordinator",
            ],
            check=True,
            capture_output=True,
        )
    from cxrsynth.data.split import split_by_patient

    # Split by patient: a site refuses to answer while a patient is on both sides of its split.
    recs = split_by_patient(
        [r.with_(site="hospital-a") for r in make_phantom(n=66, sites=1, seed=5, image_size=16)], 0.35, 1
    )
    root = tmp_path / "hospital-a"
    write_dataset(root, recs)
    (root / "site-policy.yaml").write_text(yaml.safe_dump({"audit_query_budget": 1}))
    ctx = _ctx(
        root,
        **{
            "trusted-entities": str(tmp_path / "keys" / "trusted-entities.yaml"),
            "ledger-path": str(tmp_path / "ledger.json"),
        },
    )
    app = make_app()
    arrays = {"x": np.zeros(2, np.float32)}
    syn = [r.with_(site="synthetic", split="") for r in make_phantom(n=4, sites=1, seed=9, image_size=16)]
    probe = [
        r.with_(record_id=f"probe{i}", site="synthetic", split="") for i, r in enumerate(recs[1:4])
    ]  # the site's own training images
    refused = {
        "unsigned": _pinned_query(probe, None, arrays),
        "foreign key": _pinned_query(probe, tmp_path / "other" / "signing" / "coordinator", arrays),
    }
    tampered = _pinned_query(syn, tmp_path / "keys" / "signing" / "coordinator", arrays)
    tampered.content["synthetic"] = _pinned_query(probe, None, arrays).content["synthetic"]
    tampered.content["config"] = _pinned_query(probe, None, arrays).content["config"]
    refused["set swapped after pinning"] = tampered
    for name, msg in refused.items():
        reply = app(msg, ctx)
        assert reply.has_error() and reply.error.code == ERROR_KINDS["refused"], (
            name,
            reply.error.reason if reply.has_error() else "answered",
        )
    ok = app(_pinned_query(syn, tmp_path / "keys" / "signing" / "coordinator", arrays), ctx)
    assert not ok.has_error(), ok.error.reason
    log = (tmp_path / "ledger.json.audit-queries.jsonl").read_text().splitlines()
    assert len(log) == 1 and '"n": 4' in log[0]
    again = app(_pinned_query(syn, tmp_path / "keys" / "signing" / "coordinator", arrays), ctx)
    assert again.has_error() and "budget" in again.error.reason


def test_an_unpinned_audit_query_is_a_membership_oracle_and_a_hospital_refuses_it(tmp_path):
    """The issue's probe: the site's own training images among holdout ones, sent as a "synthetic"
    set. A site that answers any set flags exactly its training images; the default floor refuses."""
    recs = make_phantom(n=66, sites=1, seed=5, image_size=16)
    patients = list(dict.fromkeys(r.patient_id for r in recs))  # split by patient, as the site requires
    recs = [
        r.with_(site="hospital-a", split="holdout" if patients.index(r.patient_id) % 3 == 0 else "train") for r in recs
    ]
    root = tmp_path / "hospital-a"
    write_dataset(root, recs)
    train, holdout = [r for r in recs if r.split == "train"][:3], [r for r in recs if r.split == "holdout"][:3]
    probe = [
        r.with_(record_id=f"probe{i}", site="synthetic", split="")
        for i, r in enumerate([train[0], holdout[0], train[1], holdout[1], train[2], holdout[2]])
    ]
    query = _pinned_query(probe, None, {"x": np.zeros(2, np.float32)})
    (root / "site-policy.yaml").write_text(yaml.safe_dump({"require_signed_audit_sets": False}))
    answered = make_app()(query, _ctx(root, **{"ledger-path": str(tmp_path / "open.json")}))
    assert not answered.has_error(), answered.error.reason
    assert sorted(answered.content["audit"]["images.copies"]) == [
        0,
        2,
        4,
    ]  # the oracle: training images, and only they
    (root / "site-policy.yaml").unlink()
    refused = make_app()(
        _pinned_query(probe, None, {"x": np.zeros(2, np.float32)}),
        _ctx(root, **{"ledger-path": str(tmp_path / "floor.json")}),
    )
    assert (
        refused.has_error()
        and refused.error.code == ERROR_KINDS["refused"]
        and "no coordinator pin" in refused.error.reason
    )


def test_the_steward_pins_only_a_set_its_checkpoint_generated(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from cxrsynth.checkpoint import checkpoint_hash, save_checkpoint
    from cxrsynth.config import AuditPolicy
    from cxrsynth.errors import InputError
    from cxrsynth.models import build_model
    from cxrsynth.privacy.audit.protocol import make_query, verify_query
    from cxrsynth.server.audit_query import _pin

    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            str(repo / "deploy" / "certs.py"),
            "--out",
            str(tmp_path / "keys"),
            "--app-signer",
            "coordinator",
        ],
        check=True,
        capture_output=True,
    )
    cfg = _cfg(WITHIN_FLOOR)
    model = build_model(cfg.model)
    model.setup(make_phantom(n=8, sites=1, seed=1, image_size=16))
    save_checkpoint(tmp_path / "ckpt", model, cfg, {"step": 0}, save_optimizers=False)
    short = checkpoint_hash(tmp_path / "ckpt")
    own = [
        r.with_(site="synthetic", split="", provenance=f"family=mopoe;checkpoint={short};seed={i}")
        for i, r in enumerate(make_phantom(n=3, sites=1, seed=9, image_size=16))
    ]
    probe = [*own, own[0].with_(record_id="probe", provenance="")]  # a real image slipped in among the model's output
    key = tmp_path / "keys" / "signing" / "coordinator"
    policy = AuditPolicy(bootstrap=10, skip=("phi",))
    arrays = model.state()
    with pytest.raises(InputError, match="do not name checkpoint"):
        _pin(make_query(probe, policy, cfg, model.extra_state(), arrays), probe, tmp_path / "ckpt", arrays, key)
    content = _pin(make_query(own, policy, cfg, model.extra_state(), arrays), own, tmp_path / "ckpt", arrays, key)
    trusted = yaml.safe_load((tmp_path / "keys" / "trusted-entities.yaml").read_text())
    assert verify_query(content, trusted)["key-id"] == "coordinator"
    # A model other than the pinned one, sent with the same pin, is refused at the site.
    content["arrays"] = to_arrays({k: v + 1 if v.dtype.kind == "f" else v for k, v in arrays.items()})
    with pytest.raises(SiteRefused, match="pinned checkpoint"):
        verify_query(content, trusted)


def _look_query(cfg):
    from flwr.app import ConfigRecord

    from cxrsynth.models.acquisition import LEVELS

    content = RecordDict(
        {"config": round_config(cfg, {}), "acquisition": ConfigRecord({"center": [float(v) for v in LEVELS]})}
    )
    return Message(content, dst_node_id=1, message_type="query.vocab")


def test_a_site_sends_its_look_only_within_its_floor_and_books_it_in_its_ledger(tmp_path):
    root = _site(tmp_path, n=40)
    app, ctx = make_app(), _ctx(root)
    fed = {**SMALL["federation"], "acquisition": True}
    # Without DP, or with less noise than the hospital's floor, the look does not leave.
    for dp, named in (({"enabled": False}, "require_dp"), (WITHIN_FLOOR, "acquisition_noise")):
        acq = {**fed, "acquisition_noise": 0.1} if dp is WITHIN_FLOOR else fed
        reply = app(_look_query(_cfg(dp, federation=acq)), ctx)
        assert reply.has_error() and reply.error.code == ERROR_KINDS["refused"] and named in reply.error.reason
    reply = app(_look_query(_cfg(WITHIN_FLOOR, federation=fed)), ctx)
    assert not reply.has_error(), reply.error.reason
    check_reply(reply)  # numbers only
    look = dict(reply.content["acquisition"])
    from cxrsynth.client.task import load_site
    from cxrsynth.privacy.dp import read_ledger_file

    train = load_site(_cfg(WITHIN_FLOOR), dict(ctx.node_config)).train
    assert len(look) == 12 and look["units"] == len({r.patient_id for r in train})
    from cxrsynth.train import site_ledger_path

    # The release is in the site's own ledger, so the rounds that follow count it.
    assert read_ledger_file(site_ledger_path(root)) == [(4.0, 1.0, 1)]
    assert epsilon_of([(4.0, 1.0, 1)], _cfg(WITHIN_FLOOR).dp) > 0
