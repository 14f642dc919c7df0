"""Federation and DP overheads (issue 7), measured on this machine.

1. Federated overhead: wall time of a K-site `fl simulate` run (R rounds x L local steps per site)
   against the same K*R*L local steps run in one process on all the sites' records. Reported as
   the whole run and as the rounds alone (without engine start-up and the vocabulary step).
2. DP overhead: mean step time with DP-SGD (Opacus, Poisson sampling) over plain steps.
3. Secure aggregation (`federation.secure_aggregation: secagg+`): mean seconds of a round (server
   side: send, the sites' training, the protocol's four stages, aggregation, checkpoint) against
   the plain round, the two kinds of run interleaved in one process (plain, SecAgg+, plain, ...),
   same data, model, sites and steps; and the share of the round the sites spent training.

    .venv/bin/python benchmarks/bench_fl.py --families mopoe,ldm,emixer --rounds 3 --local-steps 10
    .venv/bin/python benchmarks/bench_fl.py --families mopoe,emixer --only secagg --secagg-repeats 2
writes rows {"name", "value", "unit", "note"} to --out (benchmarks/run_all.py collects them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT

from cxrsynth.config import load_config
from cxrsynth.models import build_model
from cxrsynth.progress import Progress
from cxrsynth.train import load_run_data, seed_everything, train_steps


def _config(family: str, sites: int, rounds: int, local_steps: int, batch: int):
    return load_config(
        f"{family}-tiny",
        {
            "data": {"phantom": {"n": 40 * sites, "sites": sites, "image_size": 32}},
            "train": {"batch_size": batch, "num_threads": 1},
            "federation": {
                "sites": sites,
                "rounds": rounds,
                "local_steps": local_steps,
                "min_sites": sites,
                "vocab_min_count": 2,
            },
        },
    )


def _train_records(cfg):
    return [r for r in load_run_data(cfg) if r.split != "holdout"]


def federated_overhead(cfg) -> dict:
    from cxrsynth.server.simulate import simulate

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate(cfg, Path(tmp) / "run", progress=Progress(quiet=True))
        fed_total = time.perf_counter() - t0
        state = json.loads((Path(tmp) / "run" / "fl_state.json").read_text())
    fed_rounds = sum(h["seconds"] for h in state["history"])
    fed = cfg.federation
    steps = fed.sites * fed.rounds * fed.local_steps
    seed_everything(cfg.train.seed)
    t0 = time.perf_counter()
    records = _train_records(cfg)
    model = build_model(cfg.model)
    model.setup(records)
    model.opts = model.make_optimizers()
    t1 = time.perf_counter()
    train_steps(model, records, steps=steps, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    local_steps_s = time.perf_counter() - t1
    local_total = time.perf_counter() - t0
    return {
        "sites": fed.sites,
        "rounds": fed.rounds,
        "local_steps_per_round": fed.local_steps,
        "total_local_steps": steps,
        "federated_wall_s": fed_total,
        "federated_rounds_s": fed_rounds,
        "one_process_wall_s": local_total,
        "one_process_steps_s": local_steps_s,
        "overhead_ratio_wall": fed_total / local_total,
        "overhead_ratio_rounds": fed_rounds / local_steps_s,
    }


def secagg_cost(cfg, repeats: int) -> dict:
    """Round seconds with and without SecAgg+, interleaved; the vocabulary step and engine start-up are left out."""
    from safetensors.numpy import load_file

    from cxrsynth.server.simulate import simulate

    rounds: dict[str, list[float]] = {"off": [], "secagg+": []}
    local: dict[str, list[float]] = {"off": [], "secagg+": []}
    for _ in range(repeats):
        for mode in rounds:
            run = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"secure_aggregation": mode})})
            with tempfile.TemporaryDirectory() as tmp:
                simulate(run, Path(tmp) / "run", progress=Progress(quiet=True))
                history = json.loads((Path(tmp) / "run" / "fl_state.json").read_text())["history"]
                weights = sum(
                    int(v.size)
                    for v in load_file(str(Path(tmp) / "run" / "model.safetensors")).values()
                    if v.dtype.kind == "f"
                )
            rounds[mode] += [h["seconds"] for h in history]
            local[mode] += [h["metrics"].get("local-seconds", 0.0) for h in history]
    mean = {m: sum(v) / len(v) for m, v in rounds.items()}
    return {
        "round_s_plain": mean["off"],
        "round_s_secagg": mean["secagg+"],
        "secagg_ratio": mean["secagg+"] / mean["off"],
        "secagg_extra_s": mean["secagg+"] - mean["off"],
        "local_s_plain": sum(local["off"]) / len(local["off"]),
        "local_s_secagg": sum(local["secagg+"]) / len(local["secagg+"]),
        "rounds_timed": len(rounds["off"]),
        "weights": weights,
    }


def dp_overhead(cfg, steps: int) -> dict:
    from cxrsynth.privacy.dp import privatize

    records = _train_records(cfg)
    out = {}
    for mode in ("off", "on"):
        seed_everything(cfg.train.seed)
        model = build_model(cfg.model)
        model.setup(records)
        model.opts = model.make_optimizers()
        sampling = "shuffle"
        if mode == "on":
            dp_cfg = cfg.model_copy(update={"dp": cfg.dp.model_copy(update={"enabled": True})})
            privatize(model, dp_cfg, cfg.train.batch_size / len(records))
            sampling = "poisson"
        train_steps(model, records, steps=2, batch_size=cfg.train.batch_size, sampling=sampling)  # warm-up
        t0 = time.perf_counter()
        train_steps(model, records, steps=steps, batch_size=cfg.train.batch_size, sampling=sampling, start_step=2)
        out[f"step_s_dp_{mode}"] = (time.perf_counter() - t0) / steps
    out["dp_overhead_ratio"] = out["step_s_dp_on"] / out["step_s_dp_off"]
    out["steps_timed"] = steps
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="mopoe", help="comma-separated family names (cxrsynth.models.registry)")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dp-steps", type=int, default=20)
    p.add_argument(
        "--secagg-repeats", type=int, default=1, help="plain/SecAgg+ run pairs for the secure-aggregation cost"
    )
    p.add_argument("--only", default="", help="comma-separated parts: overhead, secagg (default: both)")
    p.add_argument("--quick", action="store_true", help="2 rounds of 4 local steps, 8 DP steps")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_fl.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.local_steps, args.dp_steps = 2, 4, 8
    torch.set_num_threads(1)
    rows = []
    parts = set(args.only.split(",")) if args.only else {"overhead", "secagg"}
    for family in args.families.split(","):
        cfg = _config(family, args.sites, args.rounds, args.local_steps, args.batch)
        shape = f"{args.sites} sites x {args.rounds} rounds x {args.local_steps} local steps"
        if "secagg" in parts:
            r = secagg_cost(cfg, args.secagg_repeats)
            rows += [
                {
                    "name": f"{family} SecAgg+ round cost",
                    "value": round(r["secagg_ratio"], 3),
                    "unit": "x",
                    "note": f"{shape}, {r['weights']:,} weights: {r['round_s_secagg']:.2f}s vs {r['round_s_plain']:.2f}s per round "
                    f"(+{r['secagg_extra_s']:.2f}s; sites' training {r['local_s_secagg']:.2f}s vs {r['local_s_plain']:.2f}s), "
                    f"{r['rounds_timed']} rounds of each, interleaved",
                },
            ]
        if "overhead" not in parts:
            continue
        r = {**dp_overhead(cfg, args.dp_steps), **federated_overhead(cfg)}
        rows += [
            {
                "name": f"{family} federated overhead (wall, with engine start-up)",
                "value": round(r["overhead_ratio_wall"], 3),
                "unit": "x",
                "note": f"{shape}: {r['federated_wall_s']:.1f}s vs {r['one_process_wall_s']:.1f}s in one process",
            },
            {
                "name": f"{family} federated overhead (rounds only)",
                "value": round(r["overhead_ratio_rounds"], 3),
                "unit": "x",
                "note": f"{r['federated_rounds_s']:.1f}s of rounds vs {r['one_process_steps_s']:.1f}s of steps",
            },
            {
                "name": f"{family} DP-SGD step overhead",
                "value": round(r["dp_overhead_ratio"], 3),
                "unit": "x",
                "note": f"{r['step_s_dp_on'] * 1000:.0f} ms vs {r['step_s_dp_off'] * 1000:.0f} ms per step, batch {cfg.train.batch_size}, {r['steps_timed']} steps",
            },
        ]
    from common import write

    write(args.out, "fl", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
