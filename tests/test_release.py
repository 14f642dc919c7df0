"""The release gate: refusal without a passing audit of exactly these files; a signed bundle that
`release verify` rejects on any changed, added or missing byte."""

import json
import shutil

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_audit_support import make_key, write_audit_inputs

from cxrsynth.cli import main


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A real passing audit, sealed with the steward's key. Its policy relaxes the closeness bound:
    20 synthetic records give a wide interval, and these tests are about the release mechanics,
    not the thresholds."""
    root = tmp_path_factory.mktemp("rel")
    real_dir, syn_dir = write_audit_inputs(root, n_train=60, n_holdout=30, n_synthetic=20)
    policy = root / "policy.yaml"
    policy.write_text("skip: [membership, phi]\nmax_closeness_upper: 0.95\nbootstrap: 50\n", encoding="utf-8")
    key = make_key(root)
    code = main(
        [
            "--quiet",
            "audit",
            "--synthetic",
            str(syn_dir),
            "--train",
            str(real_dir),
            "--holdout",
            str(real_dir),
            "--policy",
            str(policy),
            "--out",
            str(root / "audit"),
            "--key",
            str(key),
        ]
    )
    assert code == 0
    return root, syn_dir, root / "audit"


def _copy(audited, tmp_path):
    root, syn_dir, audit_dir = audited
    shutil.copytree(syn_dir, tmp_path / "syn")
    shutil.copytree(audit_dir, tmp_path / "audit")
    for name in ("steward.pem", "steward.pem.pub", "steward.pem.audits.jsonl"):
        shutil.copy(root / name, tmp_path / name)
    return tmp_path / "syn", tmp_path / "audit"


def _release(syn, audit, tmp_path, out="bundle"):
    return main(
        [
            "release",
            "--synthetic",
            str(syn),
            "--audit",
            str(audit),
            "--key",
            str(tmp_path / "steward.pem"),
            "--out",
            str(tmp_path / out),
        ]
    )


def test_release_refuses_an_edited_audit_and_recomputes_the_verdict(audited, tmp_path, capsys):
    from cxrsynth.errors import CheckFailed
    from cxrsynth.privacy.release import gate, read_audit

    syn, audit = _copy(audited, tmp_path)
    data = json.loads((audit / "audit.json").read_text())
    # A failing figure with a "passed" verdict: the gate recomputes the verdict from the figures.
    data["checks"]["image_copies"].update(copies=4, copy_rate=0.2)
    with pytest.raises(CheckFailed, match="image_copies: copy rate 0.2000 exceeds max_copy_rate"):
        gate(syn, data)
    # A check left out without the policy's skip list saying so fails too, and so does a missing one.
    skipped = {**data, "checks": {**data["checks"], "image_closeness": {"passed": True, "status": "skipped"}}}
    with pytest.raises(CheckFailed, match="image_closeness: marked skipped"):
        gate(syn, skipped)
    with pytest.raises(CheckFailed, match="phi: missing from the audit"):
        gate(syn, {**data, "checks": {k: v for k, v in data["checks"].items() if k != "phi"}})
    # On disk, any edit of the sealed audit is caught by its seal before anything else.
    data["passed"] = True
    (audit / "audit.json").write_text(json.dumps(data))
    assert _release(syn, audit, tmp_path) == 1
    err = capsys.readouterr().err
    assert "audit.json" in err and "changed after the audit sealed it" in err
    assert not (tmp_path / "bundle").exists()
    assert read_audit(audit).checks["image_copies"].figure("copies") == 4


def test_release_refuses_files_the_audit_did_not_cover(audited, tmp_path, capsys):
    syn, audit = _copy(audited, tmp_path)
    img = sorted((syn / "images").iterdir())[0]
    blob = bytearray(img.read_bytes())
    blob[-5] ^= 1
    img.write_bytes(bytes(blob))
    assert _release(syn, audit, tmp_path) == 1
    assert f"changed since the audit: images/{img.name}" in capsys.readouterr().err
    img.unlink()
    shutil.copy(sorted((syn / "images").iterdir())[0], syn / "extra.png")
    assert _release(syn, audit, tmp_path) == 1
    err = capsys.readouterr().err
    assert "not audited: extra.png" in err and f"audited but missing: images/{img.name}" in err


def test_bundle_verifies_and_any_byte_change_fails(audited, tmp_path, capsys):
    syn, audit = _copy(audited, tmp_path)
    assert _release(syn, audit, tmp_path) == 0
    bundle, pub = tmp_path / "bundle", tmp_path / "steward.pem.pub"
    assert {"data", "audit", "DATASET_CARD.md", "MANIFEST.json", "MANIFEST.sig"} <= {p.name for p in bundle.iterdir()}
    card = (bundle / "DATASET_CARD.md").read_text()
    assert "site0" in card and "Intended use" in card and "image_copies" in card
    verify = ["release", "verify", str(bundle), "--public-key", str(pub)]
    assert main(verify) == 0

    target = bundle / "data" / "manifest.csv"
    original = target.read_bytes()
    target.write_bytes(original.replace(b"syn", b"sYn", 1))
    assert main(verify) == 1 and "changed: data/manifest.csv" in capsys.readouterr().err
    target.write_bytes(original)
    (bundle / "audit" / "notes.txt").write_text("x")
    assert main(verify) == 1 and "added: audit/notes.txt" in capsys.readouterr().err
    (bundle / "audit" / "notes.txt").unlink()
    card_bytes = (bundle / "DATASET_CARD.md").read_bytes()
    (bundle / "DATASET_CARD.md").unlink()
    assert main(verify) == 1 and "missing: DATASET_CARD.md" in capsys.readouterr().err
    (bundle / "DATASET_CARD.md").write_bytes(card_bytes)
    assert main(verify) == 0

    # Rewriting the manifest to match a change breaks the signature.
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    manifest["files"]["DATASET_CARD.md"] = "0" * 64
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    assert main(verify) == 1 and "signature" in capsys.readouterr().err

    other = tmp_path / "other.pub"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert main(["release", "verify", str(bundle), "--public-key", str(other)]) == 1


def test_release_needs_its_arguments_and_a_real_key(audited, tmp_path, capsys):
    syn, audit = _copy(audited, tmp_path)
    assert main(["release", "--synthetic", str(syn)]) == 2
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    assert (
        main(
            [
                "release",
                "--synthetic",
                str(syn),
                "--audit",
                str(audit),
                "--key",
                str(bad),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "bad.pem" in capsys.readouterr().err
