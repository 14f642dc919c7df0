"""Membership inference from a model's own member scores, and the DP ledger."""

import numpy as np
from test_audit_support import TinyGenerator, varied_records

from cxrsynth.config import AuditPolicy
from cxrsynth.privacy.audit.ledger import dp_ledger_check, read_ledger
from cxrsynth.privacy.audit.site import membership


def test_over_trained_model_is_detected_normal_one_is_not():
    train = varied_records(300, 1, prefix="t")
    holdout = varied_records(150, 2, prefix="h")
    policy = AuditPolicy(bootstrap=100)
    # Memorizer: as many latent dimensions as training images, trained long on a handful.
    over = TinyGenerator(24, "kde").fit(train[:24], steps=800)
    m_over = membership(over.member_scores, train[:24], holdout, policy)
    normal = TinyGenerator(6, "gaussian").fit(train, steps=150)
    m_norm = membership(normal.member_scores, train, holdout, policy)
    assert m_over["auc"] > 0.9 and m_over["auc_ci"][0] > 0.8 and m_over["tpr_at_1pct_fpr"] > 0.2
    assert m_norm["auc_ci"][1] <= policy.max_mia_auc_upper
    lo, hi = m_norm["auc_ci"]
    assert lo <= m_norm["auc"] <= hi


def test_membership_without_scores_says_why():
    recs = varied_records(5, 1)
    assert membership(None, recs, recs, AuditPolicy())["status"] == "not_run"

    def not_built(records):
        raise NotImplementedError

    out = membership(not_built, recs, recs, AuditPolicy())
    assert out["status"] == "not_run" and "member_scores" in out["reason"]
    bad = membership(lambda r: np.full(len(r), np.nan), recs, recs, AuditPolicy())
    assert bad["status"] == "error"


def test_ledger_forms_and_budget():
    local = {"privacy_ledger": {"epsilon": 3.2, "delta": 1e-5, "steps": 100}}
    fed = {
        "privacy_ledger": {
            "sites": {"11": {"epsilon": 2.0, "delta": 1e-5}, "12": {"epsilon": 7.5}},
            "delta": 1e-5,
            "epsilon": 7.5,
        }
    }
    assert read_ledger(local)[0][0]["epsilon"] == 3.2
    entries, problems = read_ledger(fed)
    assert {e["site"]: e["epsilon"] for e in entries} == {"11": 2.0, "12": 7.5} and not problems
    assert dp_ledger_check(fed, AuditPolicy(require_dp=True, epsilon_budget=8))["passed"]
    over = dp_ledger_check(fed, AuditPolicy(require_dp=True, epsilon_budget=5))
    assert not over["passed"] and "7.5" in over["reasons"][0]
    none = dp_ledger_check({"step": 3}, AuditPolicy(require_dp=True, epsilon_budget=5))
    assert not none["passed"] and "privacy_ledger" in " ".join(none["reasons"])
    assert dp_ledger_check({"step": 3}, AuditPolicy())["passed"]
    odd = read_ledger({"privacy_ledger": {"sites": {"a": {"eps": 1}}}})
    assert odd[0] == [] and "epsilon" in odd[1][0]
