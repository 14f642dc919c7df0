"""The steward's side of the federated audit: query every site through the Flower Grid, combine.

`federated_audit(grid, synthetic, policy, checkpoint)` sends each SuperNode the synthetic set,
the policy and (for membership inference) the checkpoint's model; each site answers with
numbers only (client/query.py). PHI and the DP ledger are checked here, where the synthetic
reports and the checkpoint are. The result is the same audit.json a local audit writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from flwr.app import Message
from flwr.serverapp import Grid

from cxrsynth.config import AuditPolicy
from cxrsynth.data.records import Record
from cxrsynth.errors import CheckFailed
from cxrsynth.progress import Progress
from privacy.audit.protocol import make_query, metrics_to_answer
from privacy.audit.run import finish_audit

QUERY_TIMEOUT = 3600.0


def federated_audit(
    grid: Grid,
    synthetic: list[Record],
    policy: AuditPolicy,
    checkpoint: Optional[Path] = None,
    inputs: Optional[dict] = None,
    timeout: float = QUERY_TIMEOUT,
    progress: Optional[Progress] = None,
) -> dict:
    progress = progress or Progress()
    run_config = extra = arrays = train_state = None
    if checkpoint is not None:
        from cxrsynth.checkpoint import load_checkpoint

        model, run_config, train_state = load_checkpoint(checkpoint)
        extra, arrays = model.extra_state(), model.state()
    content = make_query(synthetic, policy, run_config, extra, arrays if "membership" not in policy.skip else None)
    nodes = sorted(grid.get_node_ids())
    if not nodes:
        raise CheckFailed("no site is connected to the SuperLink; the audit needs every site that trained the model.")
    progress.say(f"audit query to {len(nodes)} site(s)")
    replies = list(grid.send_and_receive([Message(content, dst_node_id=n, message_type="query") for n in nodes], timeout=timeout))
    answers, problems = [], []
    by_node = {r.metadata.src_node_id: r for r in replies}
    for n in nodes:
        r = by_node.get(n)
        if r is None:
            problems.append(f"site {n}: no answer within {timeout:.0f}s")
        elif r.has_error():
            problems.append(f"site {n}: {r.error.reason}")
        else:
            answers.append(metrics_to_answer(dict(r.content["audit"]), synthetic, f"node{n}"))
    if problems:
        # A site that did not answer is a site whose patients were not checked: no partial pass.
        raise CheckFailed("federated audit incomplete:\n  " + "\n  ".join(problems))
    return finish_audit(answers, synthetic, policy, train_state, inputs)


def run_from_config(grid: Grid, run_config: dict, progress: Optional[Progress] = None) -> dict:
    """Run-config keys (kebab-case): audit-synthetic, audit-out, audit-policy, audit-checkpoint."""
    from privacy.audit.commands import load_policy
    from privacy.audit.run import read_audit_set, write_audit
    from privacy.release import tree_hashes

    syn_dir = Path(str(run_config["audit-synthetic"]))
    out = Path(str(run_config["audit-out"]))
    policy = load_policy(run_config.get("audit-policy") or None)
    ckpt = Path(str(run_config["audit-checkpoint"])) if run_config.get("audit-checkpoint") else None
    synthetic = read_audit_set(syn_dir, "synthetic")
    inputs = {"synthetic": str(syn_dir), "checkpoint": str(ckpt) if ckpt else None, "federated": True, "synthetic_files": tree_hashes(syn_dir)}
    audit = federated_audit(grid, synthetic, policy, ckpt, inputs, progress=progress)
    write_audit(audit, out)
    (out / "sites.json").write_text(json.dumps([a["site"] for a in audit["sites"]]), encoding="utf-8")
    return audit
