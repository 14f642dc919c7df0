"""A round under secure aggregation (`federation.secure_aggregation: secagg+`): Flower's
SecAggPlusWorkflow, so the coordinator learns the sites' weighted mean update and no site's own.

Flower's workflow speaks the legacy strategy API (a LegacyContext, FitIns/FitRes); this module is
the adapter between it and server/loop.py: a legacy strategy that names the round's sites and
keeps the sum (`_Sum`), and a grid (`_RoundGrid`) through which the workflow's four stages go.
The grid puts the round's train content (global weights, run config) on the masked-vector
stage, and screens each site's reply there, before its masked update enters the sum.

What screening is left. The server sees each site's claims in the clear, so the sample count and
the DP ledger are checked per site as in a plain round (server/screen.py `claims_problem`); a
site whose claims fail, or whose reply is malformed, is dropped before its masked update is
added, and SecAgg+ removes its pairwise masks as for a site that went offline. What the server
can no longer do is look at one site's update: reject its NaN, its wrong shape, or its norm
against the round's median. In their place: the site refuses to send a non-finite update
(client/secagg.py, in the signed ClientApp); the quantizer clips every coordinate of a site's
weighted update to +-`secagg.clipping_range` and works in integers, so no NaN or Inf can reach
the sum and one site moves a coordinate of the mean by a bounded amount; and the sum itself is
checked: its norm against `reject_norm_factor` times the median of earlier rounds' sums. A round
that fails that check stops the run (the server cannot tell which site to leave out).
"""

from __future__ import annotations

from typing import Callable, Optional

import flwr.server.workflow.secure_aggregation.secaggplus_workflow as flower_workflow
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitIns, FitRes, Parameters, Status, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.serverapp import Grid

from cxrsynth.config import RunConfig
from cxrsynth.privacy.secagg import COUNTERS, mask_stream, summed_names
from cxrsynth.privacy.wire import to_arrays
from cxrsynth.server.screen import Screened, claims_problem

# The masks from the seed's full strength, as the sites draw them (client/secagg.py).
flower_workflow.pseudo_rand_gen = mask_stream
# Before any site has reported its record count (a run that starts from a base has no vocabulary step).
DEFAULT_MAX_WEIGHT = 1000.0
# What the workflow reads from a site's reply at each stage.
_REPLY_KEYS = {
    Stage.SETUP: (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2),
    Stage.SHARE_KEYS: (Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST),
    Stage.COLLECT_MASKED_VECTORS: (Key.MASKED_PARAMETERS,),
    Stage.UNMASK: (Key.NODE_ID_LIST, Key.SHARE_LIST),
}


class _Sum(LegacyStrategy):
    """The legacy strategy Flower's workflow consults: it samples the round's sites and keeps the
    unmasked weighted mean the workflow hands to `aggregate_fit`."""

    def __init__(self, proxies: list[GridClientProxy]):
        super().__init__()
        self.proxies = proxies
        self.mean: Optional[list[np.ndarray]] = None

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(p, FitIns(Parameters(tensors=[], tensor_type=""), {})) for p in self.proxies]

    def aggregate_fit(self, server_round, results, failures):
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _RoundGrid:
    """The grid as the workflow sees it (it only calls `send_and_receive`)."""

    def __init__(self, grid: Grid, train: dict[int, Message], check: Callable[[Message], str]):
        self.grid, self.train, self.check = grid, train, check
        self.rejected: dict[int, str] = {}
        self.summed: dict[int, Message] = {}

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout: Optional[float] = None):
        messages = list(messages)
        if not messages:
            return []
        stage = str(messages[0].content[RECORD_KEY_CONFIGS][Key.STAGE])
        if stage == Stage.COLLECT_MASKED_VECTORS:
            for m in messages:
                ours = self.train[m.metadata.dst_node_id].content
                m.content = RecordDict(
                    {
                        "arrays": ours["arrays"],
                        "config": ours["config"],
                        RECORD_KEY_CONFIGS: m.content[RECORD_KEY_CONFIGS],
                    }
                )
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        answered = {r.metadata.src_node_id for r in replies}
        for m in messages:
            self._reject(m.metadata.dst_node_id, f"no reply in the SecAgg+ {stage} stage", answered)
        kept = []
        for r in replies:
            node = r.metadata.src_node_id
            if r.has_error():
                self._reject(node, f"the site failed: {r.error.reason}")
                kept.append(r)
                continue
            problem = self._problem(r, stage)
            if problem:
                # Left out as if it had gone offline: its update never enters the sum.
                self._reject(node, problem)
                continue
            if stage == Stage.COLLECT_MASKED_VECTORS:
                self.summed[node] = r
                n = int(r.content["metrics"]["num-examples"])
                legacy = compat.fitres_to_recorddict(
                    FitRes(Status(Code.OK, ""), Parameters(tensors=[], tensor_type=""), n, {}), keep_input=False
                )
                for name, record in legacy.items():
                    r.content[name] = record
            kept.append(r)
        return kept

    def _reject(self, node: int, reason: str, answered: frozenset = frozenset()) -> None:
        # A site already in the sum stays in it: missing in the unmask stage only means its
        # neighbours' shares did the unmasking.
        if node not in answered and node not in self.summed:
            self.rejected.setdefault(node, reason)

    def _problem(self, reply: Message, stage: str) -> str:
        rec = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if rec is None or any(k not in rec for k in _REPLY_KEYS[stage]):
            return f"the reply to the SecAgg+ {stage} stage lacks the protocol's keys"
        return self.check(reply) if stage == Stage.COLLECT_MASKED_VECTORS else ""


