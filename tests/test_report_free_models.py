"""Report-free training: EMIXER's image GAN (`reports: none`) and MoPoE with the labels as a
modality (`modalities: [frontal, labels]`); the paper settings refuse report-free data by name."""

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from cxrsynth.checkpoint import load_checkpoint, save_checkpoint
from cxrsynth.config import config_from_dict, load_config
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import LABELS
from cxrsynth.errors import ConfigError, InputError
from cxrsynth.models import build_model
from cxrsynth.privacy.dp import privatize
from cxrsynth.train import train_steps

EMIXER_TINY = dict(
    image_size=16,
    up_blocks=2,
    z_chunk=4,
    z_dim=16,
    class_embed_dim=8,
    g_width=8,
    attn_resolution=16,
    d_width=8,
    d_steps=2,
)
MOPOE_TINY = dict(image_size=16, latent_dim=8, channels=8, label_hidden=16, lr=2e-3)


@pytest.fixture(scope="module")
def bare():
    """Phantom studies as a report-free site has them: frontal images and labels, no text."""
    recs = make_phantom(40, sites=1, seed=3, image_size=16, lateral=False)
    return [r.with_(findings="", impression="") for r in recs]


def _run(family: str, model: dict, dp: bool = False):
    data = {"family": family, **model}
    return config_from_dict(
        {"model": data, "train": {"batch_size": 8}, "dp": {"enabled": dp, "noise_multiplier": 1.0}}
    )


def _built(cfg, records):
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.setup(records)
    model.opts = model.make_optimizers()
    return model


def test_paper_settings_refuse_report_free_data_and_name_the_setting(bare, caplog):
    with pytest.raises(
        InputError, match=r"none of the 40 training records has findings or impression text.*model.reports: none"
    ):
        _built(_run("emixer", EMIXER_TINY), bare)
    with pytest.raises(
        InputError, match=r"modalities \['frontal', 'lateral', 'report'\].*model.modalities: \[frontal, labels\]"
    ):
        _built(_run("mopoe", MOPOE_TINY), bare)
    with pytest.raises(InputError, match="no site shared a report word"):
        build_model(_run("emixer", EMIXER_TINY).model).setup_from_counts({}, 40)
    _built(_run("mopoe", {**MOPOE_TINY, "modalities": ["frontal", "lateral", "labels"]}), bare)
    assert "none of the 40 training records has a lateral image" in caplog.text
    with pytest.raises(ConfigError, match="lack 'frontal'"):
        _run("mopoe", {**MOPOE_TINY, "modalities": ["labels"]})


def test_emixer_without_reports_trains_an_image_gan_and_writes_no_text(bare, tmp_path):
    cfg = _run("emixer", {**EMIXER_TINY, "reports": "none"})
    model = _built(cfg, bare)
    assert set(model.nets) == {"generator", "d_image"} and model.real_nets == ("d_image",)
    assert model.vocabulary_text(cfg.model, bare[0].with_(findings="Large effusion.")) == ""
    before = {k: v.clone() for k, v in model.nets["d_image"].state_dict().items()}
    g_before = {k: v.clone() for k, v in model.nets["generator"].state_dict().items()}
    losses = train_steps(model, bare, steps=4, batch_size=8).losses
    assert set(losses) == {"d_image", "d_rotation", "g_image", "g_rotation"}
    assert any(not torch.equal(before[k], v) for k, v in model.nets["d_image"].state_dict().items())
    assert any(not torch.equal(g_before[k], v) for k, v in model.nets["generator"].state_dict().items())
    wanted = [r.labels for r in bare[:5]]
    out = model.generate(5, wanted, seed=2)
    assert [r.labels for r in out] == wanted and not any(r.report for r in out)
    assert out[0].image.shape == (16, 16) and model.member_scores(bare[:3]).shape == (3,)
    save_checkpoint(tmp_path, model, cfg, {"step": 4})
    back, cfg2, _ = load_checkpoint(tmp_path)
    assert cfg2.model.reports == "none" and back.vocab is None
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, back.generate(5, wanted, seed=2)))


def test_mopoe_with_labels_as_a_modality_trains_and_generates_images_with_labels(bare, tmp_path):
    cfg = _run("mopoe", {**MOPOE_TINY, "modalities": ["labels", "frontal"]})
    assert cfg.model.modalities == ("frontal", "labels")  # listed in the experts' order
    model = _built(cfg, bare)
    assert set(model.nets) == {"enc_frontal", "dec_frontal", "enc_labels", "dec_labels"} and model.vocab is None
    first = train_steps(model, bare, steps=1, batch_size=16).losses
    assert set(first) == {"nll_frontal", "nll_labels", "kl", "loss"} and first["nll_labels"] > 0
    later = train_steps(model, bare, steps=60, batch_size=16, start_step=1).history[-10:]
    assert np.mean([h["nll_labels"] for h in later]) < first["nll_labels"]
    wanted = [r.labels for r in bare[:4]]
    out = model.generate(4, wanted, seed=1)
    assert [r.labels for r in out] == wanted  # a record made from a label set carries that set
    assert all(r.lateral is None and not r.report for r in out)
    free = model.generate(6, seed=1)
    assert all(set(r.labels) == set(LABELS) and r.has_labels() for r in free)  # decoded from the latent
    assert model.probe_subsets() == ["F"] and model.member_scores(bare[:3]).shape == (3,)
    save_checkpoint(tmp_path, model, cfg, {"step": 61})
    back, _, _ = load_checkpoint(tmp_path)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, back.generate(4, wanted, seed=1)))


@pytest.mark.parametrize(
    "family, model",
    [("emixer", {**EMIXER_TINY, "reports": "none"}), ("mopoe", {**MOPOE_TINY, "modalities": ["frontal", "labels"]})],
)
def test_report_free_families_train_under_dp_sgd(bare, family, model):
    cfg = _run(family, model, dp=True)
    m = _built(cfg, bare)
    ledger = privatize(m, cfg, 8 / len(bare))
    real = [n for n in m.nets if m.reads_real_data(n)]
    assert real and all(isinstance(m.nets[n], GradSampleModule) for n in real)
    train_steps(m, bare, steps=2, batch_size=8, sampling="poisson-patient")
    assert ledger()["steps"] == 2 and ledger()["epsilon"] > 0


def test_presets_take_the_report_free_settings():
    assert load_config("emixer-tiny", {"model": {"reports": "none"}}).model.reports == "none"
    assert load_config("mopoe-tiny", {"model": {"modalities": ["frontal", "labels"]}}).model.modalities == (
        "frontal",
        "labels",
    )
