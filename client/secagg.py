"""The site's side of secure aggregation (`federation.secure_aggregation: secagg+`): Flower's
`secaggplus_mod`, fed with this site's update instead of its weights.

A SecAgg+ round is four `train` messages (setup, share keys, collect masked vectors, unmask;
server/secagg.py drives them). Only the third runs the training handler; Flower's mod then masks
what it returned. Flower's mod reads and writes the legacy FitRes layout, so `secagg_mod` turns
the handler's reply into that layout on the way in and takes it off again on the way out:

- masked: the update (local minus global weights) of every floating-point array, in sorted name
  order, plus one number, the share of coordinates the quantizer's clipping cut (so the
  coordinator learns that share summed over the sites, never one site's); quantization clips the
  update, not the weights, so the clipping range can be tight;
- in the clear, as in a plain round: `metrics` (num-examples and scalars), the DP `ledger`, and
  `counters`: integer arrays (step and batch counters) as lists of integers, which count steps and
  hold nothing learned from a record;
- never: the site's weights. An update that is not finite is refused here, since the coordinator
  can no longer refuse one site's NaN.

What leaves is checked by the egress guard, outside this mod (client/egress.py).

The masks. Flower 1.42 expands every mask seed (the private one, 32 random bytes, and each
pairwise one, a 32-byte ECDH-derived key) by XOR-folding it to 32 bits and seeding numpy's
RandomState with that (`secaggplus_utils.pseudo_rand_gen`): a mask is then one of 2^32, and a
coordinator that has learnt a site's private seed in the unmask stage, as the protocol lets it,
can search the remaining pairwise seed of a two-site round exhaustively. `mask_stream` keeps the
seed's strength instead (ChaCha20 keyed with SHA-256 of the seed) and replaces Flower's generator
in both the mod here and the workflow (server/secagg.py), so both sides draw the same masks; it
lives in privacy/secagg.py, below both apps.
"""

from __future__ import annotations

import importlib
import logging

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat

from cxrsynth.errors import CheckFailed
from cxrsynth.privacy.secagg import COUNTERS, mask_stream, summed_names
from cxrsynth.privacy.wire import from_arrays

LEGACY_PREFIX = "fitres."
log = logging.getLogger("cxrsynth.client")
# The module, not the function of the same name its package exports.
flower_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")


flower_mod.pseudo_rand_gen = mask_stream


def is_secure(msg: Message) -> bool:
    """Whether a train message is a stage of a SecAgg+ round."""
    return (
        msg.metadata.message_type == MessageType.TRAIN
        and msg.has_content()
        and RECORD_KEY_CONFIGS in msg.content.config_records
    )


def update_vector(
    local: dict[str, np.ndarray], global_: dict[str, np.ndarray], clip: float, weight_ratio: float
) -> list[np.ndarray]:
    """The site's update as Flower's mod masks it: one array per floating-point weight, then the
    share of coordinates that clipping at +-`clip` will cut once the mod scales them by `weight_ratio`."""
    names = summed_names(global_)
    deltas = [local[k].astype(np.float64) - global_[k].astype(np.float64) for k in names]
    if not all(np.all(np.isfinite(d)) for d in deltas):
        raise CheckFailed("the site's update holds NaN or Inf; it is not sent into the secure sum.")
    size = sum(d.size for d in deltas) or 1
    cut = sum(int(np.count_nonzero(np.abs(d) * weight_ratio > clip)) for d in deltas) / size
    if cut:
        log.warning(
            "secure aggregation: %.3g%% of this update's coordinates exceed federation.secagg.clipping_range and are clipped",
            100 * cut,
        )
    # The mod scales every entry by the weight ratio, and the sum divides it out again.
    return [*deltas, np.array([cut * clip])]


def _as_fitres(incoming: Message, reply: Message, context: Context) -> Message:
    """The handler's reply in the layout Flower's mod reads: the update as FitRes parameters."""
    local, global_ = from_arrays(reply.content["arrays"]), from_arrays(incoming.content["arrays"])
    n = int(reply.content["metrics"]["num-examples"])
    protocol = context.state.config_records[RECORD_KEY_STATE]
    vector = update_vector(local, global_, float(protocol["clipping_range"]), n / float(protocol["max_weight"]))
    fitres = FitRes(
        status=Status(code=Code.OK, message=""), parameters=ndarrays_to_parameters(vector), num_examples=n, metrics={}
    )
    content = compat.fitres_to_recorddict(fitres, keep_input=False)
    for name, record in reply.content.items():
        if name != "arrays":
            content[name] = record
    counters = {k: [int(x) for x in np.ravel(v)] for k, v in local.items() if v.dtype.kind != "f"}
    if counters:
        content[COUNTERS] = MetricRecord(counters)
    return Message(content, reply_to=incoming)


def _on_the_wire(reply: Message) -> Message:
    """Drop the legacy records and the arrays Flower's mod emptied: the protocol's record,
    metrics, ledger and counters remain."""
    if not reply.has_error():
        reply.content = RecordDict(
            {
                name: r
                for name, r in reply.content.items()
                if not name.startswith(LEGACY_PREFIX) and (isinstance(r, (ConfigRecord, MetricRecord)) or len(r))
            }
        )
    return reply


def secagg_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower mod: a SecAgg+ stage goes through Flower's `secaggplus_mod`; any other message passes."""
    if not is_secure(msg):
        return call_next(msg, context)
    return _on_the_wire(flower_mod.secaggplus_mod(msg, context, lambda m, c: _as_fitres(m, call_next(m, c), c)))
