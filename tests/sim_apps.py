"""ClientApps for the tests' simulated runs: cxrsynth's own, wrapped with mods that record what left a
site or play a faulty site. `simulate(..., client_app=(this file, name))` puts this file in the
app bundle; the mods take their paths from the run config (`test-*` keys)."""

import json
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray
from flwr.serverapp import ServerApp

from cxrsynth.client.app import make_app
from cxrsynth.client.egress import egress_log
from cxrsynth.privacy.wire import from_arrays

SIM_APPS = Path(__file__)


def log_egress(msg, context, call_next):
    """Every reply that leaves a site, one JSON line in run_config['test-egress-log']."""
    return egress_log(Path(str(context.run_config["test-egress-log"])))(msg, context, call_next)


def crash_site_2_in_round_2(msg, context, call_next):
    if (
        msg.metadata.message_type == "train"
        and context.node_config["partition-id"] == 2
        and msg.content["config"]["server-round"] == 2
    ):
        raise RuntimeError("simulated crash of a hospital's ClientApp")
    return call_next(msg, context)


def site_1_counts_nan_in_round_3(msg, context, call_next):
    """A poisoned sample count: NaN once made the saved checkpoint all NaN."""
    reply = call_next(msg, context)
    if (
        msg.metadata.message_type == "train"
        and context.node_config["partition-id"] == 1
        and msg.content["config"]["server-round"] == 3
    ):
        reply.content["metrics"]["num-examples"] = float("nan")
    return reply


def record_secagg(msg, context, call_next):
    """A site's record of the masked-vector stage, in run_config['test-seen']: the global weights and
    config it was sent, and every train reply that left it (record kinds and keys; the masked update)."""
    reply = call_next(msg, context)
    if msg.metadata.message_type != "train":
        return reply
    site = f"site{context.node_config['partition-id']}"
    out = Path(str(context.run_config["test-seen"]))
    if "arrays" in msg.content.array_records:
        rnd = int(msg.content["config"]["server-round"])
        np.savez(out / f"r{rnd}-{site}-global.npz", **from_arrays(msg.content["arrays"]))
        (out / f"r{rnd}-{site}-config.json").write_text(json.dumps(dict(msg.content["config"])))
        if not reply.has_error() and "secaggplus_configs" in reply.content.config_records:
            masked = [bytes_to_ndarray(b) for b in reply.content["secaggplus_configs"]["masked_params"]]
            np.savez(out / f"r{rnd}-{site}-masked.npz", *masked)
    sent = (
        "error"
        if reply.has_error()
        else {name: [type(r).__name__, sorted(r.keys())] for name, r in reply.content.items()}
    )
    with open(out / f"{site}-sent.jsonl", "a") as f:
        f.write(json.dumps(sent) + "\n")
    return reply


def site_2_claims_no_epsilon_in_round_2(msg, context, call_next):
    """A site that lies about its spending (epsilon 0.0), in the clear beside its masked update."""
    reply = call_next(msg, context)
    if (
        context.node_config["partition-id"] == 2
        and "arrays" in msg.content.array_records
        and int(msg.content["config"]["server-round"]) == 2
    ):
        if not reply.has_error() and "ledger" in reply.content.config_records:
            reply.content["ledger"]["epsilon"] = 0.0
    return reply


egress_logged = make_app(mods=[log_egress])
faulty = make_app(mods=[crash_site_2_in_round_2, site_1_counts_nan_in_round_3])
secagg_recorded_liar = make_app(mods=[record_secagg, site_2_claims_no_epsilon_in_round_2])


# The steward's federated audit on two simulated sites (tests/test_audit_federated.py): each site
# reads its dataset from run_config['test-site-root']/site<partition-id>, the ServerApp audits the
# dataset in run_config['test-synthetic'] and writes the combined answer to run_config['test-audit-out'].
audit_server = ServerApp()


@audit_server.main()
def _audit(grid, context):
    from cxrsynth.config import AuditPolicy
    from cxrsynth.data.dataset import read_dataset
    from cxrsynth.server.audit_query import federated_audit

    synthetic, _ = read_dataset(Path(str(context.run_config["test-synthetic"])))
    audit = federated_audit(grid, synthetic, AuditPolicy(bootstrap=30, skip=("phi", "membership")), timeout=600)
    Path(str(context.run_config["test-audit-out"])).write_text(json.dumps(audit, default=float))


audit_sites = ClientApp()


@audit_sites.query()
def _answer(msg, context):
    from cxrsynth.client.query import handle

    site = Path(str(context.run_config["test-site-root"])) / f"site{context.node_config['partition-id']}"
    return handle(msg, Context(context.run_id, context.node_id, {"data-path": str(site)}, context.state, {}))
