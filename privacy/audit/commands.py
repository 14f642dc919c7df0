"""`cxrsynth audit`: run the privacy audit and exit 1 when any check fails."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from cxrsynth.config import AuditPolicy, read_yaml, validate
from cxrsynth.errors import CheckFailed
from cxrsynth.progress import Progress


def load_policy(path: Optional[str | Path]) -> AuditPolicy:
    """A policy YAML holds AuditPolicy's fields (at the top level, or under `audit:` of a run config)."""
    if path is None:
        return AuditPolicy()
    data = read_yaml(
        Path(path),
        missing="no such policy file; a policy YAML holds the AuditPolicy fields (see the README, privacy audit).",
    )
    if set(data) == {"audit"} or ("audit" in data and "model" in data):
        data = data["audit"] or {}
    return validate(AuditPolicy, data, str(path))


def audit(args: argparse.Namespace) -> int:
    import torch

    from cxrsynth.privacy.audit.run import run_audit

    torch.set_num_threads(1)
    policy = load_policy(args.policy)
    key, register = None, None
    if getattr(args, "key", None):
        from cxrsynth.privacy.audit.register import register_for
        from cxrsynth.privacy.keys import key_from_args

        key = key_from_args(args)
        register = register_for(args.key, getattr(args, "register", None))
    progress = Progress(args.quiet)
    result = run_audit(
        Path(args.synthetic),
        Path(args.train),
        Path(args.holdout),
        policy,
        Path(args.out),
        Path(args.checkpoint) if args.checkpoint else None,
        progress,
        key=key,
        register=register,
    )
    lines = [
        f"  {'pass' if c['passed'] else 'FAIL'}  {name} ({c.get('status', '')}){': ' + '; '.join(c['reasons']) if c.get('reasons') and not c['passed'] else ''}"
        for name, c in result["checks"].items()
    ]
    progress.say("\n".join(lines))
    if result.get("dropped_labels"):
        progress.say(
            f"labels a release would drop (weak_labels: drop; their column emptied): {', '.join(result['dropped_labels'])}"
        )
    progress.say(
        f"audit written to {Path(args.out) / 'audit.json'} and {Path(args.out) / 'report.html'}"
        + (
            f"; sealed and written to the register {register}"
            if key
            else "; not sealed (no --key): a release will refuse it"
        )
    )
    if not result["passed"]:
        raise CheckFailed(
            f"audit failed: {', '.join(n for n, c in result['checks'].items() if not c['passed'])}. See {Path(args.out) / 'report.html'}."
        )
    print("audit passed")
    return 0
