"""The whole gate on a real (tiny) generator: a memorizing one fails, a normally trained one passes;
and the `cxrsynth audit` command's outputs and exit codes."""

import json

import pytest
from test_audit_support import TinyGenerator, varied_records, write_audit_inputs

from cxrsynth.cli import main
from cxrsynth.config import AuditPolicy
from cxrsynth.data.dataset import write_dataset
from cxrsynth.privacy.audit.run import audit_records


@pytest.fixture(scope="module")
def real():
    return varied_records(300, 1, prefix="t"), varied_records(150, 2, split="holdout", prefix="h")


def test_over_trained_tiny_model_fails_the_gate(real):
    train, holdout = real
    handful = train[:24]
    model = TinyGenerator(24, "kde").fit(handful, steps=2000)
    audit, pairs = audit_records(
        model.generate(60), handful, holdout, AuditPolicy(bootstrap=100, skip=("phi",)), scorer=model.member_scores
    )
    assert not audit["passed"]
    failed = {n for n, c in audit["checks"].items() if not c["passed"]}
    assert {"image_closeness", "membership", "text_rare_ngrams", "text_near_duplicates"} <= failed
    assert audit["checks"]["image_closeness"]["share"] > 0.9
    assert audit["flagged"]["reports"]
    assert all(p[0].train_record_id in {r.record_id for r in handful} for p in pairs)


def _normal_gate(real, n_synthetic: int, policy: AuditPolicy):
    train, holdout = real
    model = TinyGenerator(16, "gaussian", side=64).fit(train, steps=300)
    audit, pairs = audit_records(model.generate(n_synthetic), train, holdout, policy, scorer=model.member_scores)
    failed = {n: c.get("reasons") for n, c in audit["checks"].items() if not c["passed"]}
    assert audit["passed"], failed
    assert audit["checks"]["phi"]["status"] == "ran"
    assert audit["checks"]["membership"]["status"] == "ran"
    assert audit["flagged"] == {"images": [], "reports": []} and not pairs


def test_normally_trained_tiny_model_passes_the_gate(real):
    # 150 synthetic records give the closeness share a +-0.08 interval, too wide for the default
    # bound of 0.55; every other threshold is the default.
    _normal_gate(real, 150, AuditPolicy(bootstrap=200, max_closeness_upper=0.65))


def test_audit_command_writes_json_and_report_and_exits_1_on_copies(tmp_path):
    real_dir, syn_dir = write_audit_inputs(tmp_path, n_train=60, n_holdout=30, n_synthetic=20)
    # Plant 3 exact training images into the synthetic set.
    from cxrsynth.data.dataset import read_dataset

    syn, _ = read_dataset(syn_dir)
    train = [r for r in read_dataset(real_dir)[0] if r.split == "train"]
    syn = syn + [
        train[i].with_(
            record_id=f"planted{i}", site="synthetic", split="", findings="Heart size is normal.", impression=""
        )
        for i in range(3)
    ]
    write_dataset(tmp_path / "syn2", syn)
    policy = tmp_path / "policy.yaml"
    policy.write_text("skip: [membership, phi]\nbootstrap: 50\n", encoding="utf-8")
    code = main(
        [
            "--quiet",
            "audit",
            "--synthetic",
            str(tmp_path / "syn2"),
            "--train",
            str(real_dir),
            "--holdout",
            str(real_dir),
            "--policy",
            str(policy),
            "--out",
            str(tmp_path / "a"),
        ]
    )
    assert code == 1
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert audit["passed"] is False and not audit["checks"]["image_copies"]["passed"]
    assert sorted(audit["flagged"]["images"]) == ["planted0", "planted1", "planted2"]
    assert audit["checks"]["membership"]["status"] == "skipped" and audit["checks"]["membership"]["passed"]
    assert set(audit["inputs"]["synthetic_files"]) >= {"manifest.csv"}
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 2 and "planted0" in html


def test_audit_command_bad_policy_and_bad_image_exit_2(tmp_path, capsys):
    real_dir, syn_dir = write_audit_inputs(tmp_path, n_train=30, n_holdout=20, n_synthetic=5)
    policy = tmp_path / "p.yaml"
    policy.write_text("max_copy_rat: 0.1\n", encoding="utf-8")
    args = [
        "audit",
        "--synthetic",
        str(syn_dir),
        "--train",
        str(real_dir),
        "--holdout",
        str(real_dir),
        "--out",
        str(tmp_path / "a"),
    ]
    assert main(args + ["--policy", str(policy)]) == 2
    assert "max_copy_rat" in capsys.readouterr().err
    img = sorted((syn_dir / "images").iterdir())[2]
    img.write_bytes(b"\x89PNG broken")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "manifest.csv, row 3" in err and img.name in err


def test_default_policy_file_is_the_policy_defaults():
    # The README cites the file as the reference: it must say what AuditPolicy() does.
    from pathlib import Path

    from cxrsynth.config import AuditPolicy
    from cxrsynth.privacy.audit.commands import load_policy

    assert load_policy(Path(__file__).parents[1] / "privacy" / "audit" / "default-policy.yaml") == AuditPolicy()
