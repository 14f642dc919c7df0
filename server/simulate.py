"""`cxrsynth fl simulate`: K simulated sites on this machine, through Flower's current simulation API.

A local SuperLink in simulation mode (`flower-superlink --simulation`, loopback, a free port) runs
the app that `flwr run` submits; the ServerApp and the simulated ClientApps run in Flower's own
processes and read everything from the run config (server/app.py, client/app.py), as in a real
deployment. In <out>/simulation/: the run's RunConfig (run-config.yaml), the ServerApp's progress
lines and warnings (progress.log, shown on the terminal as they come), Flower's log of the run
(flower.log; on the terminal too with `cxrsynth --verbose`) and the SuperLink's (superlink.log).
Each simulated site keeps its privacy ledger under <out>/site-ledgers/, as a hospital keeps it on
its own disk.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from pydantic import BaseModel

from cxrsynth import errors
from cxrsynth.config import RunConfig, dump_config, load_config
from cxrsynth.errors import InputError
from cxrsynth.progress import Progress
from cxrsynth.server.app import SERVER_ERROR

SERVER_APP = "cxrsynth.server.app:app"
CLIENT_APP = "cxrsynth.client.app:app"
STARTUP_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin_dir() -> Path:
    """Where this environment's `flower-superlink` and `flwr` are (the SuperLink starts `flwr-simulation` from PATH)."""
    return Path(sys.executable).parent


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def local_superlink(workdir: Path, log_path: Path) -> Iterator[dict]:
    """A SuperLink in simulation mode on a free loopback port, stopped on exit. Yields the environment
    for `flwr` (its FLWR_HOME names this SuperLink as the default connection)."""
    port = _free_port()
    home = workdir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "simulation"\n\n[superlink.simulation]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "PATH": f"{_bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # Ray's notice about a future default, printed by every simulation otherwise.
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }
    cmd = [
        str(_bin_dir() / "flower-superlink"),
        "--insecure",
        "--simulation",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # The SuperLink and the processes it starts stay in this process group: whoever kills this
    # process's group (Ctrl-C, a scheduler) stops the simulation too.
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(port):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the local SuperLink exited with code {proc.returncode} while starting; its log ({log_path}) ends:\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the local SuperLink did not answer within {STARTUP_TIMEOUT_S:.0f}s; see {log_path}"
                )
            time.sleep(0.2)
        yield env
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def write_app(
    app_dir: Path, run_config: dict, server_app: str, client_app: str, modules: tuple[Path, ...] = ()
) -> Path:
    """A Flower app folder whose components are installed modules (or `modules` copied beside its
    pyproject.toml): the bundle `flwr run` builds carries no code of ours but those modules."""
    app_dir.mkdir(parents=True, exist_ok=True)
    for module in modules:
        if fnmatch.fnmatch(Path(module).name, "test_*.py") or fnmatch.fnmatch(Path(module).name, "*_test.py"):
            raise ValueError(f"{module}: Flower leaves test_*.py and *_test.py files out of an app bundle; rename it")
        shutil.copy(module, app_dir / Path(module).name)
    config = "\n".join(f"{key} = {_toml_value(value)}" for key, value in run_config.items())
    (app_dir / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools>=77"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        'name = "cxrsynth-simulation"\n'
        'version = "0.1.0"\n'
        'description = "cxrsynth fl simulate: the installed cxrsynth apps on simulated sites"\n'
        'license = "Apache-2.0"\n'
        "dependencies = []\n\n"
        "[tool.flwr.app]\n"
        'publisher = "cxrsynth"\n\n'
        "[tool.flwr.app.components]\n"
        f'serverapp = "{server_app}"\n'
        f'clientapp = "{client_app}"\n\n'
        "[tool.flwr.app.config]\n"
        f"{config}\n"
    )
    return app_dir


