"""Audit and evaluation results are typed where they cross modules, and their JSON reads as before."""

from __future__ import annotations

import json

import pytest

from cxrsynth.config import AuditPolicy
from cxrsynth.errors import InputError
from cxrsynth.eval.results import as_metrics
from cxrsynth.privacy.audit.results import as_audit, read_audit_file

AUDIT = {
    "format": "cxrsynth-audit/1",
    "passed": False,
    "checks": {
        "image_copies": {"passed": True, "status": "ran", "copies": 0, "copy_rate": 0.0, "reasons": []},
        "membership": {
            "passed": False,
            "status": "ran",
            "auc": 0.71,
            "auc_ci": [0.6, 0.8],
            "reasons": ["MIA AUC upper bound 0.8 exceeds 0.6"],
        },
    },
    "flagged": {"images": [], "reports": ["syn-000003"]},
    "dropped_labels": [],
    "sites": [{"site": "site0", "n_train": 35, "n_holdout": 41, "mia_auc": 0.71}],
    "policy": AuditPolicy().model_dump(mode="json"),
    "inputs": {"synthetic_files": {"manifest.csv": "ab" * 32}},
}


def test_an_audit_reads_back_as_written_with_its_figures_typed_and_kept(tmp_path):
    audit = as_audit(AUDIT)
    assert audit.checks["membership"].figure("auc") == 0.71 and audit.sites[0].n_holdout == 41
    assert isinstance(audit.policy, AuditPolicy) and audit.inputs.synthetic_files
    assert json.loads(audit.to_json()) == AUDIT
    (tmp_path / "audit.json").write_text(audit.to_json(), encoding="utf-8")
    assert read_audit_file(tmp_path / "audit.json") == audit


def test_a_malformed_audit_is_refused_naming_the_file_and_the_key(tmp_path):
    bad = {**AUDIT, "checks": {**AUDIT["checks"], "phi": {"status": "ran"}}}
    (tmp_path / "audit.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(InputError, match=r"(?s)audit.json.*checks\.phi\.passed"):
        read_audit_file(tmp_path / "audit.json")


def test_metrics_read_back_as_written():
    metrics = {
        "synthetic": {"dir": "syn", "records": 24, "families": ["ldm"]},
        "real": {"dir": "real", "train_records": 112, "holdout_records": 98},
        "settings": {"grid": 16},
        "status": {"fidelity": {"status": "ok", "detail": "", "seconds": 0.03}},
        "fidelity": {
            "extractor": "pixels",
            "feature_dim": 64,
            "fid_synthetic_vs_holdout": 0.03,
            "fid_holdout_halves": None,
            "n_synthetic": 24,
            "n_holdout": 98,
        },
        "utility": {"arms": {"real": {"macro_auroc": 0.5}}},
    }
    typed = as_metrics(metrics)
    assert typed.fidelity.fid_synthetic_vs_holdout == 0.03 and typed.status["fidelity"].status == "ok"
    assert typed.as_dict() == metrics
    with pytest.raises(InputError, match="real.holdout_records"):
        as_metrics({**metrics, "real": {"dir": "real", "train_records": 1}})
