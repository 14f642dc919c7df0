"""The coordinator's round loop: shared vocabulary, rounds, screening, aggregation, checkpoints.

Written out here rather than with `Strategy.start()` because Flower has no resume: the loop
starts at the round after the last complete checkpoint, with the strategy's own state restored.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Optional

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from cxrsynth.checkpoint import load_checkpoint
from cxrsynth.config import RunConfig
from cxrsynth.errors import CheckFailed, InputError
from cxrsynth.models import build_model
from cxrsynth.models.base import GenerativeModel
from cxrsynth.pretrained import pinned
from cxrsynth.privacy.wire import from_arrays, ledger_from_record, round_config, to_arrays
from cxrsynth.progress import Progress
from cxrsynth.server.page import write_page
from cxrsynth.server.screen import screen
from cxrsynth.server.secagg import secure_round
from cxrsynth.server.state import last_round, load_round, save_round
from cxrsynth.server.strategy import load_strategy_state, make_strategy, strategy_state
from cxrsynth.server.vocab import merge_counts
from cxrsynth.train import seed_everything

log = logging.getLogger(__name__)


class RoundFailed(CheckFailed):
    """A round ended with fewer usable results than `federation.min_sites`."""


def _wait_for_nodes(grid: Grid, n: int, timeout: float, progress: Progress) -> list[int]:
    t0 = time.monotonic()
    said = False
    while len(nodes := list(grid.get_node_ids())) < n:
        if time.monotonic() - t0 > timeout:
            raise RoundFailed(
                f"only {len(nodes)} site(s) connected after {timeout:.0f}s; federation.min_sites is {n}."
            )
        if not said:
            progress.say(f"waiting for {n} sites to connect ({len(nodes)} so far)")
            said = True
        time.sleep(0.5)
    return nodes


def initial_model(grid: Grid, cfg: RunConfig, progress: Progress) -> tuple[GenerativeModel, dict]:
    """The global model before round 1, fitted to the sites' merged counts (server/vocab.py).

    From scratch: a vocabulary from the sites' frequent-token counts and the label mix from their
    label counts. With `train.init_from`: the pretrained base (its vocabulary comes from public
    data, so the sites send no token counts), refitted to the sites' label mix only.
    """
    fed = cfg.federation
    seed_everything(cfg.train.seed)
    start: dict = {}
    if cfg.train.init_from is not None:
        from cxrsynth.pretrained import load_base

        model, card = load_base(cfg)
        progress.say(
            f"starting from the base {cfg.train.init_from} (sha256 {card.sha256[:16]}...): {card.pretrained_on}"
        )
        start["base"] = {**card.model_dump(), "path": str(cfg.train.init_from)}
    else:
        model = build_model(cfg.model)
    nodes = _wait_for_nodes(grid, fed.min_sites, fed.round_timeout, progress)
    ask = {"config": round_config(cfg, {})}
    if fed.acquisition:
        from cxrsynth.models.acquisition import LEVELS, model_reference

        # About the base's own look (the sites' looks then differ from it by little, and clipping
        # seldom binds); a model not yet trained draws noise, so a flat grey-level spread instead.
        center = model_reference(model, seed=cfg.train.seed) if "base" in start else LEVELS
        ask["acquisition"] = ConfigRecord({"center": [float(v) for v in center]})
    msgs = [Message(RecordDict(ask), dst_node_id=n, message_type="query.vocab") for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=fed.round_timeout))
    ok = [r for r in replies if not r.has_error()]
    for r in replies:
        if r.has_error():
            log.warning("site %s gave no vocabulary counts: %s", r.metadata.src_node_id, r.error.reason)
    if len(ok) < fed.min_sites:
        raise RoundFailed(
            f"vocabulary step: {len(ok)} of {len(nodes)} sites answered, fewer than federation.min_sites={fed.min_sites}."
        )
    counts = merge_counts([dict(r.content["counts"]) for r in ok])
    labels = merge_counts([dict(r.content["label-counts"]) for r in ok if "label-counts" in r.content.metric_records])
    n_reports = sum(int(r.content["metrics"]["num-reports"]) for r in ok)
    if "base" not in start:
        model.setup_from_counts(dict(counts), n_reports)
    try:
        model.fit_label_counts(dict(labels))
    except ValueError as e:
        raise RoundFailed(f"vocabulary step: a site sent label counts the server cannot read ({e}).") from None
    summary = {
        "sites": len(ok),
        "tokens": len(counts),
        "reports": n_reports,
        "min_count": fed.vocab_min_count,
        "labeled_records": int(labels.get("labeled", 0)),
    }
    # What each site said it holds bounds the sample count it may weigh its updates with later.
    summary["site_reports"] = {str(r.metadata.src_node_id): int(r.content["metrics"]["num-reports"]) for r in ok}
    if fed.acquisition:
        start["site_looks"] = _site_looks(ok, cfg)
    progress.say(
        f"shared vocabulary: {len(counts)} tokens from {len(ok)} sites ({n_reports} reports)"
        if "base" not in start
        else f"label mix from {len(ok)} sites ({n_reports} studies); vocabulary from the base"
    )
    return model, {**start, "vocabulary": summary}


def _site_looks(replies: list[Message], cfg: RunConfig) -> dict:
    """The sites' looks (cxrsynth.models.acquisition) as generation reads them, weighted by their studies."""
    from cxrsynth.models.acquisition import LEVELS, SiteLooks

    weights, quantiles = [], []
    for r in replies:
        if "acquisition" not in r.content.metric_records:
            raise RoundFailed(
                f"vocabulary step: site {r.metadata.src_node_id} sent no look, and the run asks for them."
            )
        look = r.content["acquisition"]
        try:
            q = [float(look[f"q{i:02d}"]) for i in range(LEVELS.size)]
        except KeyError as e:
            raise RoundFailed(f"vocabulary step: site {r.metadata.src_node_id} sent a look without {e}.") from None
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in q):
            raise RoundFailed(f"vocabulary step: site {r.metadata.src_node_id} sent a look outside [0, 1].")
        quantiles.append(q)
        weights.append(max(int(r.content["metrics"]["num-reports"]), 1))
    note = (
        f"Gaussian mechanism, noise multiplier {cfg.federation.acquisition_noise:g}, clip {cfg.federation.acquisition_clip:g}, in each site's DP ledger"
        if cfg.dp.enabled
        else "without DP"
    )
    return SiteLooks(weights, quantiles, note).to_dict()