class _Follow:
    """Shows the lines a file gains while a run writes it (a thread), and the rest when stopped."""

    def __init__(self, path: Path, progress: Progress):
        self.path, self.progress = path, progress
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_Follow":
        self.path.write_text("", encoding="utf-8")
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        # Ctrl-C is the main thread's to act on.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        partial = ""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            while True:
                stopping = self.stop.is_set()  # before the read: what was written by then is shown
                chunk = f.readline()
                partial += chunk
                if partial.endswith("\n"):
                    self.progress.say(partial.rstrip("\n"))
                    partial = ""
                elif not chunk and stopping:
                    if partial:
                        self.progress.say(partial)
                    return
                elif not chunk:
                    time.sleep(0.2)


def run_app(
    app_dir: Path,
    env: dict,
    *,
    sites: int,
    cpus_per_site: int,
    gpus_per_site: float,
    cpus: int,
    log_path: Path,
    verbose: bool = False,
) -> str:
    """`flwr run` the app on the local SuperLink with `sites` simulated SuperNodes, Flower's streamed
    log to `log_path` (and to stderr with `verbose`). Returns the run's final status (Flower's,
    e.g. 'finished:completed')."""
    federation = (
        f"num-supernodes={sites} client-resources-num-cpus={int(cpus_per_site)} "
        f"client-resources-num-gpus={float(gpus_per_site)} init-args-num-cpus={int(cpus)} "
        f"init-args-logging-level='ERROR' verbose={'true' if verbose else 'false'}"
    )
    flwr = str(_bin_dir() / "flwr")
    cmd = [flwr, "run", str(app_dir), "--stream", "--federation-config", federation]
    started: list[str] = []

    def read(stream, log) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        for line in stream:
            log.write(line)
            log.flush()
            if verbose:
                print(line, end="", file=sys.stderr, flush=True)
            if not started and (m := re.search(r"Successfully started run (\d+)", line)):
                started.append(m.group(1))

    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
        reader = threading.Thread(target=read, args=(proc.stdout, log), daemon=True)
        reader.start()
        try:
            # A wait in short slices: Ctrl-C (which any of this process's threads may take) is
            # acted on within half a second.
            while proc.poll() is None:
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            reader.join()
        finally:
            if proc.poll() is None:  # interrupted: `flwr run` would keep waiting for a SuperLink that is stopping
                proc.kill()
                proc.wait()
    run_id = started[0] if started else None
    if run_id is None:
        raise RuntimeError(
            f"`flwr run` started no run (exit code {proc.returncode}); Flower's log ({log_path}) ends:\n{_tail(log_path)}"
        )
    answer = subprocess.run(
        [flwr, "ls", "--run-id", run_id, "--format", "json"], env=env, capture_output=True, text=True, timeout=60
    )
    try:
        return str(json.loads(answer.stdout)["runs"][0]["status"])
    except (ValueError, KeyError, IndexError):
        raise RuntimeError(f"Flower did not report the status of run {run_id}: {answer.stdout[-500:]}") from None


def with_absolute_paths(model: BaseModel) -> BaseModel:
    """`model` with every relative path made absolute from here: Flower's processes may start elsewhere."""
    updates: dict = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = value.resolve()
        elif isinstance(value, BaseModel) and (new := with_absolute_paths(value)) is not value:
            updates[name] = new
    return model.model_copy(update=updates) if updates else model


def _raise_server_error(out: Path, status: str, log_path: Path) -> None:
    """The ServerApp's error, raised here as the same kind (a refused round is a failed check)."""
    path = out / SERVER_ERROR
    if path.is_file():
        err = json.loads(path.read_text(encoding="utf-8"))
        for name in err["kinds"]:  # the error's own class, then its bases: the first that is ours
            kind = getattr(errors, name, None)
            if isinstance(kind, type) and issubclass(kind, errors.CxrError):
                raise kind(err["message"])
        raise RuntimeError(f"the ServerApp failed: {err['kinds'][0]}: {err['message']} (Flower's log: {log_path})")
    if status != "finished:completed":
        raise RuntimeError(f"the simulated run ended as {status}; Flower's log ({log_path}) ends:\n{_tail(log_path)}")


