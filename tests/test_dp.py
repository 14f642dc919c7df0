"""privacy/dp.py with real Opacus on a real model family (MoPoE tiny)."""

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from cxrsynth.config import load_config
from cxrsynth.errors import CheckFailed, InputError
from cxrsynth.models import build_model
from cxrsynth.privacy.dp import (
    check_budget,
    effective_noise,
    epsilon_of,
    privatize,
    read_ledger_file,
    write_ledger_file,
)
from cxrsynth.train import load_run_data, train_steps


def test_releases_on_one_batch_are_accounted_as_one_joint_release():
    # k Gaussian releases of one sample are one Gaussian release with noise sigma / sqrt(k) ...
    assert effective_noise([2.0, 2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert effective_noise([1.0, 3.0]) == pytest.approx((1 + 1 / 9) ** -0.5)
    assert effective_noise([1.0, 0.0]) == 0.0
    # ... which costs more than k independently subsampled releases would: counting them
    # separately would understate epsilon.
    dp = _cfg().dp
    joint = epsilon_of([(1.0, 0.05, 200)], dp)
    separate = epsilon_of([(2.0, 0.05, 800)], dp)
    assert joint > 1.5 * separate


def _cfg(**dp):
    return load_config(
        "mopoe-tiny",
        {
            "model": {"image_size": 16, "text_length": 16, "channels": 8},
            "data": {"phantom": {"n": 40, "sites": 1, "image_size": 16}},
            "train": {"batch_size": 8, "num_threads": 1},
            "dp": {"enabled": True, "noise_multiplier": 1.0, **dp},
        },
    )


def _model(cfg):
    torch.manual_seed(0)
    records = [r for r in load_run_data(cfg) if r.split != "holdout"]
    model = build_model(cfg.model)
    model.setup(records)
    model.opts = model.make_optimizers()
    return model, records


def test_privatize_wraps_real_data_nets_and_ledger_accumulates_across_rounds():
    cfg = _cfg()
    model, records = _model(cfg)
    rate = cfg.train.batch_size / len(records)
    ledger = privatize(model, cfg, rate)
    real = [n for n in model.nets if model.reads_real_data(n)]
    assert real and all(isinstance(model.nets[n], GradSampleModule) for n in real)
    assert all(isinstance(model.opts[n], DPOptimizer) for n in real)
    train_steps(model, records, steps=2, batch_size=cfg.train.batch_size, sampling="poisson")
    first = ledger()
    # One accounted step per sampled batch, at the configured noise for the batch as a whole:
    # each of the k networks stepping on it adds noise sigma * sqrt(k).
    assert first["steps"] == 2 and first["history"] == [(cfg.dp.noise_multiplier, rate, 2)]
    assert all(
        model.opts[n].noise_multiplier == pytest.approx(cfg.dp.noise_multiplier * len(real) ** 0.5) for n in real
    )
    with pytest.raises(InputError, match="already applied"):
        privatize(model, cfg, rate)
    assert 0 < first["epsilon"] and first["delta"] == cfg.dp.delta
    # Round 2 at the same site starts from the round-1 history (a fresh model, as in federation).
    model2, _ = _model(cfg)
    ledger2 = privatize(model2, cfg, rate, history=first["history"])
    train_steps(model2, records, steps=2, batch_size=cfg.train.batch_size, sampling="poisson")
    second = ledger2()
    assert second["steps"] == 2 * first["steps"]
    assert second["epsilon"] > first["epsilon"]
    assert second["epsilon"] == pytest.approx(epsilon_of(second["history"], cfg.dp))
    # The weights read back through the wrappers, with the plain names.
    assert set(model2.state()) == set(build_model(cfg.model).state()) | {k for k in model2.state() if "report" in k}


def test_budget_refuses_a_round_up_front_with_reasons():
    cfg = _cfg(epsilon_budget=5.0)
    with pytest.raises(CheckFailed, match="site x refuses to train: its privacy budget is epsilon 5"):
        check_budget([], cfg.dp, 0.2, 500, site="site x")
    assert 0 < check_budget([], cfg.dp, 0.2, 1, site="site x") < 5.0
    # What was spent before counts: the same single step is refused after a long history.
    with pytest.raises(CheckFailed, match="it has spent"):
        check_budget([(1.0, 0.2, 400)], cfg.dp, 0.2, 1, site="site x")


def test_dp_optimizer_stops_at_the_budget_without_applying_the_step():
    cfg = _cfg(epsilon_budget=8.0)
    model, records = _model(cfg)
    rate = cfg.train.batch_size / len(records)
    ledger = privatize(model, cfg, rate)
    before = None
    with pytest.raises(CheckFailed, match="privacy budget reached"):
        for _ in range(200):
            before = {k: v.copy() for k, v in model.state().items()}
            train_steps(model, records, steps=1, batch_size=cfg.train.batch_size, sampling="poisson")
    spent = ledger()
    assert spent["epsilon"] <= 8.0
    assert spent["steps"] > 0
    # The refused step was never applied: the network stepped last in a train step kept the
    # weights it had before the refused call (the client then discards the whole round).
    last_real = [n for n in model.opts if model.reads_real_data(n)][-1]
    after = model.state()
    assert all((after[k] == before[k]).all() for k in after if k.startswith(last_real + "."))


def test_batchnorm_is_refused_with_a_teaching_message():
    cfg = _cfg()
    model, _ = _model(cfg)
    name = next(iter(model.nets))
    model.nets[name] = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    model.opts[name] = torch.optim.SGD(model.nets[name].parameters(), lr=0.1)
    with pytest.raises(InputError, match="GroupNorm"):
        privatize(model, cfg, 0.1)


def test_ledger_file_roundtrip_and_corruption(tmp_path):
    path = tmp_path / "site.dp-ledger.json"
    write_ledger_file(path, {"history": [[1.0, 0.1, 30]], "epsilon": 1.2})
    assert read_ledger_file(path) == [(1.0, 0.1, 30)]
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="privacy ledger is unreadable"):
        read_ledger_file(path)


def test_cxrsynth_train_resume_keeps_counting_epsilon(tmp_path):
    import json

    from cxrsynth.progress import Progress
    from cxrsynth.train import train

    cfg = _cfg()
    first = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 2})})
    train(first, tmp_path, privatize=privatize, progress=Progress(quiet=True))
    before = json.loads((tmp_path / "train_state.json").read_text())["privacy_ledger"]
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 4})})
    train(more, tmp_path, resume=True, privatize=privatize, progress=Progress(quiet=True))
    after = json.loads((tmp_path / "train_state.json").read_text())["privacy_ledger"]
    assert after["steps"] == 2 * before["steps"] and after["epsilon"] > before["epsilon"]