def _counters_problem(reply: Message, global_arrays: dict[str, np.ndarray]) -> str:
    ints = {k: v for k, v in global_arrays.items() if v.dtype.kind != "f"}
    sent = reply.content.metric_records.get(COUNTERS)
    got = dict(sent) if sent is not None else {}
    if set(got) != set(ints):
        return f"the counters in the clear ({sorted(got)[:3]}) are not the model's integer arrays ({sorted(ints)[:3]})"
    for k, ref in ints.items():
        values = got[k] if isinstance(got[k], list) else [got[k]]
        if len(values) != ref.size or not all(isinstance(x, int) for x in values):
            return f"counter {k} is not {ref.size} whole number(s)"
    return ""


def sum_problem(norm: float, history: list[dict], factor: float) -> str:
    """Why a round's secure sum is not taken ("" when it is): its mean update's norm against
    `factor` times the (lower) median of earlier rounds' sums, the one yardstick left once the
    sites' own updates are hidden. The first round has none: only the quantizer's bound holds."""
    earlier = sorted(h["secure"]["update_norm"] for h in history if "secure" in h)
    if not earlier:
        return ""
    median = earlier[(len(earlier) - 1) // 2]
    if median > 0 and norm > factor * median:
        return (
            f"the secure sum's update norm {norm:.3g} is more than {factor:g} x the median {median:.3g} of earlier rounds; "
            "under secure aggregation the server cannot tell which site's update made it"
        )
    return ""


def max_weight(cfg: RunConfig, bounds: dict[int, int]) -> float:
    """The scale of num-examples in the masked sum: a site with n records weighs n / W. The largest
    count a site reported keeps every honest weight within 1 and the quantizer's resolution."""
    return float(cfg.federation.secagg.max_weight or max(bounds.values(), default=0) or DEFAULT_MAX_WEIGHT)


def secure_round(
    grid: Grid,
    msgs: list[Message],
    global_arrays: dict[str, np.ndarray],
    rnd: int,
    cfg: RunConfig,
    *,
    bounds: dict[int, int],
    ledgers: dict[str, dict],
    history: list[dict],
) -> Screened:
    """One training round through SecAgg+. The accepted replies carry the aggregate as their
    arrays (with each site's counters), ready for the strategy; `secure` holds the sum's norm and
    the share of coordinates clipped, the only figures the server learns about the updates."""
    fed = cfg.federation
    sa = fed.secagg

    def check(reply: Message) -> str:
        return claims_problem(
            reply, dp=cfg.dp, batch_size=cfg.train.batch_size, bounds=bounds, ledgers=ledgers
        ) or _counters_problem(reply, global_arrays)

    train = {m.metadata.dst_node_id: m for m in msgs}
    round_grid = _RoundGrid(grid, train, check)
    total = _Sum([GridClientProxy(node, grid, grid.run.run_id) for node in train])
    context = LegacyContext(
        Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}), strategy=total
    )
    context.state["config"] = ConfigRecord({"current_round": rnd})
    context.state["parameters"] = ArrayRecord()
    workflow = flower_workflow.SecAggPlusWorkflow(
        sa.num_shares,
        sa.reconstruction_threshold,
        max_weight=max_weight(cfg, bounds),
        clipping_range=sa.clipping_range,
        quantization_range=sa.quantization_range,
        modulus_range=sa.modulus_range,
        timeout=fed.round_timeout,
    )
    workflow(round_grid, context)

    out = Screened(missing=sum(1 for r in round_grid.rejected.values() if r.startswith("no reply")))
    out.rejected = [{"node": node, "reason": reason} for node, reason in round_grid.rejected.items()]
    if total.mean is None:
        # The workflow halted: too few sites (or shares) left for the threshold; say so for the sites it had summed.
        halted = f"the SecAgg+ round could not be completed: fewer than reconstruction_threshold ({sa.reconstruction_threshold:g}) of the neighbours answered"
        out.rejected += [
            {"node": node, "reason": halted} for node in round_grid.summed if node not in round_grid.rejected
        ]
        return out
    names = summed_names(global_arrays)
    mean = dict(zip(names, total.mean[: len(names)]))
    norm = float(np.sqrt(sum(float(np.sum(np.square(d))) for d in mean.values())))
    out.secure = {
        "sites": len(round_grid.summed),
        "update_norm": norm,
        "clipped_share": float(total.mean[-1].ravel()[0]) / sa.clipping_range,
    }
    reason = sum_problem(norm, history, fed.reject_norm_factor)
    if reason:
        out.rejected += [{"node": node, "reason": reason} for node in round_grid.summed]
        return out
    weights = {k: (global_arrays[k].astype(np.float64) + mean[k]).astype(global_arrays[k].dtype) for k in names}
    for _node, reply in round_grid.summed.items():
        counters = dict(reply.content[COUNTERS]) if COUNTERS in reply.content.metric_records else {}
        ints = {
            k: np.asarray(counters[k], dtype=v.dtype).reshape(v.shape)
            for k, v in global_arrays.items()
            if v.dtype.kind != "f"
        }
        content = RecordDict({"arrays": to_arrays({**weights, **ints}), "metrics": reply.content["metrics"]})
        if "ledger" in reply.content.config_records:
            content["ledger"] = reply.content["ledger"]
        reply.content = content
        out.accepted.append(reply)
    return out
