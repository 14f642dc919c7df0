"""The whole gate on a real (tiny) generator: a memorizing one fails, a normally trained one passes;
and the `cxrsynth audit` command's outputs and exit codes."""

import json

import numpy as np
import pytest
from test_audit_support import TinyGenerator, varied_records, write_audit_inputs

from cxrsynth.cli import main
from cxrsynth.config import SAMPLE_CHECKS, AuditPolicy
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
    # Every threshold is the default. (With closeness_test upper_bound, 150 synthetic records give
    # the share a +-0.08 interval, too wide for its bound of 0.55.)
    _normal_gate(real, 150, AuditPolicy(bootstrap=200))


ONLY_CLOSENESS = tuple(c for c in SAMPLE_CHECKS if c != "image_closeness")


def _closeness(synthetic, train, holdout, test: str = "permutation") -> dict:
    policy = AuditPolicy(bootstrap=200, closeness_test=test, copy_match="embedding", skip=ONLY_CLOSENESS)
    return audit_records(synthetic, train, holdout, policy)[0]["checks"]["image_closeness"]


def _draw(seed: int, n_synthetic: int = 200):
    """Training and holdout patients, and as many more from the same population as synthetic images."""
    train = varied_records(150, 100 + seed, prefix="t")
    holdout = varied_records(60, 200 + seed, split="holdout", prefix="h")
    others = [
        r.with_(site="synthetic", split="") for r in varied_records(n_synthetic, 300 + seed, prefix="s", split="")
    ]
    return train, holdout, others


def test_closeness_passes_a_model_that_never_saw_the_training_patients_whatever_the_reference_draw():
    # Synthetic images of patients in neither set: nothing to find. Their share nearer training
    # still swings with which patients the references are (0.39-0.59 over these 8 draws), which a
    # bootstrap over the synthetic images does not see: the CI-upper-bound rule refuses most
    # draws; the permutation test, which deals the reference patients, refuses none.
    passed = {"permutation": [], "upper_bound": []}
    for seed in range(8):
        train, holdout, others = _draw(seed)
        for test in passed:
            passed[test].append(_closeness(others, train, holdout, test)["passed"])
    assert all(passed["permutation"]), passed
    assert passed["upper_bound"].count(False) >= 3, passed


def test_closeness_refuses_a_model_that_reproduces_some_training_images():
    # 60 of 200 synthetic images are training images with a little noise (the copy check, which
    # catches them too, is left out). The share against an equal-sized training subsample hardly
    # moves (most copied images are not in the subsample); the permutation test reads every
    # training image.
    for seed in range(4):
        train, holdout, others = _draw(seed, 140)
        rng = np.random.default_rng(seed)
        near = [
            train[i].with_(
                record_id=f"n{i}",
                site="synthetic",
                split="",
                image=np.clip(train[i].image + rng.normal(0, 6, train[i].image.shape), 0, 255).astype(np.uint8),
            )
            for i in rng.choice(len(train), 60, replace=False)
        ]
        c = _closeness(others + near, train, holdout)
        assert not c["passed"] and c["p_value"] < 0.05, c["reasons"]
        assert c["nearest_train_share"] > c["nearest_train_expected"][1]
        assert c["share"] < 0.6  # the subsampled share alone would not say so


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
