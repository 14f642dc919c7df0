"""The sites' looks (cxrsynth.models.acquisition): what a site shares, its DP release, and
generation rendering each synthetic study in one site's look."""

import json
from pathlib import Path

import numpy as np
import pytest

from cxrsynth.config import DPConfig, load_config
from cxrsynth.data.dataset import read_dataset
from cxrsynth.errors import SiteRefused
from cxrsynth.models.acquisition import LEVELS, SiteLooks, grey_map, image_quantiles, mean_quantiles, site_look
from cxrsynth.privacy.dp import epsilon_of, gaussian_release


def _image(rng, gamma: float, size: int = 24) -> np.ndarray:
    base = rng.random((size, size)) ** gamma
    return np.clip(base * 255, 0, 255).astype(np.uint8)


def test_a_site_look_without_noise_is_the_mean_of_its_patients_means():
    rng = np.random.default_rng(0)
    images = [(f"p{i // 2}", _image(rng, 1.3)) for i in range(20)]  # 10 patients, 2 studies each
    center = LEVELS.copy()
    look, units = site_look(images, center, clip=10.0, noise_multiplier=0.0, rng=rng)
    per_patient = [np.mean([image_quantiles(im) for p, im in images if p == f"p{k}"], axis=0) for k in range(10)]
    assert units == 10
    assert np.allclose(look, np.mean(per_patient, axis=0))


def test_one_patient_moves_the_sum_by_at_most_the_clipping_bound():
    rng = np.random.default_rng(1)
    center = np.full(LEVELS.size, 0.5)
    ordinary = [(f"p{i}", _image(rng, 1.0)) for i in range(30)]
    outlier = ("x", np.full((24, 24), 255, np.uint8))  # all white: far from the centre
    clip = 0.2
    a, n_a = site_look(ordinary, center, clip, 0.0, rng)
    b, n_b = site_look([*ordinary, outlier], center, clip, 0.0, rng)
    moved = np.linalg.norm((b - center) * n_b - (a - center) * n_a)
    assert n_b == n_a + 1 and moved <= clip + 1e-9
    assert moved > 0.9 * clip  # the white patient is clipped, not dropped


def test_the_noise_of_a_look_is_the_gaussian_mechanisms():
    rng = np.random.default_rng(2)
    images = [(f"p{i}", _image(rng, 1.0)) for i in range(40)]
    center = mean_quantiles(im for _, im in images)  # every patient near it: no clipping bias
    exact, n = site_look(images, center, 0.5, 0.0, rng)
    draws = np.array([site_look(images, center, 0.5, 3.0, rng)[0] for _ in range(300)])
    # Around the middle levels the monotone, [0, 1] post-processing does not bind.
    mid = slice(3, 8)
    sd = (draws[:, mid] - exact[mid]).std()
    assert abs(sd / (3.0 * 0.5 / n) - 1) < 0.25
    assert (np.diff(draws, axis=1) >= 0).all() and draws.min() >= 0 and draws.max() <= 1


