"""`cxrsynth fl simulate`: K simulated sites on this machine with Flower's simulation engine.

Each simulated site takes a partition of the run's data (phantom data by default) and keeps its
privacy ledger under <out>/site-ledgers/, as a hospital keeps it on its own disk.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Optional

from cxrsynth.config import RunConfig, load_config
from cxrsynth.errors import InputError
from cxrsynth.progress import Progress


def simulate(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: Optional[Progress] = None,
    client_mods: Optional[list] = None,
) -> Path:
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    from flwr.simulation import run_simulation

    from cxrsynth.client.app import make_app as make_client_app
    from cxrsynth.server.app import make_app as make_server_app

    fed = cfg.federation
    if cfg.data.path is None and fed.partition == "by-site" and cfg.data.phantom.sites < fed.sites:
        raise InputError(
            f"key 'federation.sites' is {fed.sites} but the phantom data has {cfg.data.phantom.sites} sites "
            "(data.phantom.sites) and federation.partition is by-site; raise data.phantom.sites or use partition: iid."
        )
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress()
    threads = cfg.train.num_threads or 1
    # Ray gets as many CPUs as there are sites times their threads (at most the machine's), so
    # sites run side by side when the machine allows it and queue otherwise.
    cpus = max(1, min(os.cpu_count() or 1, cfg.federation.sites * threads))
    # With a GPU the simulated sites share it; Ray hides it from a site given no share of it.
    gpus = 0.0
    if cfg.train.device != "cpu":
        import torch

        gpus = 1.0 / cfg.federation.sites if torch.cuda.is_available() else 0.0
    backend = {
        "client_resources": {"num_cpus": threads, "num_gpus": gpus},
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "logging_level": logging.ERROR},
    }
    run_simulation(
        server_app=make_server_app(cfg, out, resume, progress),
        client_app=make_client_app(mods=client_mods, ledger_dir=out / "site-ledgers"),
        num_supernodes=cfg.federation.sites,
        backend_config=backend,
        # Flower's debug lines with `cxrsynth --verbose` (cxrsynth.progress.setup_logging).
        verbose_logging=logging.getLogger().isEnabledFor(logging.DEBUG),
    )
    return out


def command(args: argparse.Namespace) -> int:
    overrides: dict = {}
    if args.data:
        overrides["data"] = {"path": args.data}
    if args.rounds:
        overrides["federation"] = {"rounds": args.rounds}
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else cfg.federation.out
    simulate(cfg, out, resume=args.resume, progress=Progress(args.quiet))
    return 0
