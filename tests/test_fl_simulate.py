"""`cxrsynth fl simulate` end to end with Flower's simulation engine (Ray) on phantom sites.

Each test is one real simulation: 3 sites on this machine, a tiny model, a few rounds.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from sim_apps import SIM_APPS

from cxrsynth.config import load_config
from cxrsynth.errors import CheckFailed
from cxrsynth.server.simulate import simulate

SMALL = {
    "model": {"image_size": 16, "text_length": 16, "channels": 8},
    "data": {"phantom": {"n": 60, "sites": 3, "image_size": 16}},
    "train": {"batch_size": 4, "num_threads": 1},
}


def _cfg(**sections):
    over = json.loads(json.dumps(SMALL))
    for k, v in sections.items():
        over.setdefault(k, {}).update(v)
    return load_config("mopoe-tiny", over)


def _state(out: Path) -> dict:
    return json.loads((out / "fl_state.json").read_text())


@pytest.mark.long
def test_dp_run_ships_only_allowed_records_ledger_grows_and_stops_at_budget(tmp_path):
    cfg = _cfg(
        # Patient-level accounting (the default): the smallest site spends 12.5 in 3 rounds, 14.4 in 4.
        dp={"enabled": True, "noise_multiplier": 0.8, "epsilon_budget": 13.0},
        federation={"sites": 3, "rounds": 5, "local_steps": 2, "min_sites": 2, "vocab_min_count": 2},
    )
    log = tmp_path / "egress.jsonl"
    out = tmp_path / "run"
    with pytest.raises(CheckFailed) as err:
        simulate(cfg, out, client_app=(SIM_APPS, "egress_logged"), run_config={"test-egress-log": str(log)})
    assert "refuses to train" in str(err.value) and "min_sites=2" in str(err.value)
    state = _state(out)
    done = state["round"]
    assert 2 <= done < 5
    book = state["privacy_ledger"]
    assert len(book["sites"]) == 3
    for site in book["sites"].values():
        eps = [r["epsilon"] for r in site["rounds"]]
        assert eps == sorted(eps) and len(set(eps)) == len(eps)  # grows every round
        assert (
            eps[-1] <= 13.0
            and site["privacy_unit"] == "patient"
            and site["steps"] == sum(h[2] for h in site["history"])
        )
    # Everything that left a site: model arrays and counts/scalars/ledger numbers, nothing else.
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["type"] for e in sent} == {"query.vocab", "train"}
    for e in sent:
        if "error" in e:
            assert "refuses to train" in e["error"]
            continue
        for name, rec in e["records"].items():
            if rec["kind"] == "ArrayRecord":
                assert e["type"] == "train" and name == "arrays"
            elif rec["kind"] == "MetricRecord":
                assert all(isinstance(v, (int, float)) for v in rec["items"].values())
            else:
                assert rec["kind"] == "ConfigRecord" and name == "ledger"
                assert all(
                    isinstance(v, (int, float, list)) or k in ("accountant", "privacy-unit")
                    for k, v in rec["items"].items()
                )
    assert sum(1 for e in sent if e["type"] == "train" and "error" not in e) >= 3 * done
    report = (out / "report.html").read_text()
    assert "The run stopped" in report and "epsilon spent by each site" in report
    # The last complete round is a checkpoint `cxrsynth generate` takes.
    from cxrsynth.generate import generate

    syn = generate(out, 3, tmp_path / "syn", seed=1)
    assert (Path(syn) / "manifest.csv").read_text().count("\n") == 4


@pytest.mark.long
def test_killed_server_resumes_and_a_crashing_site_does_not_stop_the_others(tmp_path):
    # FedAdam under Flower's server-side clipping (client-level DP). The first run is killed
    # after round 1; the resumed run finishes rounds 2 and 3 while site 2 crashes in round 2
    # and site 1 reports a NaN sample count in round 3.
    out = tmp_path / "run"
    cfg_path = tmp_path / "fl.yaml"
    fed = {
        "sites": 3,
        "rounds": 3,
        "local_steps": 10,
        "min_sites": 2,
        "strategy": "fedadam",
        "vocab_min_count": 2,
        "client_dp": "fixed",
        "client_dp_noise": 0.01,
        "client_dp_clip": 5.0,
    }
    cfg_path.write_text(yaml.safe_dump({"preset": "mopoe-tiny", **SMALL, "federation": fed}))
    cmd = [
        sys.executable,
        "-m",
        "cxrsynth.cli",
        "--quiet",
        "fl",
        "simulate",
        "--config",
        str(cfg_path),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out / "rounds" / "round-001" / "fl_state.json").is_file():
            assert proc.poll() is None, "the run ended before round 1 was checkpointed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _state(out / "rounds" / "round-001")["round"]
    assert killed_at == 1 and not (out / "rounds" / "round-003").exists()
    with pytest.raises(Exception, match="--resume"):
        simulate(load_config(cfg_path), out)  # a second run into the same directory is refused
    # Site 2 crashes in round 2, site 1 reports a NaN sample count in round 3 (tests/sim_apps.py).
    simulate(load_config(cfg_path), out, resume=True, client_app=(SIM_APPS, "faulty"))
    state = _state(out)
    assert [h["round"] for h in state["history"]] == [1, 2, 3]  # as many rounds as an uninterrupted run, none twice
    assert [h["accepted"] for h in state["history"]] == [3, 2, 2]
    assert any(r["round"] == 2 and "the site failed" in r["reason"] for r in state["rejections"])
    assert any(r["round"] == 3 and "num-examples nan" in r["reason"] for r in state["rejections"])
    from safetensors.numpy import load_file

    assert all(
        np.all(np.isfinite(v)) for v in load_file(str(out / "model.safetensors")).values()
    )  # the checkpoint is not poisoned
    assert (out / "rounds" / "round-003" / "strategy.safetensors").is_file()  # FedAdam moments kept for a later resume
