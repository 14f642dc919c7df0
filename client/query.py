"""The site's answer to the federated audit query (privacy/audit).

The steward sends the synthetic images and reports, the audit policy and (for membership
inference) the model; the site runs `cxrsynth.privacy.audit.site.site_audit` against its own training and
holdout records and replies with numbers only: counts, scalar figures, histograms, bootstrap
replicates, and flagged synthetic records as indices into the set the steward sent. The copy
pairs, with the training images they copy, stay here: written to the node's `audit-out`
directory (node config) as a site-local report when that key is set.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from flwr.app import Context, Message, RecordDict

from cxrsynth.privacy.audit.protocol import answer_to_record, read_query, verify_query

log = logging.getLogger("cxrsynth.client")


def _trusted_entities(node_config: dict) -> dict:
    import yaml

    path = node_config.get("trusted-entities")
    if not path:
        return {}
    return yaml.safe_load(Path(str(path)).read_text(encoding="utf-8")) or {}


def admit(msg: Message, context: Context, query_log: Optional[Path]) -> None:
    """Hold an audit query to the site's policy before any of its data is read.

    Refused (SiteRefused, the reason leaves): the policy answers no queries; the site's query
    budget is spent; the set is not pinned by a key in the node config's `trusted-entities` YAML
    (the same file the SuperNode verifies apps with). An admitted query is counted in `query_log`
    (one JSON line: time, the pinned hashes, the set's size), the site's own record of every look
    the steward took at its data.
    """
    from cxrsynth.client.policy import load_policy
    from cxrsynth.privacy.dp import SiteRefused

    policy = load_policy(context.node_config)
    if not policy.answer_audit_queries:
        raise SiteRefused("site policy answers no audit queries (answer_audit_queries false).")
    past = query_log.read_text(encoding="utf-8").splitlines() if query_log is not None and query_log.is_file() else []
    if len(past) >= policy.audit_query_budget:
        raise SiteRefused(
            f"site policy's audit query budget ({policy.audit_query_budget}) is spent; {len(past)} queries answered."
        )
    pin = verify_query(msg.content, _trusted_entities(context.node_config)) if policy.require_signed_audit_sets else {}
    entry = {
        "time": time.time(),
        "synthetic-sha256": pin.get("synthetic-sha256"),
        "checkpoint-sha256": pin.get("checkpoint-sha256"),
        "key-id": pin.get("key-id"),
        "n": len(msg.content["config"]["record-ids"]),
    }
    log.info("audit query admitted: %s", entry)
    if query_log is not None:
        query_log.parent.mkdir(parents=True, exist_ok=True)
        with open(query_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def _site_records(node_config: dict, cfg) -> tuple[str, list, list]:
    """(site name, training records, holdout records) of this node."""
    from cxrsynth.client.task import site_records
    from cxrsynth.errors import InputError

    # Strict: an audit that skipped an unreadable image could pass a copy it never saw.
    site, records = site_records(cfg, node_config, strict=True)
    from cxrsynth.data.dataset import require_patient_split

    # A patient on both sides would make the holdout calibration see training patients.
    require_patient_split(
        [r.with_(split="train" if r.split != "holdout" else "holdout") for r in records], f"site {site}"
    )
    train = [r for r in records if r.split != "holdout"]
    holdout = [r for r in records if r.split == "holdout"]
    if not holdout:
        raise InputError(
            f"site {site}: no holdout records (split column 'holdout'); the audit calibrates on unseen patients."
        )
    return site, train, holdout


def handle(msg: Message, context: Context) -> Message:
    """The site's answer (no admission: the ClientApp calls `admit` first, client/app.py)."""
    import torch

    from cxrsynth.privacy.audit.combine import combine
    from cxrsynth.privacy.audit.page import write_page
    from cxrsynth.privacy.audit.run import pair_images
    from cxrsynth.privacy.audit.site import site_audit

    torch.set_num_threads(1)
    query = read_query(msg.content)
    site, train, holdout = _site_records(context.node_config, query.run_config)
    answer, pairs = site_audit(query.synthetic, train, holdout, query.policy, query.scorer(), site)
    out = context.node_config.get("audit-out")
    if out:
        # The site's own view: which of its patients each flagged synthetic image copies.
        Path(str(out)).mkdir(parents=True, exist_ok=True)
        write_page(combine([answer], query.policy), Path(str(out)), pair_images(pairs, query.synthetic, train))
    return Message(RecordDict({"audit": answer_to_record(answer, query.synthetic)}), reply_to=msg)
