"""The release gate: a signed bundle of a synthetic dataset that passed its audit, or a refusal.

    bundle/
      data/              the synthetic dataset, byte for byte the one audited (labels the policy
                         drops for weak fidelity emptied in manifest.csv)
      audit/             audit.json, report.html and the audit's seal (audit.sig)
      DATASET_CARD.md    how it was made, models, sites, epsilon, audit summary, label fidelity,
                         intended use, the signing key's fingerprint
      SIGNER.pub         the signing key's public half
      MANIFEST.json      SHA-256 of every other file in the bundle and the signer's fingerprint
      MANIFEST.sig       Ed25519 signature of MANIFEST.json's bytes

The gate trusts nothing it can recompute: the audit must carry the steward's seal (the release
key's signature over audit.json and report.html, cxrsynth.privacy.audit.seal), its verdict is recomputed
from its figures and its policy (cxrsynth.privacy.audit.verdict), and the synthetic folder must hold
exactly the files the audit read. The steward's register of audits must hold the audit, and no more
failed audits of its model than the policy tolerates (cxrsynth.privacy.audit.register). No key is
made here: `cxrsynth release key` makes one.

`cxrsynth release verify` recomputes every hash and checks the signature, with the public key
given or the bundle's own SIGNER.pub once its fingerprint matches the one the user pins: a
changed, added or missing byte anywhere in the bundle (an empty folder or a FIFO included)
fails it (exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cxrsynth.errors import CheckFailed, InputError
from cxrsynth.privacy.audit.results import Audit, as_audit, read_audit_file
from cxrsynth.privacy.keys import fingerprint, load_public_key, normal_fingerprint, public_pem

MANIFEST, SIGNATURE, CARD, SIGNER = "MANIFEST.json", "MANIFEST.sig", "DATASET_CARD.md", "SIGNER.pub"
MANIFEST_FORMAT = "cxrsynth-release/1"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hashes(root: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """relative POSIX path -> SHA-256 of every regular file under root; anything else (a symbolic
    link, a FIFO, a socket, a device, an empty folder) is refused, naming it."""
    hashes, odd = tree_entries(root, exclude)
    if odd:
        more = f" ({len(odd) - 1} more such entries)" if len(odd) > 1 else ""
        raise InputError(f"{Path(root) / odd[0][0]}: {odd[0][1]}; a dataset or bundle holds regular files only{more}.")
    return hashes


def tree_entries(root: str | Path, exclude: tuple[str, ...] = ()) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(relative path -> SHA-256 of every regular file, [(relative path, what it is)] of every
    other entry). Non-regular files are never opened (a FIFO would block the read)."""
    import stat

    root = Path(root)
    out, odd = {}, []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel in exclude:
            continue
        mode = p.lstat().st_mode
        if stat.S_ISLNK(mode):
            odd.append((rel, "a symbolic link (it could point anywhere)"))
        elif stat.S_ISREG(mode):
            out[rel] = sha256_file(p)
        elif stat.S_ISDIR(mode):
            if not any(p.iterdir()):
                odd.append((rel + "/", "an empty folder"))
        else:
            odd.append((rel, "not a regular file (a FIFO, socket or device)"))
    return out, odd


# ---- the gate ------------------------------------------------------------------------------------
def read_audit(audit_dir: Path) -> Audit:
    from cxrsynth.privacy.audit.seal import require_audit_dir

    require_audit_dir(audit_dir)
    return read_audit_file(audit_dir / "audit.json", f"run `cxrsynth audit ... --out {audit_dir}` first")


def gate(synthetic: Path, audit: Audit | dict) -> None:
    """Raise CheckFailed unless the audit's verdict, recomputed from its figures and its policy,
    passes and the audit covered exactly the files of `synthetic`."""
    from cxrsynth.privacy.audit.verdict import verdict

    audit = as_audit(audit)
    failed = verdict(audit.check_figures(), audit.policy)
    if failed:
        lines = [f"{n}: {'; '.join(r)}" for n, r in failed.items()]
        said = (
            " (audit.json says passed, but its verdict does not follow from its own figures)" if audit.passed else ""
        )
        raise CheckFailed(f"release refused: the audit did not pass{said}.\n  " + "\n  ".join(lines))
    audited = audit.inputs.synthetic_files
    if not audited:
        raise CheckFailed("release refused: the audit does not record the hashes of the files it audited.")
    now, odd = tree_entries(synthetic)
    changed = sorted(k for k in now.keys() & audited.keys() if now[k] != audited[k])
    added = sorted(now.keys() - audited.keys()) + [f"{rel} ({what})" for rel, what in odd]
    missing = sorted(audited.keys() - now.keys())
    if changed or added or missing:
        lines = [
            f"{what}: {', '.join(files[:10])}{' ...' if len(files) > 10 else ''}"
            for what, files in (
                ("changed since the audit", changed),
                ("not audited", added),
                ("audited but missing", missing),
            )
            if files
        ]
        raise CheckFailed(
            f"release refused: {synthetic} is not the dataset that was audited.\n  "
            + "\n  ".join(lines)
            + "\n  Audit these files again."
        )