def test_the_grey_map_takes_the_source_quantiles_to_the_target():
    rng = np.random.default_rng(3)
    img = _image(rng, 1.0, size=64)
    source = image_quantiles(img)
    target = np.clip(source**1.6, 0, 1)  # a darker response curve
    out = grey_map(img, source, target)
    assert np.abs(image_quantiles(out) - target).max() < 0.02
    order = np.argsort(img, axis=None, kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()  # monotone: no grey level swaps order


def test_a_look_release_is_one_gaussian_step_in_the_ledger_and_refused_past_the_budget():
    dp = DPConfig(enabled=True, epsilon_budget=8.0)
    before = [(1.3, 0.2, 40)]
    after = gaussian_release(before, dp, 4.0)
    assert after == [(1.3, 0.2, 40), (4.0, 1.0, 1)]
    assert epsilon_of(after, dp) > epsilon_of(before, dp)
    with pytest.raises(SiteRefused, match="budget"):
        gaussian_release(before, dp, 0.3)


def test_looks_that_are_not_quantile_vectors_are_refused():
    with pytest.raises(ValueError):
        SiteLooks([1.0], [[0.1, 0.2]])
    with pytest.raises(ValueError):
        SiteLooks([0.0], [list(LEVELS)])


def test_a_federated_run_with_looks_spends_them_in_each_ledger_and_renders_samples_in_them(tmp_path):
    from cxrsynth.generate import generate
    from cxrsynth.server.simulate import simulate

    cfg = load_config(
        "mopoe-tiny",
        {
            "model": {"image_size": 16, "text_length": 16, "channels": 8},
            "data": {"phantom": {"n": 90, "sites": 3, "image_size": 16}},
            "train": {"batch_size": 4, "num_threads": 1},
            # A small noise multiplier, drawn from the seed, so the looks can be checked against the
            # sites' own images without a chance failure.
            "dp": {"enabled": True, "noise_multiplier": 1.0, "epsilon_budget": 200.0, "seeded_noise": True},
            "federation": {
                "sites": 3,
                "rounds": 1,
                "local_steps": 1,
                "min_sites": 3,
                "vocab_min_count": 2,
                "acquisition": True,
                "acquisition_noise": 0.2,
                "acquisition_clip": 1.0,
            },
        },
    )
    out = tmp_path / "run"
    simulate(cfg, out)
    state = json.loads((out / "train_state.json").read_text())
    looks = SiteLooks.from_dict(state["site_looks"])
    for site in state["privacy_ledger"]["sites"].values():
        assert site["history"][0] == [0.2, 1.0, 1]  # the look, then the DP-SGD round
        assert site["steps"] == 2
    # The steward's ledger check recomputes epsilon from those histories and names the looks.
    from cxrsynth.config import AuditPolicy
    from cxrsynth.privacy.audit.ledger import dp_ledger_check

    check = dp_ledger_check(state, AuditPolicy(require_dp=True, epsilon_budget=200))
    assert (
        check["passed"] and check["site_looks"]["sites"] == 3 and "Gaussian mechanism" in check["site_looks"]["note"]
    )

    # The phantom sites' looks differ (site 1 is brighter, site 2 darker): each shared look is
    # near the mean quantiles of one site's own training images.
    from cxrsynth.data.phantom import make_phantom

    records = make_phantom(n=90, sites=3, image_size=16, seed=cfg.data.phantom.seed)
    true = [
        mean_quantiles(r.image for r in records if r.site == s and r.split != "holdout")
        for s in sorted({r.site for r in records})
    ]
    for q in looks.quantiles:
        assert min(np.abs(q - t)[2:-2].max() for t in true) < 0.08
    medians = sorted(q[5] for q in looks.quantiles)
    assert medians[-1] - medians[0] > 0.1

    syn = generate(out, 30, tmp_path / "syn", seed=3)
    rows, _ = read_dataset(syn)
    picked = [int(r.provenance.split("look=")[1]) for r in rows]
    assert set(picked) <= {0, 1, 2} and len(set(picked)) > 1
    for k in set(picked):
        got = mean_quantiles(r.image for r, p in zip(rows, picked) if p == k)
        others = [j for j in range(3) if j != k]
        # Rendered in its own look: nearer to it than to the other sites' looks.
        assert np.abs(got - looks.quantiles[k]).mean() < min(np.abs(got - looks.quantiles[j]).mean() for j in others)


def test_generation_names_a_damaged_looks_entry(tmp_path):
    from cxrsynth.errors import InputError
    from cxrsynth.generate import site_looks

    with pytest.raises(InputError, match="site_looks"):
        site_looks({"site_looks": {"weights": [1.0], "quantiles": [[0.5]]}}, Path(tmp_path))


@pytest.mark.parametrize("family", ["mopoe", "ldm", "emixer"])
def test_measuring_a_models_own_look_leaves_the_model_as_it_was(family):
    # The centre is measured on the base before round 1, and every site checks the base's hash.
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.models import build_model, model_class
    from cxrsynth.models.acquisition import model_reference
    from cxrsynth.pretrained import state_sha256

    cfg = load_config(f"{family}-tiny", {"model": {"image_size": 32}})
    model = build_model(cfg.model)
    model.setup(make_phantom(n=12, sites=1, seed=2, image_size=32))
    model.train()
    keys = model_class(cfg.model).label_mix_keys
    before = state_sha256(model.state(), model.extra_state(), keys)
    reference = model_reference(model, n=4, seed=1)
    assert reference.shape == LEVELS.shape and (np.diff(reference) >= 0).all()
    assert state_sha256(model.state(), model.extra_state(), keys) == before and model.training
