"""The steward's register of audits: every sealed audit, passed or failed, one signed line each.

A release gate that reads one audit can be worked by drawing samples until one passes: the
closeness test refuses a memorizing model most of the time, not every time, and a sample with no
rare n-gram or PHI finding can follow one with several. So every audit the steward seals is also
written to a register beside the steward's key (`KEY.audits.jsonl`, or `--register FILE`), and the
audit carries a check, `earlier_audits`: how many earlier audits of the same model (by the
checkpoint that made the samples; without one, of the same training records) failed. The policy's
`max_failed_audits` (default 0) is how many the gate tolerates: by default a model whose sample
failed its audit is not released by sampling it again; it is trained again (which the sites' DP
ledgers and audit query budgets count) or the steward raises the tolerance, which the dataset
card then shows.

Each line holds its number, the SHA-256 of the line before it and the steward's Ed25519 signature,
so an edited, reordered or removed line breaks the register, and a register cut short no longer
holds the audits that cite it: the release gate refuses an audit the register does not hold, and
counts the failures of its model at release time (later audits included).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cxrsynth.errors import CheckFailed, InputError

FORMAT = "cxrsynth-audit-register/1"
CHECK = "earlier_audits"
UNREGISTERED = {
    "status": "not_registered",
    "note": "the audit was not sealed (no steward key), so no register of earlier audits was read; a release refuses an unsealed audit",
}


def default_path(key_path: str | Path) -> Path:
    """The register that goes with a key file: every audit sealed with the key is counted in it."""
    return Path(key_path).with_name(Path(key_path).name + ".audits.jsonl")


def subject(audit) -> str:
    """What repeated audits are counted against: the model that made the samples (the audited
    checkpoint, else the checkpoints the synthetic records name), else the training records."""
    if not isinstance(audit, dict):  # the typed Audit the gate reads
        audit = audit.model_dump(mode="json")
    inputs = audit.get("inputs") or {}
    if inputs.get("checkpoint_hash"):
        return f"model {inputs['checkpoint_hash']}"
    if inputs.get("models"):
        return "model " + ", ".join(sorted(inputs["models"]))
    if inputs.get("training_digest"):
        return f"training records {inputs['training_digest'][:16]}"
    return "training records of sites " + ", ".join(sorted(s["site"] for s in audit.get("sites") or []))


def models_of(records) -> list[str]:
    """The checkpoints the synthetic records name in their provenance (`checkpoint=...`)."""
    found = set()
    for r in records:
        for part in (r.provenance or "").split(";"):
            if part.startswith("checkpoint="):
                found.add(part[len("checkpoint=") :])
    return sorted(found)


def training_digest(records) -> str:
    """SHA-256 of the training records' sites and ids: the training set an unattributed sample is counted against."""
    return _digest("\n".join(sorted(f"{r.site}/{r.record_id}" for r in records)).encode("utf-8"))


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _body(entry: dict) -> bytes:
    return json.dumps({k: v for k, v in entry.items() if k != "signature"}, sort_keys=True).encode("utf-8")


def read(path: Path, public: Ed25519PublicKey) -> list[dict]:
    """The register's entries, every line's number, chain and signature verified; [] when there is none yet."""
    from cxrsynth.privacy.keys import fingerprint

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; the register of audits is a file (--register FILE).") from None
    except OSError as e:
        raise InputError(
            f"{path}: the steward's register of audits cannot be read ({e.strerror}); give --register FILE "
            "(run-config key audit-register)."
        ) from None
    expected_fp, entries, prev = fingerprint(public), [], ""
    for n, line in enumerate(raw.splitlines(keepends=True), 1):
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise CheckFailed(
                f"{path}, line {n}: not a register entry (the register was edited or cut mid-line)."
            ) from None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            raise CheckFailed(f"{path}, line {n}: not a cxrsynth audit register entry ({FORMAT}).")
        if entry.get("fingerprint") != expected_fp:
            raise CheckFailed(
                f"{path}, line {n}: signed by key {entry.get('fingerprint') or '(none named)'}, not the steward's key {expected_fp}; "
                "a register belongs to one key."
            )
        try:
            public.verify(bytes.fromhex(str(entry.get("signature", ""))), _body(entry))
        except (InvalidSignature, ValueError):
            raise CheckFailed(f"{path}, line {n}: its signature does not verify (the line was edited).") from None
        if entry.get("n") != n or entry.get("prev") != prev:
            where = f"it does not follow line {n - 1}" if n > 1 else "it is not a register's first line"
            raise CheckFailed(f"{path}, line {n}: {where} (a line before it was edited, removed or reordered).")
        entries.append(entry)
        prev = _digest(line)
    return entries


def failed_sample(entry: dict) -> bool:
    """Did the audit find something in its sample? (An audit refused only for its model's earlier
    failures is not counted again.)"""
    return any(name != CHECK for name in entry["failed"])


