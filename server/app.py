"""The coordinator's Flower ServerApp: reads the run config, runs cxrsynth.server.loop.

Run config keys (pyproject.toml [tool.flwr.app.config], or `flwr run . --run-config`):
`config` (a YAML path or preset), `out` (checkpoint directory; absolute on a real SuperLink),
`resume` (continue after the last complete round), `num-server-rounds`, `local-steps`,
`min-sites`, `strategy` (fedavg | fedprox | fedadam), `progress-file` (where progress lines and
warnings go; default stderr), `launcher-pid` and `launcher-group` (a simulated run stops when the
process that started it is gone). A run that stops on an error leaves <out>/server-error.json (its
kind and message).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cxrsynth.config import RunConfig, load_config
from cxrsynth.progress import Progress
from cxrsynth.server.loop import run_federation

SERVER_ERROR = "server-error.json"
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


def _progress(run_config: dict) -> Progress:
    """Progress lines, and the run's warnings, to the file `progress-file` names (`cxrsynth fl
    simulate` shows that file, not Flower's log), else to stderr."""
    path = run_config.get("progress-file")
    if not path:
        return Progress()
    stream = open(Path(str(path)), "a", encoding="utf-8", buffering=1)  # open for the whole run
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("cxrsynth").addHandler(handler)
    return Progress(stream=stream)


def _stop_with_launcher(pid: int, group: int) -> None:
    """A simulated run dies with the `cxrsynth fl simulate` that started it, as an in-process run
    would: Flower's simulation processes outlive a killed launcher and would finish the run behind
    a resumed one in the same folder."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
        # Flower's simulation runtime and its Ray workers share this process group; never the
        # launcher's group, which holds whoever started the launcher.
        if os.getpgrp() != group:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="launcher-watch").start()


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    cfg, out, resume = config_from_run_config(run_config)
    if run_config.get("launcher-pid"):
        _stop_with_launcher(int(run_config["launcher-pid"]), int(run_config["launcher-group"]))
    try:
        run_federation(grid, cfg, out, resume=resume, progress=_progress(run_config))
    except Exception as err:
        # The run's outcome for whoever started it from another process (`cxrsynth fl simulate`
        # raises it again as its kind; a coordinator reads it beside the checkpoints).
        out.mkdir(parents=True, exist_ok=True)
        kinds = [k.__name__ for k in type(err).__mro__]
        (out / SERVER_ERROR).write_text(json.dumps({"kinds": kinds, "message": str(err)}), encoding="utf-8")
        raise
