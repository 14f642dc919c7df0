"""The steward's seal on an audit: an Ed25519 signature over the SHA-256 of audit.json and report.html.

The audit signs its own output when it is given the steward's key (`cxrsynth audit --key`, or the
federated audit's run-config key `audit-steward-key`), so the release gate, holding the same key,
can tell that the audit it reads is the one that ran: an edited verdict, figure, policy or page
fails the seal. A seal by any other key is refused, naming both fingerprints.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cxrsynth.errors import CheckFailed, InputError

SEAL = "audit.sig"
SEAL_FORMAT = "cxrsynth-audit-seal/1"
SEALED = ("audit.json", "report.html")


def _body(files: dict[str, str], fp: str) -> bytes:
    return json.dumps(
        {"format": SEAL_FORMAT, "files": files, "fingerprint": fp}, sort_keys=True, separators=(",", ":")
    ).encode("utf-8")


def _hashes(audit_dir: Path) -> dict[str, str]:
    from cxrsynth.privacy.release import sha256_file

    return {name: sha256_file(audit_dir / name) for name in SEALED if (audit_dir / name).is_file()}


def seal_audit(audit_dir: Path, key: Ed25519PrivateKey) -> Path:
    from cxrsynth.privacy.keys import fingerprint

    files = _hashes(audit_dir)
    fp = fingerprint(key)
    seal = {"format": SEAL_FORMAT, "files": files, "fingerprint": fp, "signature": key.sign(_body(files, fp)).hex()}
    path = audit_dir / SEAL
    path.write_text(json.dumps(seal, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def check_seal(audit_dir: Path, public: Ed25519PublicKey) -> str:
    """The signer's fingerprint once the seal verifies with `public` and the sealed files are
    unchanged; CheckFailed naming what does not hold."""
    from cxrsynth.privacy.keys import fingerprint

    path = audit_dir / SEAL
    expected = fingerprint(public)
    try:
        seal = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckFailed(
            f"release refused: {audit_dir} holds no {SEAL}; the audit was not sealed by the steward's key, so the gate cannot tell it was not edited. "
            "Run the audit again with --key (the key the release is signed with)."
        ) from None
    except (ValueError, UnicodeDecodeError, IsADirectoryError):
        raise CheckFailed(f"release refused: {path} is not a readable audit seal.") from None
    if not isinstance(seal, dict) or seal.get("format") != SEAL_FORMAT or not isinstance(seal.get("files"), dict):
        raise CheckFailed(f"release refused: {path} is not a cxrsynth audit seal ({SEAL_FORMAT}).")
    signer = str(seal.get("fingerprint", ""))
    if signer != expected:
        raise CheckFailed(
            f"release refused: the audit was sealed by key {signer or '(none named)'}, not by the release key {expected}; the steward who releases must have run the audit."
        )
    try:
        public.verify(bytes.fromhex(str(seal.get("signature", ""))), _body(seal["files"], signer))
    except (InvalidSignature, ValueError):
        raise CheckFailed(
            f"release refused: the signature in {path} does not verify with the release key {expected} (the seal was edited)."
        ) from None
    now = _hashes(audit_dir)
    changed = sorted(n for n in set(now) | set(seal["files"]) if now.get(n) != seal["files"].get(n))
    if changed:
        raise CheckFailed(f"release refused: {', '.join(changed)} in {audit_dir} changed after the audit sealed it.")
    return signer


def require_audit_dir(audit_dir: Path) -> None:
    if not audit_dir.is_dir():
        raise InputError(
            f"--audit {audit_dir}: {'is a file' if audit_dir.exists() else 'does not exist'}; give the folder `cxrsynth audit --out` wrote."
        )
