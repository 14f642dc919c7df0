"""Screening of site updates before aggregation: crashes, NaN/Inf, wrong shapes or dtypes,
sample counts, DP ledgers, outlying norms.

Flower hands a strategy whatever replies arrived; a site that crashed simply has none. Every
reply is screened here and every rejection is logged with the site and the reason. Nothing a
site claims is taken on trust: its sample count weighs its update in the average (NaN would
poison the checkpoint, a huge count would hand it the model), and its epsilon is what the
release gate reads, so the epsilon is recomputed from the reported accountant history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from flwr.app import Message

from cxrsynth.config import DPConfig


@dataclass
class Screened:
    accepted: list[Message] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {"node", "reason"}
    norms: dict[int, float] = field(default_factory=dict)
    missing: int = 0  # sites asked that never replied
    secure: dict = field(default_factory=dict)  # under secure aggregation: what the server knows of the sum


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
        if arr.dtype != ref.dtype:
            return f"array {k} has dtype {arr.dtype}, the global model has {ref.dtype}"
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            return f"array {k} holds NaN or Inf"
    return ""


def count_problem(n, bound: Optional[int]) -> str:
    """Why `num-examples` cannot weigh an update ("" when it can)."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n != int(n) or n <= 0:
        return f"num-examples {n!r} is not a positive whole number"
    if bound is not None and n > bound:
        return f"num-examples {int(n)} exceeds the {bound} records this site reported before"
    return ""


def ledger_problem(
    entry: Optional[dict],
    dp: DPConfig,
    num_examples: int,
    batch_size: int,
    previous: Optional[dict] = None,
    units: Optional[int] = None,
) -> str:
    """Why a site's DP ledger entry is not believed ("" when it checks out).

    The epsilon is recomputed from the entry's (noise, sample rate, steps) history with the run's
    accountant at the run's delta; the round's sample rate must be the one the site's count
    implies (`units`: its number of privacy units, patients under patient-level DP, at most its
    records); and a site's spending never goes down from one round to the next.
    """
    from cxrsynth.privacy.dp import epsilon_of

    if entry is None:
        return "no DP ledger in the reply, and the run trains with DP-SGD"
    try:
        history = [(float(s), float(q), int(n)) for s, q, n in entry["history"]]
        claimed, delta, steps = float(entry["epsilon"]), float(entry["delta"]), int(entry["steps"])
    except (KeyError, TypeError, ValueError):
        return "the DP ledger is incomplete (history, epsilon, delta, steps)"
    if not history or any(not (math.isfinite(s) and s >= 0 and 0 < q <= 1 and n >= 0) for s, q, n in history):
        return "the DP ledger's history is empty or holds an impossible (noise, rate, steps) entry"
    if entry.get("accountant") != dp.accountant or not math.isclose(delta, dp.delta, rel_tol=1e-9):
        return f"the DP ledger uses accountant {entry.get('accountant')!r} at delta {delta:g}; the run uses {dp.accountant} at {dp.delta:g}"
    if steps != sum(n for _, _, n in history):
        return f"the DP ledger claims {steps} steps, its history adds up to {sum(n for _, _, n in history)}"
    recomputed = epsilon_of(history, dp)
    if not math.isclose(claimed, recomputed, rel_tol=1e-6, abs_tol=1e-9):
        return f"the site claims epsilon {claimed:.6g}, its own history gives {recomputed:.6g}"
    noise, rate, _ = history[-1]
    if not math.isclose(noise, dp.noise_multiplier, rel_tol=1e-6):
        return f"the round's noise multiplier in the ledger is {noise:g}, the run's is {dp.noise_multiplier:g}"
    units = num_examples if units is None else units
    if (
        isinstance(units, bool)
        or not isinstance(units, (int, float))
        or units != int(units)
        or not 0 < units <= num_examples
    ):
        return f"privacy-units {units!r} is not a whole number between 1 and num-examples ({num_examples})"
    if entry.get("privacy_unit", dp.privacy_unit) != dp.privacy_unit:
        return f"the DP ledger protects a {entry.get('privacy_unit')}, the run asks for a {dp.privacy_unit}"
    units = int(units)
    expected_rate = min(batch_size, units) / units
    if not math.isclose(rate, expected_rate, rel_tol=1e-6):
        return f"the round's sample rate in the ledger is {rate:.6g}; a batch of {batch_size} from {units} units is {expected_rate:.6g}"
    if previous is not None and (
        steps < int(previous.get("steps", 0)) or recomputed < float(previous.get("epsilon", 0.0)) - 1e-9
    ):
        return "the DP ledger spends less than the same site's ledger of an earlier round"
    return ""


def claims_problem(
    reply: Message,
    *,
    dp: Optional[DPConfig],
    batch_size: int,
    bounds: Optional[dict[int, int]],
    ledgers: Optional[dict[str, dict]],
) -> str:
    """Why what a site says about itself (its sample count, its DP ledger) is not believed ("" when
    it is). These travel in the clear under secure aggregation too, so they are checked either way."""
    from cxrsynth.privacy.wire import ledger_from_record

    node = reply.metadata.src_node_id
    if "metrics" not in reply.content.metric_records or "num-examples" not in reply.content["metrics"]:
        return "no sample count (metrics.num-examples) in the reply"
    metrics = reply.content["metrics"]
    problem = count_problem(metrics["num-examples"], (bounds or {}).get(node))
    if problem or dp is None or not dp.enabled:
        return problem
    entry = None
    if "ledger" in reply.content.config_records:
        try:
            entry = ledger_from_record(reply.content["ledger"])
        except (KeyError, TypeError, ValueError):
            entry = {}
    units = metrics["privacy-units"] if "privacy-units" in metrics else None
    return ledger_problem(entry, dp, int(metrics["num-examples"]), batch_size, (ledgers or {}).get(str(node)), units)


def screen(
    replies: list[Message],
    global_arrays: dict[str, np.ndarray],
    norm_factor: float,
    *,
    dp: Optional[DPConfig] = None,
    batch_size: int = 1,
    bounds: Optional[dict[int, int]] = None,
    ledgers: Optional[dict[str, dict]] = None,
) -> Screened:
    """Split replies into accepted and rejected (with reasons).

    `dp`: the run's DP settings when it trains with DP (every reply then needs a ledger that
    checks out); `bounds`: node -> most records the site may count; `ledgers`: node (str) -> the
    site's ledger entry of an earlier round.
    """
    out = Screened()
    candidates: list[Message] = []
    for r in replies:
        node = r.metadata.src_node_id
        if r.has_error():
            out.rejected.append({"node": node, "reason": f"the site failed: {r.error.reason}"})
            continue
        problem = _shape_problem(r, global_arrays) or claims_problem(
            r, dp=dp, batch_size=batch_size, bounds=bounds, ledgers=ledgers
        )
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
                out.rejected.append(
                    {
                        "node": r.metadata.src_node_id,
                        "reason": f"update norm {n:.3g} is more than {norm_factor:g} x the round's median {median:.3g}",
                    }
                )
            else:
                out.accepted.append(r)
    else:
        out.accepted = candidates
    return out
