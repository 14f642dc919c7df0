"""The coordinator's Flower ServerApp: reads the run config, runs cxrsynth.server.loop.

Run config keys (pyproject.toml [tool.flwr.app.config], or `flwr run . --run-config`):
`config` (a YAML path or preset), `out` (checkpoint directory; absolute on a real SuperLink),
`resume` (continue after the last complete round), `num-server-rounds`, `local-steps`,
`min-sites`, `strategy` (fedavg | fedprox | fedadam).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cxrsynth.config import RunConfig, load_config
from cxrsynth.progress import Progress
from cxrsynth.server.loop import run_federation

_FEDERATION_KEYS = {
    "num-server-rounds": "rounds",
    "local-steps": "local_steps",
    "min-sites": "min_sites",
    "strategy": "strategy",
}


def config_from_run_config(run_config: dict) -> tuple[RunConfig, Path, bool]:
    fed = {
        field: run_config[key] for key, field in _FEDERATION_KEYS.items() if run_config.get(key) not in (None, "", 0)
    }
    cfg = load_config(str(run_config.get("config") or "mopoe-tiny"), {"federation": fed} if fed else None)
    out = Path(str(run_config.get("out") or cfg.federation.out))
    return cfg, out, bool(run_config.get("resume", False))


def make_app(
    cfg: Optional[RunConfig] = None,
    out: Optional[Path] = None,
    resume: bool = False,
    progress: Optional[Progress] = None,
) -> ServerApp:
    """A ServerApp for this run; with no arguments it reads everything from the Flower run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if cfg is None:
            run_cfg, run_out, run_resume = config_from_run_config(dict(context.run_config))
        else:
            run_cfg, run_out, run_resume = cfg, Path(out or cfg.federation.out), resume
        run_federation(grid, run_cfg, run_out, resume=run_resume, progress=progress)

    return app


app = make_app()