def test_cxrsynth_train_keeps_the_site_ledger_beside_the_dataset_across_outs(tmp_path):
    """Issue 15: each new --out started again at epsilon 0; the ledger beside the data now carries on."""
    import json

    from cxrsynth.data.dataset import write_dataset
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.progress import Progress
    from cxrsynth.train import site_ledger_path, train

    data = tmp_path / "site-a"
    write_dataset(data, make_phantom(n=30, sites=1, seed=2, image_size=16))
    base = _cfg()
    cfg = base.model_copy(
        update={
            "data": base.data.model_copy(update={"path": data}),
            "train": base.train.model_copy(update={"steps": 2}),
        }
    )
    train(cfg, tmp_path / "run1", privatize=privatize, progress=Progress(quiet=True))
    ledger = site_ledger_path(data)
    first = json.loads(ledger.read_text())
    assert ledger == tmp_path / "site-a.dp-ledger.json" and first["steps"] == 2
    train(cfg, tmp_path / "run2", privatize=privatize, progress=Progress(quiet=True))
    second = json.loads((tmp_path / "run2" / "train_state.json").read_text())["privacy_ledger"]
    assert second["steps"] == 4 and second["epsilon"] > first["epsilon"]
    assert json.loads(ledger.read_text())["steps"] == 4
    # The budget counts what every run on this data spent.
    capped = cfg.model_copy(update={"dp": cfg.dp.model_copy(update={"epsilon_budget": second["epsilon"] * 1.0001})})
    with pytest.raises(CheckFailed, match="budget"):
        train(capped, tmp_path / "run3", privatize=privatize, progress=Progress(quiet=True))
    # An unreadable ledger stops training rather than starting again from zero.
    ledger.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        train(cfg, tmp_path / "run4", privatize=privatize, progress=Progress(quiet=True))


