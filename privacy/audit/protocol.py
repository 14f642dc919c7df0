"""The federated audit's messages, as Flower records (one codec for the steward and the sites).

Query (steward -> site): `config` ConfigRecord {audit-policy (JSON), reports (list of str),
record-ids, and optionally run-config and extra-state}, `synthetic` ArrayRecord {images: N x H x W
uint8}, and optionally `arrays` (the model, for membership inference).
Answer (site -> steward): one MetricRecord of numbers: the site's answer flattened to dotted keys,
with flagged synthetic records as indices into the query's list. A site sends no strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from cxrsynth.config import AuditPolicy, RunConfig
from cxrsynth.data.records import Record
from cxrsynth.errors import InputError

STATUS = {"ran": 1, "not_run": 0, "error": -1}
ID_LISTS = ("images.copies", "rare_ngrams.leaking_reports", "near_duplicates.duplicated_reports", "text_embedding.close_reports")
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

        from client.task import rebuild_model

        model = rebuild_model(self.run_config, self.extra_state, self.arrays, torch.device("cpu"))
        model.eval()
        return model.member_scores


def make_query(synthetic: list[Record], policy: AuditPolicy, run_config: Optional[RunConfig] = None, extra_state: Optional[dict] = None, arrays: Optional[dict] = None) -> RecordDict:
    from client.records import round_config, to_arrays

    shapes = {r.image.shape for r in synthetic}
    if len(shapes) != 1:
        raise InputError(f"synthetic images differ in size ({sorted(shapes)[:3]}); the audit query carries one N x H x W array.")
    config = {"audit-policy": policy.model_dump_json(), "reports-findings": [r.findings for r in synthetic], "reports-impression": [r.impression for r in synthetic], "record-ids": [r.record_id for r in synthetic]}
    if run_config is not None:
        config.update(dict(round_config(run_config, extra_state or {})))
    content = RecordDict({"config": ConfigRecord(config), "synthetic": ArrayRecord({"images": Array(np.stack([r.image for r in synthetic]).astype(np.uint8))})})
    if arrays is not None:
        content["arrays"] = to_arrays(arrays)
    return content


def read_query(content: RecordDict) -> Query:
    from client.records import from_arrays, read_round_config

    cfg = content["config"]
    policy = AuditPolicy.model_validate_json(str(cfg["audit-policy"]))
    images = content["synthetic"]["images"].numpy()
    ids, fnd, imp = list(cfg["record-ids"]), list(cfg["reports-findings"]), list(cfg["reports-impression"])
    synthetic = [Record(i, i, i, site="synthetic", findings=f, impression=m, image=img) for i, f, m, img in zip(ids, fnd, imp, images)]
    run_config, extra = read_round_config(cfg) if "run-config" in cfg else (None, {})
    arrays = from_arrays(content["arrays"]) if "arrays" in content.array_records else None
    return Query(policy, synthetic, run_config, extra, arrays)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def answer_to_metrics(answer: dict, synthetic: list[Record]) -> dict:
    """The site's answer as numbers: ID lists become indices, strings are dropped or coded."""
    index = {r.record_id: i for i, r in enumerate(synthetic)}
    flat = _flatten(answer)
    out: dict = {}
    for k, v in flat.items():
        if k in DROP:
            continue
        if k == "membership.status":
            out[k] = STATUS[v]
        elif k in ID_LISTS:
            out[k + ".count"] = len(v)
            if v:
                out[k] = [index[x] for x in v]
        elif isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, (int, float)):
            out[k] = v
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
            out[k] = [float(x) for x in v] if any(isinstance(x, float) for x in v) else [int(x) for x in v]
        elif isinstance(v, list) and not v:
            out[k + ".count"] = 0
        else:
            raise TypeError(f"audit answer key {k!r} is not a number or list of numbers; it may not leave the site.")
    return out


def metrics_to_answer(metrics: dict, synthetic: list[Record], site: str) -> dict:
    """Inverse of answer_to_metrics, at the steward (`site`: the steward's name for the node)."""
    nested: dict = {"site": site}
    for k, v in metrics.items():
        if k.endswith(".count") and k[: -len(".count")] in ID_LISTS:
            base = k[: -len(".count")]
            ids = [synthetic[int(i)].record_id for i in metrics.get(base, [])] if v else []
            _put(nested, base, ids)
            continue
        if k in ID_LISTS:
            continue
        if k.endswith(".count") and k[: -len(".count")] not in metrics:
            _put(nested, k[: -len(".count")], [])
            continue
        if k == "membership.status":
            v = {c: s for s, c in STATUS.items()}[int(v)]
        _put(nested, k, list(v) if isinstance(v, list) else v)
    m = nested.get("membership")
    if m and m.get("status") != "ran":
        m["reason"] = "not run at the site (its reason stays in the site's log)"
    return nested


def _put(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value
