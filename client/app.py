"""The hospital's Flower ClientApp: train, evaluate, vocabulary counts and the audit query.

Thin by design: it reads records, calls cxrsynth.client.task / cxrsynth.privacy.dp, and writes records back.
Every reply passes cxrsynth.client.egress.egress_guard, and every request is first held to the site's own
policy (client/policy.py). Node config keys: `data-path` (the site's de-identified dataset
directory), `site` (its name), `ledger-path` (where the site keeps its privacy ledger across
runs; default: beside the dataset), `site-policy` (the site's privacy floor; default:
`site-policy.yaml` in the dataset directory, else the strict defaults).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cxrsynth.client.egress import egress_guard
from cxrsynth.client.policy import enforce, enforce_look, load_policy, refuse_plain_updates
from cxrsynth.client.query import admit, handle
from cxrsynth.client.secagg import is_secure, secagg_mod
from cxrsynth.errors import SiteRefused
from cxrsynth.privacy.wire import from_arrays, ledger_from_record, ledger_to_record, read_round_config, to_arrays

# cxrsynth.client.task (torch, the model families) is imported by the handlers that need it, not here: on a
# SuperNode every message starts a ClientApp process, and three of a SecAgg+ round's four stages
# (keys and shares, client/secagg.py) need no model.

DP_STATE = "dp-ledger"
log = logging.getLogger("cxrsynth.client")


def _ledger_path(context: Context) -> Optional[Path]:
    nc = context.node_config
    # A simulated site (`cxrsynth fl simulate`: partition-id, the coordinator's own machine) keeps
    # its ledger in the run's folder; a hospital's SuperNode where its node config says.
    if "partition-id" in nc and context.run_config.get("site-ledgers"):
        return Path(str(context.run_config["site-ledgers"])) / f"site{nc['partition-id']}.dp-ledger.json"
    if "ledger-path" in nc:
        return Path(str(nc["ledger-path"]))
    if "data-path" in nc:
        from cxrsynth.train import site_ledger_path

        return site_ledger_path(Path(str(nc["data-path"])))
    return None


def _dp_history(context: Context) -> list:
    """The site's accountant history: the node's persistent state, or its ledger file if that has more steps."""
    from cxrsynth.privacy.dp import read_ledger_file

    in_state = ledger_from_record(context.state[DP_STATE])["history"] if DP_STATE in context.state else []
    on_disk = read_ledger_file(_ledger_path(context))
    return max(in_state, on_disk, key=lambda h: sum(int(s) for _, _, s in h))


def train(msg: Message, context: Context) -> Message:
    from cxrsynth.client.task import load_site, train_round

    cfg, extra = read_round_config(msg.content["config"])
    policy = load_policy(context.node_config)
    cfg = enforce(cfg, policy)
    refuse_plain_updates(policy, secure=is_secure(msg))
    site = load_site(cfg, context.node_config)
    result = train_round(
        cfg,
        site,
        extra,
        from_arrays(msg.content["arrays"]),
        server_round=int(msg.content["config"]["server-round"]),
        proximal_mu=float(msg.content["config"].get("proximal-mu", 0.0)),
        dp_history=_dp_history(context) if cfg.dp.enabled else None,
    )
    metrics = result.metrics
    if cfg.dp.enabled and not policy.send_loss_metrics:
        # Losses are computed on the real batches outside the DP accounting: they stay in the site's log.
        log.info("round %s losses (kept at the site): %s", msg.content["config"]["server-round"], metrics)
        metrics = {k: v for k, v in metrics.items() if not k.startswith("loss-")}
    content = RecordDict(
        {"arrays": to_arrays(result.arrays), "metrics": MetricRecord({"num-examples": result.num_examples, **metrics})}
    )
    if result.ledger is not None:
        from cxrsynth.privacy.dp import write_ledger_file

        content["ledger"] = ledger_to_record(result.ledger)
        context.state[DP_STATE] = content["ledger"]
        write_ledger_file(_ledger_path(context), result.ledger)
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Mean membership score of the global model on this site's training records (a scalar)."""
    import torch

    from cxrsynth.client.task import load_site
    from cxrsynth.models import rebuild_model

    cfg, extra = read_round_config(msg.content["config"])
    if not load_policy(context.node_config).send_loss_metrics:
        # A mean loss over training records is a membership signal outside any DP accounting.
        raise SiteRefused(
            "site policy keeps loss-based scores at the site (send_loss_metrics false); central evaluation is not answered."
        )
    site = load_site(cfg, context.node_config)
    model = rebuild_model(cfg, extra, from_arrays(msg.content["arrays"]), torch.device("cpu"))
    model.eval()
    sample = site.train[: min(len(site.train), 32)]
    scores = model.member_scores(sample)
    return Message(
        RecordDict({"metrics": MetricRecord({"num-examples": len(sample), "member-score": float(scores.mean())})}),
        reply_to=msg,
    )