def _ledger_update(fl_state: dict, rnd: int, accepted: list[Message], cfg: RunConfig) -> None:
    if not cfg.dp.enabled:
        return
    book = fl_state.setdefault("privacy_ledger", {"sites": {}, "delta": cfg.dp.delta})
    # What every epsilon in the book protects (privacy/dp.py): a patient, or one study.
    book["privacy_unit"] = cfg.dp.privacy_unit
    for r in accepted:
        if "ledger" not in r.content.config_records:
            continue
        entry = ledger_from_record(r.content["ledger"])
        site = book["sites"].setdefault(str(r.metadata.src_node_id), {"rounds": []})
        site.update({k: v for k, v in entry.items() if k != "rounds"})
        site["rounds"].append({"round": rnd, "epsilon": entry["epsilon"], "steps": entry["steps"]})
    eps = [s["epsilon"] for s in book["sites"].values() if "epsilon" in s]
    book["epsilon"] = max(eps) if eps else 0.0


def run_federation(
    grid: Grid, cfg: RunConfig, out: Path, *, resume: bool = False, progress: Optional[Progress] = None
) -> Path:
    """Run `federation.rounds` rounds (continuing after the last checkpoint with `resume`). Returns `out`."""
    progress = progress or Progress()
    # Every site checks the round-1 weights against this pin before it trains (cxrsynth.client.task).
    cfg = pinned(cfg)
    fed = cfg.federation
    out = Path(out)
    strategy = make_strategy(fed)
    last = last_round(out)
    if last is not None and not resume:
        raise InputError(
            f"{out} already holds a federated run (last complete: {last.name}); add --resume to continue it, or choose another --out."
        )
    if last is not None:
        model, _, _ = load_checkpoint(last)
        fl_state, strat_arrays = load_round(last)
        load_strategy_state(strategy, strat_arrays, fl_state.get("strategy_scalars", {}))
        progress.say(f"resuming {out} after round {fl_state['round']} of {fed.rounds}")
    else:
        model, start = initial_model(grid, cfg, progress)
        fl_state = {"round": 0, "history": [], "rejections": [], **start}
    extra = model.extra_state()
    arrays = model.state()
    bar = progress.task(f"federated {cfg.model.family}", total=fed.rounds)
    bar.count = fl_state["round"]
    for rnd in range(fl_state["round"] + 1, fed.rounds + 1):
        t0 = time.perf_counter()
        _wait_for_nodes(grid, fed.min_sites, fed.round_timeout, progress)
        msgs = list(strategy.configure_train(rnd, to_arrays(arrays), round_config(cfg, extra), grid))
        bounds = fl_state.setdefault("site_bounds", dict(fl_state.get("vocabulary", {}).get("site_reports", {})))
        claims = dict(
            bounds={int(k): int(v) for k, v in bounds.items()},
            ledgers=fl_state.get("privacy_ledger", {}).get("sites", {}),
        )
        if fed.secure_aggregation == "secagg+":
            screened = secure_round(grid, msgs, arrays, rnd, cfg, history=fl_state["history"], **claims)
        else:
            replies = list(grid.send_and_receive(msgs, timeout=fed.round_timeout))
            screened = screen(
                replies, arrays, fed.reject_norm_factor, dp=cfg.dp, batch_size=cfg.train.batch_size, **claims
            )
            screened.missing = len(msgs) - len(replies)
        missing = screened.missing
        for rej in screened.rejected:
            log.warning("round %d: update of site %s rejected: %s", rnd, rej["node"], rej["reason"])
            fl_state["rejections"].append({"round": rnd, **rej})
        if len(screened.accepted) < fed.min_sites:
            reasons = "; ".join(f"site {r['node']}: {r['reason']}" for r in screened.rejected) or "no rejections"
            failure = (
                f"round {rnd}: {len(screened.accepted)} usable update(s) of {len(msgs)} sites "
                f"({missing} gave no reply), fewer than federation.min_sites={fed.min_sites}; {reasons}. "
                f"The run stops; the checkpoint of round {rnd - 1} in {out} is intact (continue with --resume)."
            )
            write_page(out, {**fl_state, "failure": failure})
            raise RoundFailed(failure)
        agg, metrics = strategy.aggregate_train(rnd, screened.accepted)
        if agg is None:
            raise RoundFailed(
                f"round {rnd}: the {fed.strategy} strategy produced no aggregate from {len(screened.accepted)} updates."
            )
        model.load_state(from_arrays(agg))
        arrays = model.state()
        _ledger_update(fl_state, rnd, screened.accepted, cfg)
        for r in screened.accepted:
            bounds.setdefault(str(r.metadata.src_node_id), int(r.content["metrics"]["num-examples"]))
        fl_state["round"] = rnd
        fl_state["history"].append(
            {
                "round": rnd,
                "sites": len(msgs),
                "accepted": len(screened.accepted),
                "rejected": len(screened.rejected),
                "no_reply": missing,
                "update_norms": {str(k): v for k, v in screened.norms.items()},
                **({"secure": screened.secure} if screened.secure else {}),
                "metrics": dict(metrics) if metrics is not None else {},
                "seconds": time.perf_counter() - t0,
            }
        )
        s_arrays, s_scalars = strategy_state(strategy)
        fl_state["strategy_scalars"] = s_scalars
        save_round(out, rnd, model, cfg, fl_state, s_arrays)
        write_page(out, fl_state, f"Federated {cfg.model.family}: {cfg.name}")
        bar.advance(1, f"round {rnd}: {len(screened.accepted)} updates")
    progress.say(f"federated run complete: {fed.rounds} rounds; checkpoint {out}")
    return out
