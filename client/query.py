"""The site's answer to the federated audit query (privacy/audit, issue 8).

The steward sends the synthetic images and reports, the audit policy and (for membership
inference) the model; the site runs `privacy.audit.site.site_audit` against its own training and
holdout records and replies with numbers only: counts, scalar figures, histograms, bootstrap
replicates, and flagged synthetic records as indices into the set the steward sent. The copy
pairs, with the training images they copy, stay here: written to the node's `audit-out`
directory (node config) as a site-local report when that key is set.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict

from privacy.audit.protocol import answer_to_metrics, read_query


def _site_records(node_config: dict, cfg) -> tuple[str, list, list]:
    """(site name, training records, holdout records) of this node."""
    from client.task import site_records
    from cxrsynth.errors import InputError

    # Strict: an audit that skipped an unreadable image could pass a copy it never saw.
    site, records = site_records(cfg, node_config, strict=True)
    train = [r for r in records if r.split != "holdout"]
    holdout = [r for r in records if r.split == "holdout"]
    if not holdout:
        raise InputError(f"site {site}: no holdout records (split column 'holdout'); the audit calibrates on unseen patients.")
    return site, train, holdout


def handle(msg: Message, context: Context) -> Message:
    import torch

    from privacy.audit.combine import combine
    from privacy.audit.report import write_report
    from privacy.audit.run import pair_images
    from privacy.audit.site import site_audit

    torch.set_num_threads(1)
    query = read_query(msg.content)
    site, train, holdout = _site_records(context.node_config, query.run_config)
    answer, pairs = site_audit(query.synthetic, train, holdout, query.policy, query.scorer(), site)
    out = context.node_config.get("audit-out")
    if out:
        # The site's own view: which of its patients each flagged synthetic image copies.
        Path(str(out)).mkdir(parents=True, exist_ok=True)
        write_report(combine([answer], query.policy), Path(str(out)), pair_images(pairs, query.synthetic, train))
    return Message(RecordDict({"audit": MetricRecord(answer_to_metrics(answer, query.synthetic))}), reply_to=msg)
