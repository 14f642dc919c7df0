"""The federated audit's messages, as Flower records (one codec for the steward and the sites).

Query (steward -> site): `config` ConfigRecord {audit-policy (JSON), reports (list of str),
record-ids, synthetic-labels (N x 14 codes: 1, 0, -1, or 2 for not mentioned), and optionally
run-config and extra-state}, `synthetic` ArrayRecord {images: N x H x W uint8, and laterals:
M x H' x W' uint8 for the records whose `has-lateral` flag is 1}, and optionally `arrays` (the
model, for membership inference).
Answer (site -> steward): one MetricRecord of numbers: the site's answer flattened by the wire codec
(privacy/wire.py), with flagged synthetic records as indices into the query's list. A site sends no
strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from cxrsynth.config import AuditPolicy, RunConfig
from cxrsynth.data.records import LABELS, Record, empty_labels
from cxrsynth.errors import InputError
from cxrsynth.privacy.wire import (
    flatten,
    from_arrays,
    metric_values,
    read_round_config,
    round_config,
    to_arrays,
    unflatten,
)

STATUS = {"ran": 1, "not_run": 0, "error": -1}
NOT_MENTIONED = 2  # a label's code in the query when the record does not state it
ID_LISTS = (
    "images.copies",
    "images.lateral_copies",
    "rare_ngrams.leaking_reports",
    "near_duplicates.duplicated_reports",
    "text_embedding.close_reports",
)
DROP = ("site", "images.encoder", "images.copy_match", "membership.reason")


@dataclass
class Query:
    policy: AuditPolicy
    synthetic: list[Record]
    run_config: Optional[RunConfig]
    extra_state: dict
    arrays: Optional[dict]

    def scorer(self) -> Optional[Callable]:
        if self.run_config is None or self.arrays is None:
            return None
        import torch

        from cxrsynth.models import rebuild_model

        model = rebuild_model(self.run_config, self.extra_state, self.arrays, torch.device("cpu"))
        model.eval()
        return model.member_scores


def make_query(
    synthetic: list[Record],
    policy: AuditPolicy,
    run_config: Optional[RunConfig] = None,
    extra_state: Optional[dict] = None,
    arrays: Optional[dict] = None,
) -> RecordDict:
    shapes = {r.image.shape for r in synthetic}
    if len(shapes) != 1:
        raise InputError(
            f"synthetic images differ in size ({sorted(shapes)[:3]}); the audit query carries one N x H x W array."
        )
    laterals = [r.lateral for r in synthetic if r.lateral is not None]
    if len({x.shape for x in laterals}) > 1:
        raise InputError(
            f"synthetic lateral images differ in size ({sorted({x.shape for x in laterals})[:3]}); the audit query carries one M x H x W array."
        )
    config = {
        "audit-policy": policy.model_dump_json(),
        "reports-findings": [r.findings for r in synthetic],
        "reports-impression": [r.impression for r in synthetic],
        "record-ids": [r.record_id for r in synthetic],
        "synthetic-labels": [
            NOT_MENTIONED if r.labels.get(n) is None else int(r.labels[n]) for r in synthetic for n in LABELS
        ],
        "has-lateral": [int(r.lateral is not None) for r in synthetic],
    }
    if run_config is not None:
        config.update(dict(round_config(run_config, extra_state or {})))
    arrays_out = {"images": Array(np.stack([r.image for r in synthetic]).astype(np.uint8))}
    if laterals:
        arrays_out["laterals"] = Array(np.stack(laterals).astype(np.uint8))
    content = RecordDict({"config": ConfigRecord(config), "synthetic": ArrayRecord(arrays_out)})
    if arrays is not None:
        content["arrays"] = to_arrays(arrays)
    return content


def read_query(content: RecordDict) -> Query:
    cfg = content["config"]
    policy = AuditPolicy.model_validate_json(str(cfg["audit-policy"]))
    images = content["synthetic"]["images"].numpy()
    ids, fnd, imp = list(cfg["record-ids"]), list(cfg["reports-findings"]), list(cfg["reports-impression"])
    codes = list(cfg["synthetic-labels"]) if "synthetic-labels" in cfg else []
    labels = [
        {
            n: None if c == NOT_MENTIONED else int(c)
            for n, c in zip(LABELS, codes[k * len(LABELS) : (k + 1) * len(LABELS)])
        }
        if codes
        else empty_labels()
        for k in range(len(ids))
    ]
    flags = list(cfg["has-lateral"]) if "has-lateral" in cfg else [0] * len(ids)
    lat_arr = iter(content["synthetic"]["laterals"].numpy()) if "laterals" in content["synthetic"] else iter(())
    lats = [next(lat_arr) if f else None for f in flags]
    synthetic = [
        Record(i, i, i, site="synthetic", findings=f, impression=m, labels=lab, image=img, lateral=lat)
        for i, f, m, lab, img, lat in zip(ids, fnd, imp, labels, images, lats)
    ]
    run_config, extra = read_round_config(cfg) if "run-config" in cfg else (None, {})
    arrays = from_arrays(content["arrays"]) if "arrays" in content.array_records else None
    return Query(policy, synthetic, run_config, extra, arrays)


def answer_to_record(answer: dict, synthetic: list[Record]) -> MetricRecord:
    """The site's answer as one MetricRecord of numbers (privacy/wire.py flattens it): flagged
    record IDs become indices into the query's list, the membership status a code, and the few
    strings an answer holds (site name, encoder, reasons) stay at the site."""
    index = {r.record_id: i for i, r in enumerate(synthetic)}
    flat = {k: v for k, v in flatten(answer).items() if k not in DROP}
    for k in ID_LISTS:
        if k in flat:
            flat[k] = [index[x] for x in flat[k]]
    if "membership.status" in flat:
        flat["membership.status"] = STATUS[flat["membership.status"]]
    try:
        return MetricRecord(metric_values(flat))
    except TypeError as e:
        raise TypeError(f"audit answer: {e} It may not leave the site.") from None


def record_to_answer(record: Mapping, synthetic: list[Record], site: str) -> dict:
    """Inverse of answer_to_record, at the steward (`site`: the steward's name for the node)."""
    flat = dict(record.items())
    for k in ID_LISTS:
        if k in flat:
            flat[k] = [synthetic[int(i)].record_id for i in flat[k]]
    if "membership.status" in flat:
        flat["membership.status"] = {c: s for s, c in STATUS.items()}[int(flat["membership.status"])]
    answer = {"site": site, **unflatten(flat)}
    m = answer.get("membership")
    if m and m.get("status") != "ran":
        m["reason"] = "not run at the site (its reason stays in the site's log)"
    return answer


# ---- the coordinator's pin on a query -----------------------------------------------------------
# A site that answered any probe set would be a membership oracle: send it training images and it
# flags them. So a site answers only a set the coordinator signed, naming the hash of the set and of
# the checkpoint that generated it (the steward's side refuses to sign a set whose provenance names
# another checkpoint), and counts every answer against its own query budget.
PIN = "pin"
PIN_DOMAIN = b"cxrsynth-audit-query\0"


def _digest(*parts: bytes) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def query_digests(content: RecordDict) -> tuple[str, str]:
    """(synthetic set SHA-256, model arrays SHA-256 or "none") of a query, as the site receives it."""
    cfg = content["config"]
    images = content["synthetic"]["images"].numpy()
    texts = [str(x).encode() for key in ("record-ids", "reports-findings", "reports-impression") for x in cfg[key]]
    labels = np.asarray(list(cfg["synthetic-labels"]) if "synthetic-labels" in cfg else [], dtype=np.int8).tobytes()
    flags = np.asarray(list(cfg["has-lateral"]) if "has-lateral" in cfg else [], dtype=np.int8).tobytes()
    lat = content["synthetic"]["laterals"].numpy() if "laterals" in content["synthetic"] else np.zeros((0,), np.uint8)
    synthetic = _digest(
        str(images.shape).encode(),
        np.ascontiguousarray(images).tobytes(),
        *texts,
        labels,
        flags,
        str(lat.shape).encode(),
        np.ascontiguousarray(lat).tobytes(),
    )
    if "arrays" not in content.array_records:
        return synthetic, "none"
    rec = content["arrays"]
    parts = [
        p
        for k in sorted(rec.keys())
        for p in (k.encode(), str(rec[k].numpy().dtype).encode(), np.ascontiguousarray(rec[k].numpy()).tobytes())
    ]
    return synthetic, _digest(*parts)


def _pin_message(synthetic: str, checkpoint: str, signed_at: int) -> bytes:
    return PIN_DOMAIN + f"{synthetic}\0{checkpoint}\0{signed_at}".encode()


def sign_query(content: RecordDict, key_path, key_id: str, checkpoint_sha256: str) -> RecordDict:
    """Add the coordinator's pin: Ed25519 over the set's and the model's hashes."""
    import base64
    import time

    from flwr.supercore.primitives.asymmetric_ed25519 import load_private_key, sign_message

    synthetic, _ = query_digests(content)
    signed_at = int(time.time())
    signature = sign_message(load_private_key(Path(key_path)), _pin_message(synthetic, checkpoint_sha256, signed_at))
    content[PIN] = ConfigRecord(
        {
            "key-id": key_id,
            "signed-at": signed_at,
            "synthetic-sha256": synthetic,
            "checkpoint-sha256": checkpoint_sha256,
            "signature": base64.urlsafe_b64encode(signature).decode(),
        }
    )
    return content


def verify_query(content: RecordDict, trusted: dict[str, str]) -> dict:
    """The pin of a query, once its signature by a trusted key and its hashes check out.

    Raises SiteRefused naming what failed (hashes and key ids only, never data)."""
    import base64

    from cryptography.hazmat.primitives.serialization import load_ssh_public_key
    from flwr.supercore.primitives.asymmetric_ed25519 import verify_signature

    from cxrsynth.privacy.dp import SiteRefused

    if PIN not in content.config_records:
        raise SiteRefused(
            "audit query refused: it carries no coordinator pin (a synthetic set signed with the coordinator's key)."
        )
    pin = dict(content[PIN])
    key_id = str(pin.get("key-id", ""))
    if key_id not in trusted:
        raise SiteRefused(f"audit query refused: pin key {key_id!r} is not among the site's trusted entities.")
    synthetic, arrays = query_digests(content)
    if synthetic != pin.get("synthetic-sha256"):
        raise SiteRefused("audit query refused: the synthetic set differs from the one the coordinator pinned.")
    if arrays != "none" and arrays != pin.get("checkpoint-sha256"):
        raise SiteRefused("audit query refused: the model sent differs from the pinned checkpoint.")
    try:
        message = _pin_message(synthetic, str(pin["checkpoint-sha256"]), int(pin["signed-at"]))
        ok = verify_signature(
            load_ssh_public_key(trusted[key_id].encode()), message, base64.urlsafe_b64decode(str(pin["signature"]))
        )
    except (KeyError, ValueError, TypeError, AttributeError):  # a malformed pin or a non-Ed25519 key
        ok = False
    if not ok:
        raise SiteRefused(f"audit query refused: the pin's signature does not verify with trusted key {key_id!r}.")
    return pin


def state_sha256(arrays: dict) -> str:
    """The hash `query_digests` gives the same arrays once they travel in a query."""
    parts = [
        p
        for k in sorted(arrays)
        for p in (k.encode(), str(np.asarray(arrays[k]).dtype).encode(), np.ascontiguousarray(arrays[k]).tobytes())
    ]
    return _digest(*parts)
