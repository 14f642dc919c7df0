"""`cxrsynth train --dry-run`: any preset builds and steps; parameters, step time and memory are printed."""

from __future__ import annotations

import re

import pytest

from cxrsynth.cli import main
from cxrsynth.config import load_config
from cxrsynth.dryrun import GB, dry_run


def _dry(capsys, preset: str, *extra: str) -> str:
    assert main(["train", "--config", preset, "--dry-run", *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("family", ["emixer", "ldm", "mopoe"])
def test_dry_run_of_a_tiny_preset_prints_parameters_step_time_and_memory_and_writes_nothing(
    family, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    out = _dry(capsys, f"{family}-tiny")
    assert re.search(rf"{family}-tiny: [\d,]+ parameters \([\d,]+ trained\)", out)
    assert re.search(r"two steps at batch 2 on cpu: [\d.]+s, [\d.]+s", out)
    assert re.search(r"memory at the configured batch \d+: about [\d.]+ GB", out)
    assert not any(tmp_path.iterdir())  # no checkpoint, no runs/ folder


def test_the_memory_estimate_grows_with_the_configured_batch_by_the_activations_alone():
    cfg = load_config("mopoe-tiny")
    small = dry_run(cfg, batch=2)
    large = dry_run(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 4 * cfg.train.batch_size})}),
        batch=2,
    )
    assert small.activation_bytes > 0 and small.updated
    grown = large.estimate_bytes - small.estimate_bytes
    assert grown == pytest.approx(3 * small.activation_bytes * cfg.train.batch_size / 2, rel=0.05)
    # Adam keeps two tensors per trained parameter.
    assert small.optimizer_bytes == 2 * small.grads_bytes


def test_dp_adds_one_copy_of_the_real_data_parameters_per_sample():
    cfg = load_config("mopoe-tiny", {"dp": {"enabled": True}})
    run = dry_run(cfg, batch=2)
    assert run.dp_bytes == cfg.train.batch_size * run.grads_bytes  # every MoPoE network reads real data
    assert "DP per-sample gradients" in run.lines()[2]


def test_a_preset_too_large_for_free_memory_steps_without_the_update_and_counts_its_state():
    run = dry_run(load_config("mopoe-tiny"), batch=2, allow_update=False)
    assert not run.updated and run.optimizer_bytes == 2 * run.grads_bytes and "update skipped" in run.lines()[1]


def test_dry_run_refuses_an_empty_batch(capsys):
    assert main(["train", "--config", "mopoe-tiny", "--dry-run", "--dry-run-batch", "0"]) == 2


def test_dry_run_of_the_mopoe_paper_preset(capsys):
    """The smallest paper preset runs in the default suite (about 20 s here); all three in the slow one."""
    out = _dry(capsys, "mopoe-paper")
    assert "mopoe-paper: 7,712,635 parameters" in out and "configured batch 64" in out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["emixer", "ldm", "mopoe"])
def test_dry_run_of_every_paper_preset_on_this_cpu(family, capsys):
    """EMIXER's paper preset takes about 75 s here, the LDM's (1.1 billion parameters, its
    optimizer update skipped for memory) several minutes at batch 1."""
    out = _dry(capsys, f"{family}-paper", "--dry-run-batch", "1")
    assert f"{family}-paper:" in out and "memory at the configured batch" in out
    estimate = float(re.search(r"about ([\d.]+) GB", out).group(1))
    assert estimate * GB > 0