def vocab(msg: Message, context: Context) -> Message:
    """Counts of frequent report tokens and of labels, for the shared vocabulary and label mix
    (server/vocab.py, `GenerativeModel.fit_label_counts`)."""
    from cxrsynth.client.task import label_counts, load_site, token_counts
    from cxrsynth.models import model_class

    cfg, _ = read_round_config(msg.content["config"])
    cfg = enforce(cfg, load_policy(context.node_config), training=False)
    site = load_site(cfg, context.node_config)
    k = cfg.federation.vocab_min_count
    if cfg.train.init_sha256 is not None:
        # A run from a pretrained base takes its vocabulary from the base: no token counts needed, none sent.
        counts, n_reports = {}, len(site.train)
    else:
        counts, n_reports = token_counts(
            site.train, k, functools.partial(model_class(cfg.model).vocabulary_text, cfg.model)
        )
    labels = label_counts(site.train, k)
    content = RecordDict(
        {
            "counts": MetricRecord(counts),
            "label-counts": MetricRecord(labels),
            "metrics": MetricRecord({"num-reports": n_reports}),
        }
    )
    if "acquisition" in msg.content.config_records:
        content["acquisition"] = _share_look(cfg, site, list(msg.content["acquisition"]["center"]), context)
    return Message(content, reply_to=msg)


def _share_look(cfg, site, center: list, context: Context) -> MetricRecord:
    """The site's look (cxrsynth.models.acquisition), held to the site's DP floor and recorded in its ledger."""
    from cxrsynth.client.task import share_look
    from cxrsynth.privacy.dp import ledger_entry, write_ledger_file

    enforce_look(cfg, load_policy(context.node_config))
    metrics, history = share_look(cfg, site, center, _dp_history(context) if cfg.dp.enabled else None)
    if history is not None:
        entry = ledger_entry(history, cfg.dp, cfg.federation.acquisition_noise, 1.0, ["acquisition"])
        context.state[DP_STATE] = ledger_to_record(entry)
        write_ledger_file(_ledger_path(context), entry)
    return MetricRecord(metrics)


def make_app(mods: Optional[list] = None) -> ClientApp:
    """The ClientApp; `mods` run outside the egress guard (tests use one to capture what leaves)."""
    # The egress guard is outermost: it checks what leaves after SecAgg+ has masked the update.
    app = ClientApp(mods=[*(mods or []), egress_guard, secagg_mod])
    app.train()(train)
    app.evaluate()(evaluate)
    app.query("vocab")(vocab)

    # The federated audit query answers with counts and scalars only, and only a pinned set
    # within the site's query budget.
    def query(msg: Message, context: Context) -> Message:
        path = _ledger_path(context)
        admit(msg, context, path.with_name(path.name + ".audit-queries.jsonl") if path else None)
        return handle(msg, context)

    app.query()(query)
    return app


app = make_app()