def dataset_card(synthetic: Path, audit: Audit, signer: str = "", audits: Optional[dict] = None) -> str:
    """The bundle's DATASET_CARD.md; `audits`: the register's count of audits of the model
    (cxrsynth.privacy.audit.register.history)."""
    import csv

    with open(synthetic / "manifest.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    provenance = sorted({r.get("provenance", "").split(";seed=")[0] for r in rows if r.get("provenance")})
    checks = audit.checks
    dp = checks["dp_ledger"].figures() if "dp_ledger" in checks else {}
    eps = dp.get("epsilon_max")
    texts = any((r.get("findings") or r.get("impression") or "").strip() for r in rows)
    site_reports = "text_rare_ngrams" not in checks or checks["text_rare_ngrams"].status != "no_reports"
    # Text from a model that never read a report can only be written from the labels (the LDM's label prompts).
    text = (
        "free-text reports"
        if site_reports
        else "sentences written from the labels (not reports: the sites' data held none)"
    )
    lines = [
        "# Synthetic chest X-ray dataset (cxrsynth)",
        "",
        f"Released {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. {len(rows)} synthetic studies: frontal images, "
        + (f"{text}, 14 CheXpert/MIMIC-CXR labels." if texts else "14 CheXpert/MIMIC-CXR labels; no reports."),
        "",
        "## How it was made",
        "Generative models were trained across hospitals with federated learning (Flower); no patient record left its hospital. "
        + (
            "Reports were de-identified at each site before training. "
            if site_reports
            else "The sites' data held images and labels, no reports: the text checks of the audit had no report to compare. "
        )
        + "The records were then sampled from the trained model.",
        "",
        "Models (family, checkpoint hash): " + (", ".join(provenance) or "not recorded in the manifest"),
        "",
        "## Sites",
        "| site | training records | holdout records |",
        "|---|---|---|",
        *[f"| {s.site} | {s.n_train} | {s.n_holdout} |" for s in audit.sites],
        "",
        "## Differential privacy",
        (
            f"Largest per-site epsilon {eps:.3g} at delta {max(e['delta'] for e in dp['sites']):.1e}."
            if eps is not None
            else "No DP ledger: trained without differential privacy (or its ledger was not audited)."
        )
        + (f" Policy budget: {dp['epsilon_budget']}." if dp.get("epsilon_budget") else ""),
        *(
            [
                "",
                f"Pretrained on: {dp['base']['pretrained_on']} ({dp['base']['steps']} steps, base SHA-256 {dp['base']['sha256']}). "
                f"Privacy cost of the pretraining: {dp['base']['privacy_cost']}. The sites fine-tuned this base with the DP-SGD above.",
            ]
            if isinstance(dp.get("base"), dict)
            else []
        ),
        *(
            [
                "",
                f"Rendered in the sites' looks: each of the {dp['site_looks']['sites']} sites shared 11 grey-level quantiles "
                f"of its frontal images ({dp['site_looks']['note']}), and every synthetic study's images were mapped to one "
                "site's grey levels (the `look=` of its provenance).",
            ]
            if isinstance(dp.get("site_looks"), dict)
            else []
        ),
        "",
        "## Privacy audit summary",
        "| check | result | status |",
        "|---|---|---|",
        *[f"| {n} | {'pass' if c.passed else 'FAIL'} | {c.status} |" for n, c in checks.items()],
        "",
        f"Checks left out by policy: {', '.join(audit.policy.skip) or 'none'}. Full figures: audit/audit.json, audit/report.html.",
        "",
        *_register_lines(audits, audit.policy.max_failed_audits),
        *_fidelity_lines(audit),
        "## Intended use",
        "Method development, teaching, software testing and data augmentation research. Not for clinical decisions, "
        "not for estimating disease prevalence, and not a substitute for real data in validating a clinical model. "
        "Do not attempt to link records to real patients.",
        "",
        "## Verifying this bundle",
        f"Signed with the Ed25519 key of fingerprint `{signer}` (SHA-256 of the raw public key; SIGNER.pub holds the key). "
        "Get the fingerprint from the steward through a channel other than this bundle, then run "
        f"`cxrsynth release verify <bundle> --fingerprint {signer or '<fingerprint>'}`: it checks the signature of MANIFEST.json and every file's SHA-256.",
    ]
    return "\n".join(lines) + "\n"


def _register_lines(audits: Optional[dict], tolerated: int) -> list[str]:
    if not audits:
        return []
    return [
        "## Audits of this model",
        f"The steward has audited samples of {audits['subject']} {audits['audits']} time(s) up to this release "
        f"({audits['failed']} found a failing check in its sample; the policy tolerates {tolerated}). This release's audit is line {audits['line']} "
        f"of the steward's register {audits['register']}, whose last line has SHA-256 {audits['head']}.",
        "",
    ]


def _fidelity_lines(audit: Audit) -> list[str]:
    from cxrsynth.privacy.audit.fidelity import label_rows

    policy = audit.policy
    rows = label_rows(audit.check_figures(), policy)
    dropped = audit_dropped_labels(audit)
    lines = [
        "## Label fidelity",
        "Does each label show in the synthetic data? Images: AUROC of a classifier trained on real training images at the sites, scoring the synthetic "
        "images against the labels they were generated with (0.5 is chance), next to the same classifier on real holdout images. Reports: positive F1 "
        f"of the report labeler's reading against the labels. Floors: AUROC {policy.min_label_fidelity_auroc}, F1 {policy.min_report_label_agreement}; "
        f"weak labels: {policy.weak_labels}.",
        "",
    ]
    if not rows:
        return lines + ["No synthetic record states a positive label; nothing was judged.", ""]
    lines += [
        "| label | synthetic positives | image AUROC (95% CI) | classifier on real holdout | report positive F1 | in this release |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        auroc = f"{r['auroc']:.3f} ({r['ci'][0]:.2f}-{r['ci'][1]:.2f})" if r["auroc"] is not None else "not judged"
        real = f"{r['real_auroc']:.3f}" if r["real_auroc"] is not None else "n/a"
        f1 = f"{r['f1']:.3f}" if r["f1"] is not None else "not judged"
        kept = {
            "dropped": "dropped (column emptied)",
            "carried": "kept",
            "not checked": "kept, not checked (too few positives)",
        }.get(r["status"], "kept, below the floor")
        lines.append(
            f"| {r['label']} | {r['positives'] if r['positives'] is not None else ''} | {auroc} | {real} | {f1} | {kept} |"
        )
    lines.append("")
    if dropped:
        lines += [f"Dropped labels (empty in data/manifest.csv, read them as not stated): {', '.join(dropped)}.", ""]
    lines += [
        "Use a kept label only where its figures are good enough for your purpose; a label marked not checked had too few examples to judge.",
        "",
    ]
    return lines


def audit_dropped_labels(audit: Audit) -> list[str]:
    from cxrsynth.privacy.audit.verdict import dropped_labels

    return dropped_labels(audit.check_figures(), audit.policy)


def empty_label_columns(manifest: Path, labels: list[str]) -> None:
    """Blank the given label columns of a dataset manifest (the release's dropped labels)."""
    import csv

    with open(manifest, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    for row in rows:
        for name in labels:
            row[name] = ""
    with open(manifest, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def check_bundle_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; the bundle is written to a new folder.")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out}: exists and is not empty; give a new --out for the bundle.")


def make_bundle(synthetic: Path, audit_dir: Path, key: Ed25519PrivateKey, out: Path, register: Path) -> Path:
    """`register`: the steward's register of audits (cxrsynth.privacy.audit.register), which must
    hold the audit and no more failed audits of its model than its policy tolerates."""
    from cxrsynth.privacy.audit.register import history
    from cxrsynth.privacy.audit.seal import SEAL, check_seal

    check_bundle_out(out)
    if not (synthetic / "manifest.csv").is_file():
        raise InputError(
            f"--synthetic {synthetic}: no manifest.csv here; give the synthetic dataset folder that was audited."
        )
    audit = read_audit(audit_dir)
    signer = check_seal(audit_dir, key.public_key())
    gate(synthetic, audit)
    audits = history(register, key.public_key(), audit_dir / "audit.json", audit, audit.policy.max_failed_audits)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(synthetic, tmp / "data")
    (tmp / "audit").mkdir()
    for name in ("audit.json", "report.html", SEAL):
        if (audit_dir / name).is_file():
            shutil.copy2(audit_dir / name, tmp / "audit" / name)
    gate(tmp / "data", audit)  # the copy is what gets signed: check it too
    dropped = audit_dropped_labels(audit)
    if dropped:
        empty_label_columns(tmp / "data" / "manifest.csv", dropped)
    (tmp / CARD).write_text(dataset_card(synthetic, audit, signer, audits), encoding="utf-8")
    (tmp / SIGNER).write_bytes(public_pem(key))
    manifest = {
        "format": MANIFEST_FORMAT,
        "signer": {"algorithm": "Ed25519", "fingerprint": signer},
        "dropped_labels": dropped,
        "files": tree_hashes(tmp),
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    (tmp / MANIFEST).write_bytes(body)
    (tmp / SIGNATURE).write_bytes(key.sign(body).hex().encode("ascii") + b"\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def verify_bundle(bundle: Path, public_key: Optional[Path] = None, expected: Optional[str] = None) -> tuple[int, str]:
    """(number of files verified, signer fingerprint); CheckFailed naming every discrepancy.

    The key is `public_key`, or the bundle's own SIGNER.pub when only the `expected` fingerprint
    is given; with both, the key's fingerprint must be the expected one."""
    if not bundle.is_dir():
        raise InputError(
            f"{bundle}: {'is a file' if bundle.exists() else 'does not exist'}; `release verify` takes the bundle folder `cxrsynth release --out` wrote."
        )
    if public_key is None and expected is None:
        raise InputError(
            "release verify: give --fingerprint (the signer's key fingerprint, from the steward) or --public-key FILE."
        )
    want = normal_fingerprint(expected) if expected is not None else None
    if public_key is not None:
        key = load_public_key(public_key)
    elif (bundle / SIGNER).is_file():
        key = load_public_key(bundle / SIGNER, what="bundle key")
    else:
        raise CheckFailed(f"verification failed: {bundle / SIGNER} is missing; give --public-key FILE.")
    fp = fingerprint(key)
    if want is not None and fp != want:
        raise CheckFailed(
            f"verification failed: the {'given public key' if public_key else 'bundle'}'s key has fingerprint {fp}, not the pinned {want}."
        )
    try:
        body = (bundle / MANIFEST).read_bytes()
        sig = bytes.fromhex((bundle / SIGNATURE).read_text(encoding="ascii").strip())
    except FileNotFoundError as e:
        raise CheckFailed(f"verification failed: {e.filename} is missing.") from None
    except (ValueError, UnicodeDecodeError, IsADirectoryError):
        raise CheckFailed(f"verification failed: {bundle / SIGNATURE} is not a hex signature.") from None
    try:
        key.verify(sig, body)
    except InvalidSignature:
        raise CheckFailed(
            f"verification failed: the signature of {bundle / MANIFEST} does not match key {fp} (manifest altered, or another signer)."
        ) from None
    try:
        manifest = json.loads(body)
        listed = dict(manifest["files"])
    except (ValueError, KeyError, TypeError):
        raise CheckFailed(f"verification failed: {bundle / MANIFEST} is signed but not a cxrsynth manifest.") from None
    signer = (manifest.get("signer") or {}).get("fingerprint")
    if signer is not None and signer != fp:
        raise CheckFailed(f"verification failed: {bundle / MANIFEST} names signer {signer}, but key {fp} signed it.")
    now, odd = tree_entries(bundle, exclude=(MANIFEST, SIGNATURE))
    problems = [f"changed: {k}" for k in sorted(now.keys() & listed.keys()) if now[k] != listed[k]]
    problems += [f"added: {k}" for k in sorted(now.keys() - listed.keys())]
    problems += [f"added: {rel} ({what})" for rel, what in odd]
    problems += [f"missing: {k}" for k in sorted(listed.keys() - now.keys())]
    if problems:
        raise CheckFailed(f"verification failed for {bundle}:\n  " + "\n  ".join(problems[:50]))
    return len(listed), fp


# ---- commands ------------------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    from cxrsynth.privacy.keys import key_from_args

    if not getattr(args, "key", None):
        raise InputError(
            "release: --key is required: the steward's Ed25519 key, the one the audit was sealed with (make one with `cxrsynth release key --out FILE`)."
        )
    from cxrsynth.privacy.audit.register import register_for

    check_bundle_out(Path(args.out))
    key = key_from_args(args)
    register = register_for(args.key, getattr(args, "register", None))
    out = make_bundle(Path(args.synthetic), Path(args.audit), key, Path(args.out), register)
    fp = fingerprint(key)
    print(
        f"release bundle written to {out}, signed by key {fp}; verify with: cxrsynth release verify {out} --fingerprint {fp}"
    )
    return 0


def verify_command(args: argparse.Namespace) -> int:
    n, fp = verify_bundle(
        Path(args.dir), Path(args.public_key) if args.public_key else None, getattr(args, "fingerprint", None)
    )
    print(f"{args.dir}: signature by key {fp} valid, {n} files match the manifest.")
    return 0
