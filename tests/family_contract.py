"""The contract every registered model family meets, written once (used by test_families.py).

A family is checked through its `tiny` preset on a few phantom records: the shared interface
(cxrsynth/models/base.py), a checkpoint and a Flower state round trip, generation, membership
scores and DP-SGD with an empty Poisson batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cxrsynth.config import RunConfig, load_config
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import Record
from cxrsynth.models import build_model, registry
from cxrsynth.models.base import GenerativeModel
from cxrsynth.models.condition import Condition


def tiny_config(name: str, **overrides) -> RunConfig:
    family = registry.get(name)
    assert f"{name}-tiny" in family.preset_files(), (
        f"family {name} has no tiny preset (a tiny.yaml in its presets folder)"
    )
    base = {"train": {"batch_size": 4, "num_threads": 1}, "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return load_config(f"{name}-tiny", base)


def _records(cfg: RunConfig, n: int = 12) -> list[Record]:
    return make_phantom(n=n, sites=1, seed=0, image_size=cfg.model.image_size, lateral=True)


def _fresh(cfg: RunConfig, records: list[Record]) -> GenerativeModel:
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.setup(records)
    model.opts = model.make_optimizers()
    return model


def _same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def check_family(name: str, tmp_path: Path) -> None:
    from cxrsynth.checkpoint import load_checkpoint, save_checkpoint
    from cxrsynth.privacy.dp import privatize
    from cxrsynth.privacy.wire import from_arrays, read_round_config, round_config, to_arrays

    family = registry.get(name)
    cfg = tiny_config(name)
    assert type(cfg.model) is family.config and cfg.model.family == name
    records = _records(cfg)
    model = _fresh(cfg, records)
    assert isinstance(model, GenerativeModel) and model.family == name
    assert set(model.opts) <= set(model.nets)
    assert any(model.reads_real_data(n) for n in model.nets), (
        "DP-SGD needs at least one network marked as reading real data"
    )
    assert set(model.nets_stepping()) <= set(model.nets)

    losses = model.train_step(records[:4])
    assert losses and all(math.isfinite(float(v)) for v in losses.values())

    # What Flower ships: the weights as an ArrayRecord, the config and extra state as a ConfigRecord.
    state = model.state()
    assert state and all(isinstance(v, np.ndarray) for v in state.values())
    cfg_back, extra = read_round_config(round_config(cfg, model.extra_state()))
    assert cfg_back == cfg
    site = build_model(cfg_back.model)
    site.load_extra_state(extra)
    site.load_state(from_arrays(to_arrays(state)))
    _same_state(site.state(), state)

    ckpt = save_checkpoint(tmp_path / "ckpt", model, cfg)
    loaded, cfg_loaded, _ = load_checkpoint(ckpt)
    assert cfg_loaded == cfg
    _same_state(loaded.state(), state)

    loaded.eval()
    made = loaded.generate(3, None, seed=0)
    assert len(made) == 3 and all(isinstance(r, Record) for r in made)
    assert all(r.image is not None and r.image.dtype == np.uint8 and r.image.ndim == 2 for r in made)
    if not family.writes_reports(cfg.model):
        assert not any(r.report.strip() for r in made), "a family that writes no reports made report text"
    assert all((r.lateral is not None) == family.has_lateral(cfg.model) for r in made)
    labels = loaded.draw_labels(3, seed=0)
    if labels is not None:
        made = loaded.generate(3, [Condition(labels=x) for x in labels], seed=0)
        assert len(made) == 3 and all(isinstance(r, Record) for r in made)

    scores = np.asarray(loaded.member_scores(records[:5]))
    assert scores.shape == (5,) and np.isfinite(scores).all()

    # DP-SGD: the real-data networks are wrapped, and an empty Poisson batch is still a noisy step.
    dp_cfg = tiny_config(name, dp={"enabled": True})
    private = _fresh(dp_cfg, records)
    ledger = privatize(private, dp_cfg, sample_rate=4 / len(records))
    before = private.state()
    private.train()
    private.train_step([])
    after = private.state()
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    assert moved, "an empty Poisson batch took no noisy step"
    assert ledger()["steps"] == 1
    private.train_step(records[:4])
    assert ledger()["steps"] == 2
