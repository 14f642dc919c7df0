"""The release gate: a signed bundle of a synthetic dataset that passed its audit, or a refusal.

    bundle/
      data/              the synthetic dataset, byte for byte the one audited
      audit/             audit.json and report.html
      DATASET_CARD.md    how it was made, models, sites, epsilon, audit summary, intended use
      MANIFEST.json      SHA-256 of every other file in the bundle
      MANIFEST.sig       Ed25519 signature of MANIFEST.json's bytes

`cxrsynth release verify` recomputes every hash and checks the signature: a changed, added or
missing byte anywhere in the bundle fails it (exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cxrsynth.errors import CheckFailed, InputError

MANIFEST, SIGNATURE, CARD = "MANIFEST.json", "MANIFEST.sig", "DATASET_CARD.md"
MANIFEST_FORMAT = "cxrsynth-release/1"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hashes(root: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """relative POSIX path -> SHA-256 of every regular file under root (symlinks are refused)."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel in exclude:
            continue
        if p.is_symlink():
            raise InputError(f"{p}: symbolic links are not allowed in a dataset or bundle (they could point anywhere).")
        if p.is_file():
            out[rel] = sha256_file(p)
    return out


# ---- keys ----------------------------------------------------------------------------------------
def load_or_make_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key at `path` (PEM); made there, with its public key at path.pub, if missing."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as e:
            raise InputError(f"{path}: not an unencrypted PEM private key ({e}).") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InputError(f"{path}: a {type(key).__name__}; the release is signed with Ed25519 keys only.")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public_path(path).write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def public_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".pub")


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path}: public key file not found.") from None
    except ValueError as e:
        raise InputError(f"{path}: not a PEM public key ({e}).") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: a {type(key).__name__}; release bundles are signed with Ed25519.")
    return key


# ---- the gate ------------------------------------------------------------------------------------
def read_audit(audit_dir: Path) -> dict:
    path = audit_dir / "audit.json"
    try:
        audit = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no audit here; run `cxrsynth audit ... --out {audit_dir}` first.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable audit ({e}).") from None
    for key in ("passed", "checks", "inputs"):
        if key not in audit:
            raise InputError(f"{path}: key {key!r} is missing; was this written by `cxrsynth audit`?")
    return audit


def gate(synthetic: Path, audit: dict) -> None:
    """Raise CheckFailed unless the audit passed and covered exactly the files of `synthetic`."""
    if not audit["passed"]:
        failed = [f"{n}: {'; '.join(c.get('reasons', []))}" for n, c in audit["checks"].items() if not c["passed"]]
        raise CheckFailed("release refused: the audit did not pass.\n  " + "\n  ".join(failed))
    audited = audit["inputs"].get("synthetic_files")
    if not audited:
        raise CheckFailed("release refused: the audit does not record the hashes of the files it audited.")
    now = tree_hashes(synthetic)
    changed = sorted(k for k in now.keys() & audited.keys() if now[k] != audited[k])
    added = sorted(now.keys() - audited.keys())
    missing = sorted(audited.keys() - now.keys())
    if changed or added or missing:
        lines = [f"{what}: {', '.join(files[:10])}{' ...' if len(files) > 10 else ''}" for what, files in (("changed since the audit", changed), ("not audited", added), ("audited but missing", missing)) if files]
        raise CheckFailed(f"release refused: {synthetic} is not the dataset that was audited.\n  " + "\n  ".join(lines) + "\n  Audit these files again.")