def earlier(entries: list[dict], about: str) -> dict:
    """The `earlier_audits` check's figures for a new audit of `about` (its verdict: verdict.earlier_audits)."""
    same = [e for e in entries if e["subject"] == about]
    return {
        "status": "ran",
        "subject": about,
        "attempt": len(same) + 1,
        "failed_before": sum(failed_sample(e) for e in same),
        "earlier": [
            {"line": e["n"], "time": e["time"], "passed": e["passed"], "failed": e["failed"]}
            for e in same
            if failed_sample(e)
        ],
    }


def writable(path: Path) -> None:
    """Before an audit runs: its register can be appended to (created empty if new), so a sealed
    audit is never computed only to fail at the end (a key mounted read-only, say)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    except OSError as e:
        raise InputError(
            f"{path}: the steward's register of audits cannot be written ({e.strerror}); every sealed audit is "
            "written to it. Give --register FILE (run-config key audit-register) in a folder the steward can write."
        ) from None


def append(path: Path, key: Ed25519PrivateKey, audit: dict, audit_sha256: str) -> dict:
    """Write the sealed audit's line at the end of the register (created mode 0600 if new), under a
    lock so two audits sealing at once keep the chain."""
    import fcntl

    from cxrsynth.privacy.keys import fingerprint

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        entries = read(path, key.public_key())
        f.seek(0)
        lines = f.read().splitlines(keepends=True)
        entry = {
            "format": FORMAT,
            "n": len(entries) + 1,
            "prev": _digest(lines[-1]) if lines else "",
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "subject": subject(audit),
            "audit_sha256": audit_sha256,
            "synthetic_files": _digest(
                json.dumps(audit["inputs"].get("synthetic_files", {}), sort_keys=True).encode()
            ),
            "passed": bool(audit["passed"]),
            "failed": sorted(n for n, c in audit["checks"].items() if not c["passed"]),
            "fingerprint": fingerprint(key),
        }
        entry["signature"] = key.sign(_body(entry)).hex()
        f.write((json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    return entry


def history(path: Path, public: Ed25519PublicKey, audit_json: Path, audit: dict, tolerated: int) -> dict:
    """At release: the register's line of this audit and the failures of its model up to now.
    CheckFailed when the register does not hold the audit, or holds more failed audits of its
    model than the policy tolerates (audits after this one count too)."""
    from cxrsynth.privacy.release import sha256_file

    if not path.is_file():
        raise CheckFailed(
            f"release refused: no register of audits at {path}; every audit sealed with the steward's key is written to it, "
            "so this audit was run with another register (give it with --register) or the register was removed."
        )
    entries = read(path, public)
    digest = sha256_file(audit_json)
    mine = next((e for e in entries if e["audit_sha256"] == digest), None)
    about = subject(audit)
    if mine is None or mine["subject"] != about or not mine["passed"]:
        raise CheckFailed(
            f"release refused: the register {path} holds no passing audit with the SHA-256 of {audit_json} "
            "(audits are registered when they are sealed: run the audit again with this register)."
        )
    same = [e for e in entries if e["subject"] == about]
    failed = [e for e in same if failed_sample(e)]
    if len(failed) > tolerated:
        listed = "; ".join(f"line {e['n']} ({e['time']}): {', '.join(e['failed'])}" for e in failed[:10])
        raise CheckFailed(
            f"release refused: {len(failed)} audit(s) of {about} failed in the register {path} ({listed}); "
            f"the policy tolerates max_failed_audits {tolerated}: a model whose sample failed is not released by sampling it again."
        )
    return {
        "register": path.name,
        "subject": about,
        "line": mine["n"],
        "audits": len(same),
        "failed": len(failed),
        "head": _digest(path.read_bytes().splitlines(keepends=True)[-1]),
    }


def register_for(key_path: Optional[str | Path], register: Optional[str | Path]) -> Optional[Path]:
    """The register a command uses: the one given, else the one beside its key (None without a key)."""
    if register:
        return Path(register)
    return default_path(key_path) if key_path else None


def command(args) -> int:
    """`cxrsynth release audits`: the register, line by line, and each model's count; exit 1 when
    a line does not verify."""
    from cxrsynth.privacy.keys import key_from_args, load_public_key

    if bool(args.key) == bool(args.public_key):
        raise InputError("release audits: give one of --key (the steward's key) and --public-key (with --register).")
    if args.public_key and not args.register:
        raise InputError("release audits --public-key: give the register file too (--register FILE).")
    public = key_from_args(args).public_key() if args.key else load_public_key(args.public_key)
    path = register_for(args.key, args.register)
    if not path.is_file():
        raise InputError(f"{path}: no register of audits here (it is written when an audit is sealed with the key).")
    entries = read(path, public)
    print(f"{path}: {len(entries)} audit(s), every line signed by the key and in sequence")
    for e in entries:
        found = ", ".join(e["failed"]) if e["failed"] else "-"
        print(f"  {e['n']:>4}  {e['time']}  {e['subject']}  {'passed' if e['passed'] else 'FAILED'}  {found}")
    for about in sorted({e["subject"] for e in entries}):
        same = [e for e in entries if e["subject"] == about]
        failed = sum(failed_sample(e) for e in same)
        print(f"{about}: {len(same)} audit(s), {failed} found a failing check in its sample")
    return 0
