"""A real deployment on loopback: SuperLink with TLS and SuperNode authentication, two hospitals.

Processes are started here on free 127.0.0.1 ports and stopped at the end: `flower-superlink`
(in-memory state, see deploy/README.md), two registered `flower-supernode`s each with its own
site dataset, `flwr run` of the tiny preset for 2 rounds, and a third SuperNode whose key was
never registered, which the SuperLink must refuse.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cxrsynth.data.dataset import write_dataset
from cxrsynth.data.phantom import make_phantom

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    def __init__(self, logs: Path):
        self.logs = logs
        self.running: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        p.log_path = self.logs / f"{name}.log"
        self.running.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.running):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.running:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _wait_for(predicate, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_loopback_deployment_with_tls_and_node_auth(tmp_path):
    t_start = time.monotonic()
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, str(REPO / "deploy" / "certs.py"), "--out", str(certs), "--hosts", "localhost", "127.0.0.1", "--nodes", "hospital-a", "hospital-b", "intruder"], check=True)
    sites = {}
    for i, name in enumerate(("hospital-a", "hospital-b")):
        recs = [r.with_(site=name) for r in make_phantom(n=30, sites=1, seed=10 + i, image_size=16)]
        sites[name] = tmp_path / "data" / name
        write_dataset(sites[name], recs)
    cfg_path = tmp_path / "fl.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "preset": "mopoe-tiny",
                "model": {"image_size": 16, "text_length": 16, "channels": 8},
                "train": {"batch_size": 4, "num_threads": 1},
                "federation": {"sites": 2, "rounds": 2, "local_steps": 2, "min_sites": 2, "vocab_min_count": 2, "round_timeout": 240},
            }
        )
    )
    flwr_home = tmp_path / "flwr-home"
    link_port = _free_port()
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "cxrsynth"\n\n[superlink.cxrsynth]\naddress = "127.0.0.1:{link_port}"\nroot-certificates = "{certs / "ca.crt"}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "OMP_NUM_THREADS": "1"}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Procs(logs)
    try:
        link = procs.start(
            "superlink",
            [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
             "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(link_port)],
            env,
        )
        _wait_for(lambda: _listening(link_port), 60, "the SuperLink to listen")
        for name in ("hospital-a", "hospital-b"):
            subprocess.run([str(BIN / "flwr"), "supernode", "register", str(certs / "nodes" / f"{name}.pub"), "cxrsynth"], env=env, check=True, cwd=REPO, timeout=60)
        node_cmd = lambda name, port, data: [  # noqa: E731
            str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{link_port}", "--root-certificates", str(certs / "ca.crt"),
            "--auth-supernode-private-key", str(certs / "nodes" / name), "--port", str(port), "--max-retries", "3",
            "--node-config", f"data-path='{data}' site='{name}'",
        ]
        for name in ("hospital-a", "hospital-b"):
            procs.start(name, node_cmd(name, _free_port(), sites[name]), env)
        intruder = procs.start("intruder", node_cmd("intruder", _free_port(), sites["hospital-a"]), env)
        out = tmp_path / "global"
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(REPO), "cxrsynth", "--stream", "--run-config", f"config='{cfg_path}' out='{out}'"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        (logs / "flwr-run.log").write_text(run.stdout + run.stderr)
        assert run.returncode == 0 and "ServerApp raised an exception" not in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        _wait_for(lambda: (out / "rounds" / "round-002" / "fl_state.json").is_file(), 120, "the round-2 checkpoint")
        import json

        state = json.loads((out / "fl_state.json").read_text())
        assert [h["accepted"] for h in state["history"]] == [2, 2]
        assert (out / "model.safetensors").is_file() and (out / "run.yaml").is_file()
        # The unregistered SuperNode never joined: the SuperLink refused its key every time it tried.
        link_log = link.log_path.read_text()
        assert "No SuperNode found with the given public key" in link_log
        assert "Connection attempt failed" in intruder.log_path.read_text()
        assert "[RUN" not in intruder.log_path.read_text()  # it never received a message of the run
        assert link.poll() is None
    finally:
        procs.stop()
    print(f"loopback deployment test took {time.monotonic() - t_start:.1f}s")
