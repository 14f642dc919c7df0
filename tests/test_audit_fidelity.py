"""The gate's fidelity check (issue 17): noise images labelled with real label sets are refused,
naming the labels; a useful set (phantom studies of other patients, standing in for a good
generator) passes; a label the images do not carry is dropped from the release or refuses it, as
the policy says; reports that do not state their labels fail."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from test_audit_support import make_key

from cxrsynth.cli import main
from cxrsynth.config import AuditPolicy
from cxrsynth.data.dataset import write_dataset
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import LABELS
from cxrsynth.data.split import split_by_patient
from cxrsynth.models.ldm.prompts import prompt_from_labels
from cxrsynth.privacy.audit.run import audit_records

SIZE = 32
# 150 synthetic records give the closeness share a wide interval; these tests are about labels
# (the PHI scan, with its own tests, is left out to keep them fast).
POLICY = "skip: [membership, phi]\nmax_closeness_upper: 0.7\nbootstrap: 50\n"


def _synthetic(records, prefix="g"):
    """Phantom studies of other patients as a generator's output: their own labels, a report that
    states them (the LDM's label templates), no PHI."""
    return [
        r.with_(
            record_id=f"{prefix}{i:04d}",
            patient_id=f"{prefix}{i:04d}",
            study_id=f"{prefix}{i:04d}",
            site="synthetic",
            split="",
            findings=prompt_from_labels(r.labels),
            impression="",
            phi_meta={},
        )
        for i, r in enumerate(records)
    ]


def _texture(rng) -> np.ndarray:
    coarse = rng.normal(0, 1, (6, 6)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((SIZE, SIZE), Image.BICUBIC))
    return (np.clip(0.5 + 0.15 * smooth + rng.normal(0, 0.05, (SIZE, SIZE)), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    real = split_by_patient(make_phantom(300, sites=1, seed=0, image_size=SIZE, lateral=False), 0.25, 0)
    write_dataset(root / "real", [r.with_(phi_meta={}) for r in real])
    good = _synthetic(make_phantom(150, sites=1, seed=5, image_size=SIZE, lateral=False))
    rng = np.random.default_rng(1)
    noise = [r.with_(image=_texture(rng)) for r in good]
    write_dataset(root / "good", good)
    write_dataset(root / "noise", noise)
    (root / "policy.yaml").write_text(POLICY, encoding="utf-8")
    make_key(root)
    return root, real, good


def _audit(root, synthetic, out, policy, register):
    """Each test keeps its own register of audits: these sets name no model, so one register would
    count them all against the same training records (cxrsynth.privacy.audit.register)."""
    return main(
        [
            "--quiet",
            "audit",
            "--synthetic",
            str(synthetic),
            "--train",
            str(root / "real"),
            "--holdout",
            str(root / "real"),
            "--policy",
            str(policy),
            "--out",
            str(out),
            "--key",
            str(root / "steward.pem"),
            "--register",
            str(register),
        ]
    )


def _manifest(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_noise_images_with_real_label_sets_are_refused_naming_the_labels(sets, capsys, tmp_path):
    root, _, _ = sets
    assert _audit(root, root / "noise", root / "audit-noise", root / "policy.yaml", tmp_path / "audits.jsonl") == 1
    audit = json.loads((root / "audit-noise" / "audit.json").read_text())
    fid = audit["checks"]["label_fidelity"]
    assert not fid["passed"] and audit["checks"]["report_labels"]["passed"]
    assert fid["macro_auroc"] < 0.6
    reason = " ".join(fid["reasons"])
    for name in ("Cardiomegaly", "Pleural Effusion", "Edema"):
        assert name in reason
    assert "label_fidelity" in capsys.readouterr().err
    page = (root / "audit-noise" / "report.html").read_text()
    assert "Label fidelity" in page and "Cardiomegaly" in page
    key = root / "steward.pem"
    assert (
        main(
            [
                "release",
                "--synthetic",
                str(root / "noise"),
                "--audit",
                str(root / "audit-noise"),
                "--key",
                str(key),
                "--register",
                str(tmp_path / "audits.jsonl"),
                "--out",
                str(tmp_path / "bundle"),
            ]
        )
        == 1
    )
    assert "label_fidelity" in capsys.readouterr().err and not (tmp_path / "bundle").exists()


def test_useful_images_pass_and_the_card_lists_per_label_fidelity(sets, tmp_path):
    root, _, good = sets
    assert _audit(root, root / "good", root / "audit-good", root / "policy.yaml", tmp_path / "audits.jsonl") == 0
    audit = json.loads((root / "audit-good" / "audit.json").read_text())
    fid = audit["checks"]["label_fidelity"]
    assert fid["passed"] and fid["macro_auroc"] > 0.8
    # Most labels are judged, and a classifier trained on real images sees them in these images.
    assert len(fid["labels"]) >= 10 and all(
        f["real_auroc"] is None or f["real_auroc"] > 0.6 for f in fid["labels"].values()
    )
    assert audit["checks"]["report_labels"]["macro_positive_f1"] > 0.9
    key = root / "steward.pem"
    assert (
        main(
            [
                "release",
                "--synthetic",
                str(root / "good"),
                "--audit",
                str(root / "audit-good"),
                "--key",
                str(key),
                "--register",
                str(tmp_path / "audits.jsonl"),
                "--out",
                str(tmp_path / "bundle"),
            ]
        )
        == 0
    )
    card = (tmp_path / "bundle" / "DATASET_CARD.md").read_text()
    assert "## Label fidelity" in card
    for name in fid["labels"]:
        line = next(ln for ln in card.splitlines() if ln.startswith(f"| {name} |"))
        assert f"{fid['labels'][name]['auroc']:.3f}" in line
    rows = _manifest(tmp_path / "bundle" / "data" / "manifest.csv")
    kept = [n for n in LABELS if n not in audit["dropped_labels"]]
    assert [[r[n] for n in kept] for r in rows] == [
        [("" if g.labels[n] is None else str(g.labels[n])) for n in kept] for g in good
    ]


@pytest.mark.parametrize("weak_labels", ["drop", "refuse"])
def test_a_label_the_images_do_not_carry_is_dropped_or_refuses_as_the_policy_says(sets, tmp_path, weak_labels, capsys):
    root, _, good = sets
    # Cardiomegaly's values shuffled across records: the report still states the record's labels
    # (so reports agree), but the images no longer show it.
    perm = np.random.default_rng(3).permutation(len(good))
    shuffled = [
        r.with_(labels={**r.labels, "Cardiomegaly": good[perm[i]].labels["Cardiomegaly"]}) for i, r in enumerate(good)
    ]
    shuffled = [r.with_(findings=prompt_from_labels(r.labels)) for r in shuffled]
    write_dataset(tmp_path / "syn", shuffled)
    (tmp_path / "p.yaml").write_text(POLICY + f"weak_labels: {weak_labels}\n", encoding="utf-8")
    code = _audit(root, tmp_path / "syn", tmp_path / "a", tmp_path / "p.yaml", tmp_path / "audits.jsonl")
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    fid = audit["checks"]["label_fidelity"]
    assert fid["labels"]["Cardiomegaly"]["auroc"] < 0.6 < fid["macro_auroc"]
    key = root / "steward.pem"
    release = [
        "release",
        "--synthetic",
        str(tmp_path / "syn"),
        "--audit",
        str(tmp_path / "a"),
        "--key",
        str(key),
        "--register",
        str(tmp_path / "audits.jsonl"),
        "--out",
        str(tmp_path / "bundle"),
    ]
    if weak_labels == "refuse":
        assert code == 1 and not fid["passed"] and "Cardiomegaly" in " ".join(fid["reasons"])
        capsys.readouterr()
        assert main(release) == 1 and "Cardiomegaly" in capsys.readouterr().err
        return
    assert code == 0 and fid["passed"] and "Cardiomegaly" in audit["dropped_labels"]
    assert main(release) == 0
    rows = _manifest(tmp_path / "bundle" / "data" / "manifest.csv")
    assert all(r["Cardiomegaly"] == "" for r in rows)
    assert any(r["Pleural Effusion"] == "1" for r in rows)  # a carried label keeps its values
    card = (tmp_path / "bundle" / "DATASET_CARD.md").read_text()
    assert "Cardiomegaly" in card.split("Dropped labels")[1].splitlines()[0]
    assert main(["release", "verify", str(tmp_path / "bundle"), "--public-key", str(key) + ".pub"]) == 0


def test_reports_that_do_not_state_their_labels_fail_naming_the_labels(sets):
    _, real, good = sets
    train = [r for r in real if r.split == "train"]
    holdout = [r for r in real if r.split == "holdout"]
    # Each report belongs to another record: the images still carry the labels, the reports do not.
    swapped = [r.with_(findings=good[(i + 7) % len(good)].findings) for i, r in enumerate(good)]
    policy = AuditPolicy(bootstrap=30, skip=("membership", "phi", "label_fidelity"), max_closeness_upper=0.7)
    audit, _ = audit_records(swapped, train, holdout, policy)
    text = audit["checks"]["report_labels"]
    assert not text["passed"] and text["macro_positive_f1"] < 0.6
    assert "Cardiomegaly" in " ".join(text["reasons"])
    assert audit["checks"]["label_fidelity"]["status"] == "skipped"