def test_patient_level_dp_samples_patients_one_study_each_and_accounts_per_patient():
    """Issue 15: DP was per study; a patient with four studies was four chances to be seen."""
    from collections import Counter

    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.train import BatchSampler, dp_sampling

    records = make_phantom(n=60, sites=1, seed=0, image_size=16)
    patients = Counter(r.patient_id for r in records)
    assert max(patients.values()) > 1  # the phantom data has patients with several studies
    mode, rate, units = dp_sampling(records, 8, "patient")
    assert (mode, units) == ("poisson-patient", len(patients)) and rate == pytest.approx(8 / len(patients))
    assert dp_sampling(records, 8, "study") == ("poisson", pytest.approx(8 / 60), 60)
    sampler = BatchSampler(records, 8, seed=1, mode=mode)
    seen: Counter = Counter()
    steps = 3000
    for _ in range(steps):
        batch = [r.patient_id for r in next(sampler)]
        assert len(batch) == len(set(batch))  # one row per patient: per-sample clipping is per-patient clipping
        seen.update(batch)
    # Every patient, whatever their number of studies, joins a batch at the patients' sample rate.
    for p, n_studies in patients.items():
        assert seen[p] / steps == pytest.approx(rate, abs=0.04), (p, n_studies)
    # The same steps protect a patient at a larger epsilon than a study: the unit is stated, not assumed.
    dp = _cfg().dp
    assert dp.privacy_unit == "patient"
    assert epsilon_of([(1.0, rate, 200)], dp) > epsilon_of([(1.0, 8 / 60, 200)], dp)


def test_the_ledger_names_its_privacy_unit():
    cfg = _cfg()
    ledger = privatize(_model(cfg)[0], cfg, 0.1)
    assert ledger()["privacy_unit"] == "patient"
    study = _cfg(privacy_unit="study")
    assert privatize(_model(study)[0], study, 0.1)()["privacy_unit"] == "study"


def test_functorch_per_sample_gradients_give_the_clipped_gradient_opacus_hooks_give():
    """dp.grad_sample only changes how per-sample gradients are computed, not what they are."""
    grads = []
    for mode in ("hooks", "functorch"):
        cfg = _cfg(noise_multiplier=0.0, grad_sample=mode)
        model, records = _model(cfg)
        privatize(model, cfg, cfg.train.batch_size / len(records))
        assert model.nets["enc_frontal"].force_functorch == (mode == "functorch")
        torch.manual_seed(5)
        train_steps(model, records, steps=1, batch_size=cfg.train.batch_size, sampling="poisson")
        # Without noise, the gradient the DP optimizer stepped with is the clipped mean.
        grads.append(
            {
                f"{n}.{k}": p.grad.clone()
                for n in model.nets
                for k, p in model.nets[n].named_parameters()
                if p.grad is not None
            }
        )
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6), k


def test_hooks_per_sample_gradients_of_channels_last_convolution_inputs_add_up_to_the_batch_gradient():
    """torch's CPU kernels hand some of the LDM VAE's convolutions channels-last inputs; Opacus 1.6's
    convolution grad sampler returned wrong per-sample gradients for them (privacy/dp.py gives it
    contiguous tensors)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    x = torch.randn(5, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    (conv(x).pow(2).sum((1, 2, 3))).mean().backward()
    batch = conv.weight.grad.clone()
    net = GradSampleModule(conv)
    conv.weight.grad = None
    (net(x).pow(2).sum((1, 2, 3))).mean().backward()
    # A mean loss: Opacus' per-sample gradients are the records' own, the batch gradient their mean.
    torch.testing.assert_close(conv.weight.grad_sample.mean(0), batch, rtol=1e-4, atol=1e-6)


def _one_dp_step(cfg) -> dict:
    model, records = _model(cfg)
    privatize(model, cfg, cfg.train.batch_size / len(records))
    torch.manual_seed(5)
    train_steps(model, records, steps=1, batch_size=cfg.train.batch_size, sampling="poisson", seed=5)
    return model.state()


def test_dp_noise_comes_from_the_systems_entropy_unless_the_run_asks_for_seeded_noise():
    # The coordinator knows the run's seed: noise drawn from it could be drawn again and taken off.
    a, b = _one_dp_step(_cfg()), _one_dp_step(_cfg())
    assert any(not (a[k] == b[k]).all() for k in a)
    s1, s2 = _one_dp_step(_cfg(seeded_noise=True)), _one_dp_step(_cfg(seeded_noise=True))
    assert all((s1[k] == s2[k]).all() for k in s1)
