"""The federated audit: the site handler answers with numbers only, and the steward's combination
of those answers equals the local audit of the same data."""

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from test_audit_support import write_audit_inputs

from cxrsynth.client.egress import check_reply
from cxrsynth.client.query import handle
from cxrsynth.config import AuditPolicy
from cxrsynth.data.dataset import read_dataset
from cxrsynth.privacy.audit.combine import combine
from cxrsynth.privacy.audit.protocol import make_query, record_to_answer
from cxrsynth.privacy.audit.run import audit_records


def test_site_answer_is_numbers_only_and_combines_like_the_local_audit(tmp_path):
    real_dir, syn_dir = write_audit_inputs(tmp_path, n_train=80, n_holdout=40, n_synthetic=30)
    synthetic, _ = read_dataset(syn_dir)
    records, _ = read_dataset(real_dir)
    train = [r for r in records if r.split == "train"]
    holdout = [r for r in records if r.split == "holdout"]
    # Two planted copies, so there are flagged IDs to carry as indices.
    synthetic += [
        train[3].with_(record_id="copy-a", site="synthetic", split=""),
        train[5].with_(record_id="copy-b", site="synthetic", split=""),
    ]
    policy = AuditPolicy(bootstrap=50, skip=("phi", "membership"))

    from flwr.supercore.task_identity import TaskIdentity

    # Messages outside a running app need the identity Flower sets when it runs one.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 11, 0
    query = Message(make_query(synthetic, policy), dst_node_id=7, message_type="query")
    ctx = Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(real_dir), "audit-out": str(tmp_path / "site-report")},
        state=RecordDict(),
        run_config={},
    )
    reply = handle(query, ctx)
    reply.metadata.message_type = "query"
    check_reply(reply)  # the ClientApp's own egress rule accepts it: numbers only
    metrics = dict(reply.content["audit"])
    assert all(not isinstance(v, str) for v in metrics.values())
    assert sorted(metrics["images.copies"]) == [len(synthetic) - 2, len(synthetic) - 1]
    # The site keeps its own report with the pairs it found.
    assert "copy-a" in (tmp_path / "site-report" / "report.html").read_text()

    fed = combine([record_to_answer(metrics, synthetic, "site0")], policy)
    local, _ = audit_records(synthetic, train, holdout, policy)
    assert fed["passed"] == local["passed"] is False
    assert fed["flagged"] == local["flagged"]
    for name in ("image_copies", "image_closeness", "text_rare_ngrams", "text_near_duplicates"):
        for key, value in local["checks"][name].items():
            if isinstance(value, float):
                assert fed["checks"][name][key] == pytest.approx(value, rel=1e-6), (name, key)


def test_site_answers_label_fidelity_as_numbers_and_the_steward_combines_it_like_the_local_audit(tmp_path):
    from flwr.supercore.task_identity import TaskIdentity

    from cxrsynth.data.dataset import write_dataset
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.data.split import split_by_patient
    from cxrsynth.models.ldm.prompts import prompt_from_labels
    from cxrsynth.privacy.audit.run import finish_audit

    real = split_by_patient(make_phantom(240, sites=1, seed=0, image_size=32, lateral=False), 0.25, 0)
    write_dataset(tmp_path / "site", [r.with_(phi_meta={}) for r in real])
    synthetic = [
        r.with_(
            record_id=f"g{i}",
            patient_id=f"g{i}",
            site="synthetic",
            split="",
            findings=prompt_from_labels(r.labels),
            impression="",
        )
        for i, r in enumerate(make_phantom(100, sites=1, seed=7, image_size=32, lateral=False))
    ]
    policy = AuditPolicy(
        bootstrap=30, skip=("phi", "membership", "image_copies", "image_closeness"), fidelity_steps=150
    )
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 11, 0
    query = Message(make_query(synthetic, policy), dst_node_id=7, message_type="query")
    ctx = Context(
        run_id=1, node_id=7, node_config={"data-path": str(tmp_path / "site")}, state=RecordDict(), run_config={}
    )
    reply = handle(query, ctx)
    reply.metadata.message_type = "query"
    check_reply(reply)
    metrics = dict(reply.content["audit"])
    aurocs = {k: v for k, v in metrics.items() if k.startswith("fidelity.auroc.")}
    assert len(aurocs) >= 8 and all(isinstance(v, float) for v in aurocs.values())
    assert "fidelity.real_auroc.Cardiomegaly" in metrics and "fidelity.se.Cardiomegaly" in metrics

    fed = finish_audit([record_to_answer(metrics, synthetic, "site0")], synthetic, policy)
    train = [r for r in real if r.split == "train"]
    holdout = [r for r in real if r.split == "holdout"]
    local, _ = audit_records(synthetic, train, holdout, policy)
    for name in ("label_fidelity", "report_labels"):
        assert fed["checks"][name]["passed"] == local["checks"][name]["passed"] is True
    for label, f in local["checks"]["label_fidelity"]["labels"].items():
        assert fed["checks"]["label_fidelity"]["labels"][label]["auroc"] == pytest.approx(f["auroc"], rel=1e-6), label
    assert fed["sites"][0]["fidelity_macro_auroc"] == pytest.approx(
        local["sites"][0]["fidelity_macro_auroc"], rel=1e-6
    )


@pytest.mark.slow
def test_federated_audit_over_flower_simulation(tmp_path):
    """Two sites on Flower's simulation runtime answer the steward's query through the Grid."""
    import json

    from sim_apps import SIM_APPS
    from test_audit_support import varied_records

    from cxrsynth.data.dataset import write_dataset
    from cxrsynth.server.simulate import simulate_app

    for i in range(2):
        write_dataset(
            tmp_path / f"site{i}",
            varied_records(60, 10 + i, prefix=f"s{i}t", site=f"site{i}")
            + varied_records(30, 20 + i, split="holdout", prefix=f"s{i}h", site=f"site{i}"),
        )
    synthetic = [
        r.with_(site="synthetic", split="") for r in varied_records(30, 3, prefix="syn", split="", rare=False)
    ]
    write_dataset(tmp_path / "synthetic", synthetic)
    answer = tmp_path / "audit.json"
    status = simulate_app(
        "sim_apps:audit_server",
        "sim_apps:audit_sites",
        sites=2,
        run_config={
            "test-site-root": str(tmp_path),
            "test-synthetic": str(tmp_path / "synthetic"),
            "test-audit-out": str(answer),
        },
        log_path=tmp_path / "flower.log",
        modules=(SIM_APPS,),
    )
    assert status == "finished:completed", (tmp_path / "flower.log").read_text()[-3000:]
    audit = json.loads(answer.read_text())
    assert len(audit["sites"]) == 2 and audit["checks"]["image_copies"]["passed"]
    assert np.isfinite(audit["checks"]["image_closeness"]["share"])


def test_federated_audit_refuses_an_empty_synthetic_set_before_asking_the_sites(tmp_path):
    from cxrsynth.data.dataset import write_dataset
    from cxrsynth.errors import InputError
    from cxrsynth.server.audit_query import run_from_config

    write_dataset(tmp_path / "synthetic", [])
    # No grid is needed: the set is read, and refused, before any site is asked.
    with pytest.raises(InputError, match="synthetic dataset has no records"):
        run_from_config(None, {"audit-synthetic": str(tmp_path / "synthetic"), "audit-out": str(tmp_path / "audit")})
    assert not (tmp_path / "audit").exists()