def dataset_card(synthetic: Path, audit: dict) -> str:
    import csv

    with open(synthetic / "manifest.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    provenance = sorted({r.get("provenance", "").split(";seed=")[0] for r in rows if r.get("provenance")})
    checks = audit["checks"]
    dp = checks.get("dp_ledger", {})
    eps = dp.get("epsilon_max")
    lines = [
        "# Synthetic chest X-ray dataset (cxrsynth)",
        "",
        f"Released {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. {len(rows)} synthetic studies: frontal images, free-text reports, 14 CheXpert/MIMIC-CXR labels.",
        "",
        "## How it was made",
        "Generative models were trained across hospitals with federated learning (Flower); no patient record left its hospital. "
        "Reports were de-identified at each site before training. The records were then sampled from the trained model.",
        "",
        "Models (family, checkpoint hash): " + (", ".join(provenance) or "not recorded in the manifest"),
        "",
        "## Sites",
        "| site | training records | holdout records |",
        "|---|---|---|",
        *[f"| {s['site']} | {s['n_train']} | {s['n_holdout']} |" for s in audit.get("sites", [])],
        "",
        "## Differential privacy",
        (f"Largest per-site epsilon {eps:.3g} at delta {max(e['delta'] for e in dp['sites']):.1e}." if eps is not None else "No DP ledger: trained without differential privacy (or its ledger was not audited).")
        + (f" Policy budget: {dp['epsilon_budget']}." if dp.get("epsilon_budget") else ""),
        "",
        "## Privacy audit summary",
        "| check | result | status |",
        "|---|---|---|",
        *[f"| {n} | {'pass' if c['passed'] else 'FAIL'} | {c.get('status', '')} |" for n, c in checks.items()],
        "",
        f"Checks left out by policy: {', '.join(audit.get('policy', {}).get('skip', [])) or 'none'}. Full figures: audit/audit.json, audit/report.html.",
        "",
        "## Intended use",
        "Method development, teaching, software testing and data augmentation research. Not for clinical decisions, "
        "not for estimating disease prevalence, and not a substitute for real data in validating a clinical model. "
        "Do not attempt to link records to real patients.",
        "",
        "## Verifying this bundle",
        "`cxrsynth release verify <bundle> --public-key <signer's public key>` checks the signature of MANIFEST.json and every file's SHA-256.",
    ]
    return "\n".join(lines) + "\n"


def make_bundle(synthetic: Path, audit_dir: Path, key_path: Path, out: Path) -> Path:
    audit = read_audit(audit_dir)
    gate(synthetic, audit)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: exists and is not empty; give a new --out for the bundle.")
    key = load_or_make_key(key_path)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(synthetic, tmp / "data")
    (tmp / "audit").mkdir()
    for name in ("audit.json", "report.html"):
        if (audit_dir / name).is_file():
            shutil.copy2(audit_dir / name, tmp / "audit" / name)
    (tmp / CARD).write_text(dataset_card(synthetic, audit), encoding="utf-8")
    gate(tmp / "data", audit)  # the copy is what gets signed: check it too
    manifest = {"format": MANIFEST_FORMAT, "files": tree_hashes(tmp)}
    body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    (tmp / MANIFEST).write_bytes(body)
    (tmp / SIGNATURE).write_bytes(key.sign(body).hex().encode("ascii") + b"\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def verify_bundle(bundle: Path, public_key: Path) -> int:
    """Number of files verified; raise CheckFailed naming every discrepancy."""
    key = load_public_key(public_key)
    try:
        body = (bundle / MANIFEST).read_bytes()
        sig = bytes.fromhex((bundle / SIGNATURE).read_text(encoding="ascii").strip())
    except FileNotFoundError as e:
        raise CheckFailed(f"verification failed: {e.filename} is missing.") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckFailed(f"verification failed: {bundle / SIGNATURE} is not a hex signature.") from None
    try:
        key.verify(sig, body)
    except InvalidSignature:
        raise CheckFailed(f"verification failed: the signature of {bundle / MANIFEST} does not match this public key (manifest altered, or another signer).") from None
    listed = json.loads(body)["files"]
    now = tree_hashes(bundle, exclude=(MANIFEST, SIGNATURE))
    problems = [f"changed: {k}" for k in sorted(now.keys() & listed.keys()) if now[k] != listed[k]]
    problems += [f"added: {k}" for k in sorted(now.keys() - listed.keys())]
    problems += [f"missing: {k}" for k in sorted(listed.keys() - now.keys())]
    if problems:
        raise CheckFailed(f"verification failed for {bundle}:\n  " + "\n  ".join(problems[:50]))
    return len(listed)


# ---- commands ------------------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    out = make_bundle(Path(args.synthetic), Path(args.audit), Path(args.key or Path(args.out).with_name("release-key.pem")), Path(args.out))
    print(f"release bundle written to {out}; verify with: cxrsynth release verify {out} --public-key {public_path(Path(args.key or Path(args.out).with_name('release-key.pem')))}")
    return 0


def verify_command(args: argparse.Namespace) -> int:
    n = verify_bundle(Path(args.dir), Path(args.public_key))
    print(f"{args.dir}: signature valid, {n} files match the manifest.")
    return 0
