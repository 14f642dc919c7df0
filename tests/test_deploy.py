"""A real deployment on loopback: SuperLink with TLS and SuperNode authentication, two hospitals.

Processes are started here on free 127.0.0.1 ports and stopped at the end: the SuperLink
(`python -m cxrsynth.server.superlink`, in-memory state, see deploy/README.md), two registered SuperNodes
(`python -m cxrsynth.client.supernode`, trusting only the coordinator's app-signing key) each with its
own site dataset, `flwr run` of the signed tiny preset for 2 rounds, and a third SuperNode whose
key was never registered, which the SuperLink must refuse (the same run under SecAgg+ is a slow
variant). The trust-model tests (issue 15) play the outsider: the Control API refused from a
host other than the coordinator's (listing nodes, registering its own key, starting its app),
a SuperNode holding the key it tried to register refused, and a foreign app, unsigned or signed
by a key the hospital does not trust, refused by a SuperNode.
"""

import json
import os
import shutil
import signal
import socket
import ssl
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


def _superlink_cmd(certs: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cxrsynth.server.superlink",
        "--ssl-ca-certfile",
        str(certs / "ca.crt"),
        "--ssl-certfile",
        str(certs / "server.pem"),
        "--ssl-keyfile",
        str(certs / "server.key"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _supernode_cmd(certs: Path, link_port: int, name: str, data: Path, trusted: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cxrsynth.client.supernode",
        "--superlink",
        f"127.0.0.1:{link_port}",
        "--root-certificates",
        str(certs / "ca.crt"),
        "--auth-supernode-private-key",
        str(certs / "nodes" / name),
        "--port",
        str(_free_port()),
        "--max-retries",
        "3",
        "--trusted-entities",
        str(trusted),
        "--node-config",
        f"data-path='{data}' site='{name}'",
    ]


def _flwr_env(tmp_path: Path, certs: Path, link_port: int) -> dict:
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir(exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "cxrsynth"\n\n[superlink.cxrsynth]\naddress = "127.0.0.1:{link_port}"\nroot-certificates = "{certs / "ca.crt"}"\n'
    )
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_NUM_THREADS": "1",
    }


def _coordinator(tmp_path: Path, certs: Path) -> tuple[int, dict, "Procs"]:
    """(SuperLink port, the coordinator's environment for `flwr`, the process list logging under tmp_path/logs)."""
    port = _free_port()
    env = _flwr_env(tmp_path, certs, port)
    (tmp_path / "logs").mkdir(exist_ok=True)
    return port, env, Procs(tmp_path / "logs")


def _start_superlink(procs: "Procs", certs: Path, port: int, env: dict, name: str = "superlink") -> subprocess.Popen:
    link = procs.start(name, _superlink_cmd(certs, port), env)
    _wait_for(lambda: _listening(port), 60, f"the SuperLink ({name}) to listen")
    return link


def _sign(app: Path, key: Path) -> str:
    out = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "sign_app.py"), "--key", str(key), "--app", str(app)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_control_api_answers_only_the_coordinator_host(tmp_path):
    """An outsider with the CA certificate and network access gets the Fleet API, never the Control or Runtime API."""
    import httpx

    certs = tmp_path / "certs"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "certs.py"),
            "--out",
            str(certs),
            "--hosts",
            "localhost",
            "127.0.0.1",
            "--nodes",
            "intruder",
            "--app-signer",
            "coordinator",
        ],
        check=True,
    )
    port, env, procs = _coordinator(tmp_path, certs)
    logs = procs.logs
    try:
        _start_superlink(procs, certs, port, {**env, "CXRSYNTH_CONTROL_ALLOW": "127.0.0.1/32"})
        # The outsider's host: 127.0.0.2 is another address of this machine, outside the allow-list.
        outsider = httpx.Client(
            transport=httpx.HTTPTransport(
                local_address="127.0.0.2", verify=ssl.create_default_context(cafile=str(certs / "ca.crt"))
            ),
            timeout=20,
        )
        base = f"https://127.0.0.1:{port}"
        # What the outsider did: list the nodes, register a key, start an app; and the ServerApp's link.
        for path in (
            "/v1/control/list-nodes",
            "/v1/control/register-node",
            "/v1/control/start-run",
            "/v1/control/list-runs",
            "/v1/runtime/pull-messages",
        ):
            r = outsider.post(base + path, content=b"", headers={"content-type": "application/protobuf"})
            assert r.status_code == 403 and "coordinator's host" in r.text, (path, r.status_code, r.text[:200])
        # The Fleet API still answers the outsider (Flower's own checks, not the guard, decide there).
        r = outsider.post(base + "/v1/fleet/get-run", content=b"", headers={"content-type": "application/protobuf"})
        assert r.status_code != 403, r.text[:200]
        # Spoofing the coordinator's address in a proxy header does not help.
        r = outsider.post(base + "/v1/control/list-runs", content=b"", headers={"x-forwarded-for": "127.0.0.1"})
        assert r.status_code == 403
        # The coordinator, on its own host, uses the Control API as usual.
        ls = subprocess.run(
            [str(BIN / "flwr"), "ls", "cxrsynth"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert ls.returncode == 0, ls.stdout + ls.stderr
    finally:
        procs.stop()
    # With the coordinator's host elsewhere, Flower's own CLI on this host is the outsider: it cannot
    # list the nodes, register a SuperNode key, list runs or start its app; and a SuperNode holding
    # the key it tried to register is refused by the Fleet API.
    procs = Procs(logs)
    app = _probe_app(tmp_path)
    try:
        link = _start_superlink(procs, certs, port, {**env, "CXRSYNTH_CONTROL_ALLOW": "192.0.2.250/32"}, "superlink-2")
        for cmd in (
            ["supernode", "list", "cxrsynth"],
            ["supernode", "register", str(certs / "nodes" / "intruder.pub"), "cxrsynth"],
            ["ls", "cxrsynth"],
            ["run", str(app), "cxrsynth"],
        ):
            r = subprocess.run(
                [str(BIN / "flwr"), *cmd], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            assert r.returncode != 0 and "CXRSYNTH_CONTROL_ALLOW" in r.stdout + r.stderr, (cmd, r.stdout + r.stderr)
        data = tmp_path / "data" / "intruder"
        write_dataset(data, make_phantom(n=4, sites=1, seed=3, image_size=16))
        node = procs.start(
            "intruder", _supernode_cmd(certs, port, "intruder", data, certs / "trusted-entities.yaml"), env
        )
        _wait_for(
            lambda: "No SuperNode found with the given public key" in link.log_path.read_text(),
            90,
            "the SuperLink to refuse the intruder's key",
        )
        assert "[RUN" not in node.log_path.read_text()
    finally:
        procs.stop()


def test_supernode_launcher_refuses_to_start_without_trusted_entities():
    """A hospital SuperNode that would run any app the SuperLink sends (the issue's hole) does not start."""
    r = subprocess.run(
        [sys.executable, "-m", "cxrsynth.client.supernode", "--superlink", "127.0.0.1:9", "--insecure"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--trusted-entities is required" in r.stderr, r.stderr[-500:]


def _probe_app(tmp_path: Path) -> Path:
    """The outsider's Flower app: its ClientApp sends back the node config (the dataset path, the site)."""
    app = tmp_path / "probe"
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(FOREIGN_PYPROJECT)
    (app / "probe_app.py").write_text(FOREIGN_APP)
    return app


FOREIGN_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "probe"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "outsider"

[tool.flwr.app.components]
serverapp = "probe_app:server"
clientapp = "probe_app:client"

[tool.flwr.app.config]
out = ""
app-signature = ""
"""

# What the outsider ran in the issue: a ClientApp that sends back the node config (the dataset path, the site).
FOREIGN_APP = """import json, time
from pathlib import Path
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

client = ClientApp()


@client.query()
def leak(msg, context):
    return Message(RecordDict({"leak": ConfigRecord({k: str(v) for k, v in context.node_config.items()})}), reply_to=msg)


server = ServerApp()


@server.main()
def main(grid, context):
    t0 = time.time()
    while not (nodes := list(grid.get_node_ids())) and time.time() - t0 < 60:
        time.sleep(0.5)
    msgs = [Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="query") for n in nodes]
    out = []
    for r in grid.send_and_receive(msgs, timeout=90):
        if r.has_error():
            out.append({"error": int(r.error.code), "reason": r.error.reason})
        else:
            out.append({"leak": dict(r.content["leak"])})
    Path(context.run_config["out"]).write_text(json.dumps(out))
"""


def test_supernode_runs_only_apps_signed_by_a_trusted_key(tmp_path):
    """An unsigned app and one signed by a key the hospital does not trust never run at the site."""
    certs, other = tmp_path / "certs", tmp_path / "outsider-keys"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "certs.py"),
            "--out",
            str(certs),
            "--hosts",
            "localhost",
            "127.0.0.1",
            "--nodes",
            "hospital-a",
            "--app-signer",
            "coordinator",
        ],
        check=True,
    )
    subprocess.run(
        [sys.executable, str(REPO / "deploy" / "certs.py"), "--out", str(other), "--app-signer", "coordinator"],
        check=True,
    )
    data = tmp_path / "data" / "hospital-a"
    write_dataset(data, [r.with_(site="hospital-a") for r in make_phantom(n=4, sites=1, seed=3, image_size=16)])
    app = _probe_app(tmp_path)
    port, env, procs = _coordinator(tmp_path, certs)
    logs = procs.logs
    try:
        _start_superlink(procs, certs, port, env)
        subprocess.run(
            [str(BIN / "flwr"), "supernode", "register", str(certs / "nodes" / "hospital-a.pub"), "cxrsynth"],
            env=env,
            check=True,
            cwd=tmp_path,
            timeout=60,
        )
        node = procs.start(
            "hospital-a", _supernode_cmd(certs, port, "hospital-a", data, certs / "trusted-entities.yaml"), env
        )

        def run(name: str, *signature: str) -> list:
            out = tmp_path / f"{name}.json"
            cmd = [str(BIN / "flwr"), "run", str(app), "cxrsynth", "--stream", "--run-config", f"out='{out}'"]
            cmd += [a for s in signature for a in ("--run-config", s)]
            r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
            (logs / f"flwr-{name}.log").write_text(r.stdout + r.stderr)
            assert out.is_file(), r.stdout[-2000:] + r.stderr[-2000:]
            return json.loads(out.read_text())

        # Same key id, another key: a forged "coordinator" signature.
        for name, sig in (("unsigned", ()), ("foreign-signed", (_sign(app, other / "signing" / "coordinator"),))):
            replies = run(name, *sig)
            assert replies and all("leak" not in r for r in replies), replies
            assert all(r["reason"] == "The FAB could not be verified." for r in replies), replies
        assert (
            "FAB verification failed" in node.log_path.read_text()
            or "could not be verified" in node.log_path.read_text()
        )
        # The mechanism is not a blanket refusal: what the trusted key signed runs (so sign only reviewed code).
        replies = run("trusted", _sign(app, certs / "signing" / "coordinator"))
        assert replies and replies[0].get("leak", {}).get("site") == "hospital-a", replies
    finally:
        procs.stop()


# The same deployment with SecAgg+: the four stages of each round pass the real SuperLink and
# SuperNodes, whose node state carries each site's protocol keys from one stage to the next.
@pytest.mark.parametrize(
    "secure", [pytest.param("off", marks=pytest.mark.long), pytest.param("secagg+", marks=pytest.mark.slow)]
)
def test_loopback_deployment_with_tls_and_node_auth(tmp_path, secure):
    t_start = time.monotonic()
    certs = tmp_path / "certs"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "certs.py"),
            "--out",
            str(certs),
            "--hosts",
            "localhost",
            "127.0.0.1",
            "--nodes",
            "hospital-a",
            "hospital-b",
            "intruder",
            "--app-signer",
            "coordinator",
        ],
        check=True,
    )
    # A snapshot of the app: the signature covers the exact bytes `flwr run` sends, and the
    # working tree may change while the test runs.
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy2(REPO / "pyproject.toml", app / "pyproject.toml")
    for pkg in ("cxrsynth", "client", "server", "privacy"):
        shutil.copytree(REPO / pkg, app / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
                # Within the hospitals' default floor (client/policy.py): a run asking less is refused.
                "dp": {"enabled": True, "noise_multiplier": 1.0, "delta": 1.0e-5, "epsilon_budget": 10.0},
                "federation": {
                    "sites": 2,
                    "rounds": 2,
                    "local_steps": 2,
                    "min_sites": 2,
                    "vocab_min_count": 2,
                    "round_timeout": 240,
                    "secure_aggregation": secure,
                },
            }
        )
    )
    link_port, env, procs = _coordinator(tmp_path, certs)
    logs = procs.logs
    try:
        link = _start_superlink(procs, certs, link_port, env)
        for name in ("hospital-a", "hospital-b"):
            subprocess.run(
                [str(BIN / "flwr"), "supernode", "register", str(certs / "nodes" / f"{name}.pub"), "cxrsynth"],
                env=env,
                check=True,
                cwd=REPO,
                timeout=60,
            )
        trusted = certs / "trusted-entities.yaml"
        for name in ("hospital-a", "hospital-b"):
            procs.start(name, _supernode_cmd(certs, link_port, name, sites[name], trusted), env)
        intruder = procs.start(
            "intruder", _supernode_cmd(certs, link_port, "intruder", sites["hospital-a"], trusted), env
        )
        out = tmp_path / "global"
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(app),
                "cxrsynth",
                "--stream",
                "--run-config",
                f"config='{cfg_path}' out='{out}'",
                "--run-config",
                _sign(app, certs / "signing" / "coordinator"),
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        (logs / "flwr-run.log").write_text(run.stdout + run.stderr)
        assert run.returncode == 0 and "ServerApp raised an exception" not in run.stdout, (
            run.stdout[-3000:] + run.stderr[-3000:]
        )
        _wait_for(lambda: (out / "rounds" / "round-002" / "fl_state.json").is_file(), 120, "the round-2 checkpoint")
        state = json.loads((out / "fl_state.json").read_text())
        assert [h["accepted"] for h in state["history"]] == [2, 2]
        assert all(
            ("secure" in h) == (secure != "off") and bool(h["update_norms"]) == (secure == "off")
            for h in state["history"]
        )
        rounds = ", ".join(f"{h['seconds']:.1f}" for h in state["history"])
        # Each site's epsilon, checked by the coordinator against its own accountant history.
        book = state["privacy_ledger"]["sites"]
        assert len(book) == 2 and all(0 < s["epsilon"] < 10 and s["steps"] == 4 for s in book.values())
        # The vocabulary step ran at the sites' floor (10 patients), not the run's 2.
        assert state["vocabulary"]["sites"] == 2
        assert (out / "model.safetensors").is_file() and (out / "run.yaml").is_file()
        # The unregistered SuperNode never joined: the SuperLink refused its key every time it tried.
        link_log = link.log_path.read_text()
        assert "No SuperNode found with the given public key" in link_log
        assert "Connection attempt failed" in intruder.log_path.read_text()
        assert "[RUN" not in intruder.log_path.read_text()  # it never received a message of the run
        assert link.poll() is None
    finally:
        procs.stop()
    print(
        f"loopback deployment test (secure_aggregation {secure}) took {time.monotonic() - t_start:.1f}s; rounds {rounds} s"
    )


def test_compose_and_dockerfiles_follow_the_trust_model():
    """deploy/README.md's trust model, as the deployment files state it: one port, Control API for loopback, signed apps only."""
    import ipaddress

    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]
    link = compose["superlink"]
    assert link["ports"] == ["9093:9093"]
    allow = link["environment"]["CXRSYNTH_CONTROL_ALLOW"].split()
    assert allow and all(ipaddress.ip_network(n).is_loopback for n in allow)
    # The coordinator holds hospital public keys only, never a private one.
    assert all(v.split(":")[0].endswith(".pub") for v in link["volumes"] if "/nodes/" in v)
    hospitals = {name: s for name, s in compose.items() if name.startswith("hospital-")}
    assert len(hospitals) == 2
    for name, h in hospitals.items():
        assert "ports" not in h  # a hospital listens on nothing; it calls out to the Fleet API
        assert any(v.endswith(":/certs/trusted-entities.yaml:ro") for v in h["volumes"])
        # Its own node key and no other's.
        assert [v.split(":")[0] for v in h["volumes"] if "/nodes/" in v] == [f"./certs/nodes/{name}"]
    # Keys that sign stay off every container: the CA key, and the app-signing key (the release manager's).
    mounted = [v.split(":")[0] for svc in compose.values() for v in svc.get("volumes", [])]
    assert not any(m.endswith("ca.key") or ("/signing/" in m and not m.endswith(".pub")) for m in mounted), mounted
    server = (REPO / "deploy" / "Dockerfile.server").read_text()
    client = (REPO / "deploy" / "Dockerfile.client").read_text()
    assert '"cxrsynth.server.superlink"' in server and "flower-superlink" not in server.split("ENTRYPOINT")[-1]
    entry = client.split("ENTRYPOINT")[-1]
    assert (
        "cxrsynth.client.supernode" in entry
        and "--trusted-entities /certs/trusted-entities.yaml" in entry
        and "flower-supernode" not in entry
    )
    # The SuperNode's Runtime API (node state: DP ledger, SecAgg+ keys) stays on the container's loopback.
    assert "--host" not in entry and "--isolation process" not in entry


def test_a_wheel_installs_one_package_with_its_data(tmp_path):
    """What `pip install .` and the Dockerfiles install: client/, server/ and privacy/ inside
    cxrsynth, no top-level package of those names, and the data files (presets, page templates,
    the default audit policy) beside their modules."""
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in ("cxrsynth", "client", "server", "privacy"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("cxrsynth-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"cxrsynth", wheel.name.split("-py")[0] + ".dist-info"}
    for expected in (
        "cxrsynth/client/app.py",
        "cxrsynth/server/app.py",
        "cxrsynth/privacy/deid/__init__.py",
        "cxrsynth/privacy/audit/default-policy.yaml",
        "cxrsynth/models/ldm/presets/tiny.yaml",
        "cxrsynth/pages/templates/base.html",
    ):
        assert expected in names, expected
