"""Screening of site updates before aggregation: crashes, NaN/Inf, wrong shapes, outlying norms.

Flower hands a strategy whatever replies arrived; a site that crashed simply has none. Every
reply is screened here and every rejection is logged with the site and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message


@dataclass
class Screened:
    accepted: list[Message] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {"node", "reason"}
    norms: dict[int, float] = field(default_factory=dict)


def _update_norm(reply: Message, global_arrays: dict[str, np.ndarray]) -> float:
    rec = reply.content["arrays"]
    sq = 0.0
    for k, ref in global_arrays.items():
        d = rec[k].numpy().astype(np.float64) - ref.astype(np.float64)
        sq += float(np.sum(d * d))
    return float(np.sqrt(sq))


def _shape_problem(reply: Message, global_arrays: dict[str, np.ndarray]) -> str:
    if "arrays" not in reply.content.array_records:
        return "no model arrays in the reply"
    rec = reply.content["arrays"]
    missing = sorted(set(global_arrays) - set(rec.keys()))
    extra = sorted(set(rec.keys()) - set(global_arrays))
    if missing or extra:
        return f"array names differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for k, ref in global_arrays.items():
        arr = rec[k].numpy()
        if tuple(arr.shape) != tuple(ref.shape):
            return f"array {k} has shape {tuple(arr.shape)}, the global model has {tuple(ref.shape)}"
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            return f"array {k} holds NaN or Inf"
    if "metrics" not in reply.content.metric_records or "num-examples" not in reply.content["metrics"]:
        return "no sample count (metrics.num-examples) in the reply"
    return ""


def screen(replies: list[Message], global_arrays: dict[str, np.ndarray], norm_factor: float) -> Screened:
    """Split replies into accepted and rejected (with reasons)."""
    out = Screened()
    candidates: list[Message] = []
    for r in replies:
        node = r.metadata.src_node_id
        if r.has_error():
            out.rejected.append({"node": node, "reason": f"the site failed: {r.error.reason}"})
            continue
        problem = _shape_problem(r, global_arrays)
        if problem:
            out.rejected.append({"node": node, "reason": problem})
            continue
        out.norms[node] = _update_norm(r, global_arrays)
        candidates.append(r)
    if len(candidates) >= 2:
        # The lower median: with two sites the smaller update is the reference, so one wild
        # update cannot raise its own yardstick.
        norms = sorted(out.norms[r.metadata.src_node_id] for r in candidates)
        median = norms[(len(norms) - 1) // 2]
        for r in candidates:
            n = out.norms[r.metadata.src_node_id]
            if median > 0 and n > norm_factor * median:
                out.rejected.append({"node": r.metadata.src_node_id, "reason": f"update norm {n:.3g} is more than {norm_factor:g} x the round's median {median:.3g}"})
            else:
                out.accepted.append(r)
    else:
        out.accepted = candidates
    return out
