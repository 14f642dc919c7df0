"""The site's egress rule, enforced on every reply the ClientApp sends (a Flower mod).

Only model arrays (train replies), counts and scalar metrics (MetricRecords) and privacy-ledger
entries (the `ledger` ConfigRecord, numbers and one enumerated string) may leave a hospital;
under secure aggregation a train reply also carries Flower's SecAgg+ record (public keys, key
shares encrypted for other sites, shares of mask seeds, the masked update: bytes and node ids,
client/secagg.py). Anything else (text, images, record ids, file paths) stops the reply at the site. An error reply
carries an error kind and a fixed text (`error_reply`); only a `SiteRefused` reason, made of
settings and ledger figures, leaves as written.
"""

from __future__ import annotations

import logging
import numbers

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord

from cxrsynth.errors import CheckFailed, CxrError, SiteRefused

LEDGER_STRINGS = {"accountant", "privacy-unit"}
# What a site sends in the four SecAgg+ stages (flwr.common.secure_aggregation.secaggplus_constants.Key).
SECAGG_RECORD = "secaggplus_configs"
SECAGG_KEYS = {"pk1", "pk2", "dsts", "ctxts", "masked_params", "nids", "shares"}
log = logging.getLogger("cxrsynth.client")


class EgressRefused(RuntimeError):
    """A reply that would carry something other than arrays, counts, scalar metrics or ledger entries."""


def _numeric(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(isinstance(x, numbers.Number) for x in v)
    return isinstance(v, numbers.Number)


def _protocol_value(v) -> bool:
    items = v if isinstance(v, list) else [v]
    return all(isinstance(x, bytes) or (isinstance(x, int) and not isinstance(x, bool)) for x in items)


def check_reply(msg: Message) -> None:
    """Raise EgressRefused naming the record and key that may not leave the site."""
    if msg.has_error():
        return
    kind = msg.metadata.message_type.split(".")[0]
    for name, rec in msg.content.items():
        if isinstance(rec, ArrayRecord):
            if kind != "train":
                raise EgressRefused(f"record {name!r}: model arrays leave a site only in train replies, not {kind}.")
        elif isinstance(rec, MetricRecord):
            bad = [k for k, v in rec.items() if not _numeric(v)]
            if bad:
                raise EgressRefused(f"record {name!r}: metric(s) {bad[:3]} are not numbers.")
        elif isinstance(rec, ConfigRecord) and name == SECAGG_RECORD and kind == "train":
            bad = [k for k, v in rec.items() if k not in SECAGG_KEYS or not _protocol_value(v)]
            if bad:
                raise EgressRefused(
                    f"secure aggregation key(s) {bad[:3]} are not the protocol's keys, bytes and node ids."
                )
        elif isinstance(rec, ConfigRecord):
            if name != "ledger":
                raise EgressRefused(f"record {name!r}: only the privacy ledger may travel as a ConfigRecord.")
            bad = [
                k
                for k, v in rec.items()
                if not (_numeric(v) or (k in LEDGER_STRINGS and isinstance(v, str) and len(v) < 16))
            ]
            if bad:
                raise EgressRefused(f"ledger key(s) {bad[:3]} are neither numbers nor an accountant name.")
        else:
            raise EgressRefused(f"record {name!r} of type {type(rec).__name__} may not leave a site.")


# The kinds an error reply may name. The reason of a SiteRefused (settings and ledger figures
# only) leaves as it is; every other text stays in the site's log, since an exception message can
# quote a cell, a report or a path.
ERROR_KINDS = {"refused": 1, "bad-input": 2, "check-failed": 3, "internal": 4, "egress-refused": 5}


def error_reply(e: BaseException, msg: Message) -> Message:
    if isinstance(e, SiteRefused):
        kind, reason = "refused", f"refused: {e}"
    elif isinstance(e, CheckFailed):
        kind, reason = "check-failed", "check-failed: a check at the site failed; the details are in the site's log."
    elif isinstance(e, CxrError):
        kind, reason = (
            "bad-input",
            "bad-input: the site could not read its data or settings for this request; the details are in the site's log.",
        )
    else:
        kind, reason = "internal", "internal: the site's ClientApp failed; the details are in the site's log."
    return Message(Error(code=ERROR_KINDS[kind], reason=reason), reply_to=msg)


def egress_guard(msg: Message, context: Context, call_next) -> Message:
    """Flower mod: run the handler, turn failures into safe error replies, check what goes out."""
    try:
        reply = call_next(msg, context)
    except Exception as e:  # noqa: BLE001 - the details stay in the site's log
        log.exception("ClientApp failed on a %s message", msg.metadata.message_type)
        return error_reply(e, msg)
    try:
        check_reply(reply)
    except EgressRefused as e:
        # The refusal names record keys, and a count's key can be a token: it stays here.
        log.error("reply stopped at the site: %s", e)
        reason = "egress-refused: the reply held something other than arrays, counts, numbers or ledger entries; the details are in the site's log."
        return Message(Error(code=ERROR_KINDS["egress-refused"], reason=reason), reply_to=msg)
    return reply


def describe(msg: Message) -> dict:
    """What a reply carries, without the values of arrays: record names, types, keys, shapes, numbers."""
    if msg.has_error():
        return {"type": msg.metadata.message_type, "error": msg.error.reason}
    out: dict = {"type": msg.metadata.message_type, "records": {}}
    for name, rec in msg.content.items():
        if isinstance(rec, ArrayRecord):
            body = {k: [str(v.dtype), list(v.shape)] for k, v in rec.items()}
        else:
            body = {k: v for k, v in rec.items()}
        out["records"][name] = {"kind": type(rec).__name__, "items": body}
    return out


def egress_log(path):
    """Flower mod that appends one JSON line per outgoing reply to `path`: a site's own record of what left."""
    import json
    from pathlib import Path

    target = Path(path)

    def mod(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        target.parent.mkdir(parents=True, exist_ok=True)
        entry = {"node_config": dict(context.node_config), **describe(reply)}
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")
        return reply

    return mod