def simulate_app(
    server_app: str,
    client_app: str,
    *,
    sites: int,
    run_config: dict,
    log_path: Path,
    modules: tuple[Path, ...] = (),
    threads_per_site: int = 1,
    gpus_per_site: float = 0.0,
    progress: Optional[Progress] = None,
) -> str:
    """Run a ServerApp and a ClientApp ("module:attribute", installed or in `modules`) on `sites`
    simulated SuperNodes of a local SuperLink. Returns Flower's final status of the run."""
    import logging

    # Ray gets as many CPUs as there are sites times their threads (at most the machine's), so
    # sites run side by side when the machine allows it and queue otherwise.
    cpus = max(1, min(os.cpu_count() or 1, sites * threads_per_site))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The ServerApp writes its progress lines and warnings here (server/app.py); they are shown as
    # they come. Flower's own log goes to `log_path` only, the SuperLink's beside it.
    shown = log_path.with_name("progress.log")
    run_config = {
        **run_config,
        "progress-file": str(shown),
        # The run dies with this process (server/app.py), as an in-process run would.
        "launcher-pid": os.getpid(),
        "launcher-group": os.getpgrp(),
    }
    with tempfile.TemporaryDirectory(prefix="cxrsynth-sim-") as tmp:
        app = write_app(Path(tmp) / "app", run_config, server_app, client_app, tuple(Path(m) for m in modules))
        with (
            local_superlink(Path(tmp), log_path.with_name("superlink.log")) as env,
            _Follow(shown, progress or Progress()),
        ):
            return run_app(
                app,
                env,
                sites=sites,
                cpus_per_site=threads_per_site,
                gpus_per_site=gpus_per_site,
                cpus=cpus,
                log_path=log_path,
                verbose=logging.getLogger().isEnabledFor(logging.DEBUG),
            )


def simulate(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: Optional[Progress] = None,
    client_app: Optional[tuple[Path, str]] = None,
    run_config: Optional[dict] = None,
) -> Path:
    """Run `cfg`'s federation on `federation.sites` simulated sites; the checkpoints go to `out`.

    `client_app`: (a module file, its ClientApp's name) to run at the sites instead of cxrsynth's own,
    e.g. one that wraps it with mods; the file goes into the app bundle. `run_config`: extra run
    config keys for it."""
    fed = cfg.federation
    if cfg.data.path is None and fed.partition == "by-site" and cfg.data.phantom.sites < fed.sites:
        raise InputError(
            f"key 'federation.sites' is {fed.sites} but the phantom data has {cfg.data.phantom.sites} sites "
            "(data.phantom.sites) and federation.partition is by-site; raise data.phantom.sites or use partition: iid."
        )
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "simulation"
    work.mkdir(exist_ok=True)
    (out / SERVER_ERROR).unlink(missing_ok=True)
    (work / "run-config.yaml").write_text(dump_config(with_absolute_paths(cfg)), encoding="utf-8")
    log_path = work / "flower.log"
    # With a GPU the simulated sites share it; Ray hides it from a site given no share of it.
    gpus = 0.0
    if cfg.train.device != "cpu":
        import torch

        gpus = 1.0 / fed.sites if torch.cuda.is_available() else 0.0
    keys = {
        "config": str(work / "run-config.yaml"),
        "out": str(out),
        "resume": bool(resume),
        # Where the simulated sites keep their privacy ledgers (client/app.py).
        "site-ledgers": str(out / "site-ledgers"),
        **(run_config or {}),
    }
    module, name = client_app if client_app else (None, None)
    status = simulate_app(
        SERVER_APP,
        f"{Path(module).stem}:{name}" if module else CLIENT_APP,
        sites=fed.sites,
        run_config=keys,
        log_path=log_path,
        modules=(Path(module),) if module else (),
        threads_per_site=cfg.train.num_threads or 1,
        gpus_per_site=gpus,
        progress=progress,
    )
    _raise_server_error(out, status, log_path)
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
