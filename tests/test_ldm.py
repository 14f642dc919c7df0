"""Latent diffusion family: tiny real diffusers/transformers parts, seeded, each test well under seconds."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from cxrsynth.checkpoint import load_checkpoint, save_checkpoint
from cxrsynth.config import load_config
from cxrsynth.data.phantom import make_phantom
from cxrsynth.errors import ConfigError, InputError
from cxrsynth.models.ldm import tokenizer as T
from cxrsynth.models.ldm.components import noise_scheduler, sampling_scheduler
from cxrsynth.models.ldm.config import LDMConfig
from cxrsynth.models.ldm.model import Model
from cxrsynth.models.ldm.prompts import prompt_from_labels
from cxrsynth.progress import Progress

TINY = dict(
    image_size=16,
    vae_channels=(8, 8),
    unet_channels=(8, 16),
    norm_num_groups=4,
    attention_head_dim=4,
    text_hidden=16,
    text_layers=1,
    text_heads=2,
    text_intermediate=32,
    tokenizer_min_count=1,
    tokenizer_vocab_size=256,
    prompt_section="report",
    vae_steps=1,
    lr=1e-3,
    ema_decay=0.9,
    sample_steps=4,
    sampler="ddim",
    member_timesteps=(100, 500),
)


def tiny_config(**over) -> LDMConfig:
    return LDMConfig(**{**TINY, **over})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny networks: a second thread costs more in synchronisation than it gains, badly so on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def records():
    return make_phantom(24, sites=2, seed=0, image_size=16, lateral=False)


def tiny_model(records, **over) -> Model:
    torch.manual_seed(0)
    m = Model(tiny_config(**over))
    m.setup(records)
    m.opts = m.make_optimizers()
    return m


def tiny_run(records):
    """(run config, model) of the ldm-tiny preset with the tiny networks, set up and ready to train."""
    cfg = load_config("ldm-tiny", {"model": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}})
    torch.manual_seed(0)
    m = Model(cfg.model)
    m.setup(records)
    m.opts = m.make_optimizers()
    return cfg, m


def flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def test_vae_stage_then_diffusion_stage_train_their_own_nets(records):
    m = tiny_model(records)
    before = {n: flat(m.part(n)) for n in ("vae", "unet", "text_encoder")}
    pos_before = m.part("text_encoder").embeddings.position_embedding.weight.clone()
    vae_losses = m.train_step(records[:4])
    assert set(vae_losses) == {"vae_rec", "vae_kl"} and all(np.isfinite(list(vae_losses.values())))
    assert not torch.equal(before["vae"], flat(m.part("vae")))
    assert torch.equal(before["unet"], flat(m.part("unet")))
    vae_after = flat(m.part("vae"))
    losses = m.train_step(records[:4])
    assert set(losses) == {"loss"} and np.isfinite(losses["loss"])
    assert torch.equal(vae_after, flat(m.part("vae")))
    assert not torch.equal(before["unet"], flat(m.part("unet")))
    assert not torch.equal(before["text_encoder"], flat(m.part("text_encoder")))
    # Position embeddings stay frozen (Opacus cannot clip their per-sample gradients).
    assert torch.equal(pos_before, m.part("text_encoder").embeddings.position_embedding.weight)


def test_frozen_parts_are_not_nets_but_travel_in_state(records):
    m = tiny_model(records, vae_training="frozen", text_training="frozen")
    assert list(m.nets) == ["unet"] and list(m.opts) == ["unet"]
    assert m.reads_real_data("unet") and not m.reads_real_data("vae")
    state = m.state()
    assert any(k.startswith("frozen.vae.") for k in state) and any(k.startswith("ema_unet.") for k in state)
    m.train_step(records[:4])
    m2 = tiny_model(records, vae_training="frozen", text_training="frozen")
    m2.load_state(m.state())
    for a, b in zip(m.state().values(), m2.state().values()):
        np.testing.assert_array_equal(a, b)


def test_ema_follows_unet_slowly(records):
    m = tiny_model(records, vae_steps=0)
    start = flat(m.ema_unet)
    for _ in range(3):
        m.train_step(records[:4])
    ema, live = flat(m.ema_unet), flat(m.part("unet"))
    assert not torch.equal(ema, start)
    assert 0 < (ema - start).norm() < (live - start).norm()
    assert m.sampling_unet() is m.ema_unet


def test_fine_tuning_from_a_base_starts_at_its_average_and_the_average_follows_it(records):
    # A base at the end of its pretraining: many steps, the average at its full decay.
    m = tiny_model(records, vae_steps=0, ema_decay=0.995)
    for _ in range(3):
        m.train_step(records[:4])
    m.steps_done[1] = 6000
    base_average = flat(m.ema_unet).clone()
    assert not torch.equal(flat(m.part("unet")), base_average)
    m.start_fine_tuning()
    assert torch.equal(flat(m.part("unet")), base_average) and int(m.steps_done[1]) == 0
    m.opts = m.make_optimizers()
    for _ in range(2):
        m.train_step(records[4:8])
    ema, live = flat(m.ema_unet), flat(m.part("unet"))
    # Warm-up counted from the fine-tuning's first step: the sampled weights are mostly the
    # fine-tuned ones, not the base's (at decay 0.995 they would have moved 1% of the way).
    assert (ema - live).norm() < 0.5 * (ema - base_average).norm()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "pndm"])
def test_scheduler_round_trip_with_exact_model_output(prediction, sampler):
    """Noising with the training scheduler and denoising with the sampler, given the exact
    target the model is trained to output, lands back on the clean latents."""
    cfg = tiny_config(prediction=prediction)
    train_sched, sched = noise_scheduler(cfg), sampling_scheduler(cfg, sampler)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, generator=gen)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    sched.set_timesteps(20)
    t0 = sched.timesteps[0]
    x = train_sched.add_noise(x0, noise, t0.expand(2))
    alphas = train_sched.alphas_cumprod
    for t in sched.timesteps:
        a = alphas[t]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        target = eps if prediction == "epsilon" else train_sched.get_velocity(x0, eps, t.expand(2))
        x = sched.step(target, t, x).prev_sample
    # The last step ends at alphas_cumprod[0], not 1 (set_alpha_to_one=False, as Stable Diffusion).
    expected = train_sched.add_noise(x0, noise, torch.zeros(2, dtype=torch.long))
    tol = 1e-3 if sampler == "ddim" else 5e-2  # PLMS mixes earlier steps' outputs
    assert (x - expected).abs().max() < tol


def test_sampling_is_seeded_and_guidance_uses_both_branches(records):
    m = tiny_model(records, vae_steps=0)
    m.train_step(records[:8])
    m.eval()
    prompts = [prompt_from_labels({"Cardiomegaly": 1}), prompt_from_labels({"Cardiomegaly": 0})]
    a = m.sample(prompts, seed=3, guidance=4.0)
    assert np.array_equal(a[0], m.sample(prompts, seed=3, guidance=4.0)[0])
    assert not np.array_equal(a[0], m.sample(prompts, seed=4, guidance=4.0)[0])
    plain = m.sample(prompts, seed=3, guidance=1.0)
    assert not np.array_equal(a[0], plain[0])
    assert a[0].dtype == np.uint8 and a[0].shape == (16, 16)


def test_prompt_dropout_trains_the_empty_prompt(records):
    """With every prompt dropped, only the special tokens' embeddings receive gradient."""
    words = T.encode(tiny_model(records).tokenizer, [records[0].report], 77, "cpu")[0][0]
    word_ids = [int(i) for i in words if int(i) > 3]
    for dropout, expect_word_grad in ((0.0, True), (0.999, False)):
        m = tiny_model(records, vae_steps=0, prompt_dropout=dropout)
        torch.manual_seed(1)
        m.train_step(records[:1])
        grad = m.part("text_encoder").get_input_embeddings().weight.grad
        assert bool(grad[word_ids].abs().sum() > 0) is expect_word_grad


def test_long_prompts_truncated_or_filtered(records):
    long = records[0].with_(findings="The heart is enlarged. " * 40)
    short = records[1].with_(findings="Heart size is normal.", impression="")
    m = tiny_model(records, vae_steps=0, long_prompts="filter", max_tokens=40)
    losses = m.train_step([long, short])
    assert losses["filtered_prompts"] == 1 and np.isfinite(losses["loss"])
    assert m.train_step([long]) == {"filtered_prompts": 1.0}
    m = tiny_model(records, vae_steps=0, long_prompts="truncate", max_tokens=40)
    assert set(m.train_step([long])) == {"loss"}


def test_tokenizer_keeps_rare_words_out_and_round_trips(records):
    texts = [r.report for r in records] + ["Seen once by Dr Zyxwvut."]
    tok = T.train_tokenizer(texts, "wordlevel", min_count=2, vocab_size=500)
    assert "zyxwvut" not in tok.get_vocab() and "heart" in tok.get_vocab()
    saved = T.to_json(tok)
    again = T.from_json(saved)
    a = T.encode(tok, ["The heart is enlarged, Zyxwvut."], 12, "cpu")[0]
    # Encoding sets padding and truncation on the tokenizer; what is saved stays the same.
    assert T.to_json(tok) == saved
    assert torch.equal(a, T.encode(again, ["The heart is enlarged, Zyxwvut."], 12, "cpu")[0])
    assert int(a[0, 0]) == tok.convert_tokens_to_ids(T.BOS) and tok.convert_tokens_to_ids(T.UNK) in a[0].tolist()
    bpe = T.train_tokenizer(texts, "bpe", min_count=2, vocab_size=120)
    assert len(bpe.get_vocab()) <= 120


def test_fixed_tokenizer_is_the_same_everywhere_and_needs_no_data(records):
    a, b = (
        Model(tiny_config(tokenizer="fixed", tokenizer_vocab_size=512)),
        Model(tiny_config(tokenizer="fixed", tokenizer_vocab_size=512)),
    )
    a.setup(records)
    ids = T.encode(a.tokenizer, ["Small left pleural effusion, Dr Zyxwvut."], 16, "cpu")[0]
    assert torch.equal(ids, T.encode(b.tokenizer, ["Small left pleural effusion, Dr Zyxwvut."], 16, "cpu")[0])
    unk = a.tokenizer.convert_tokens_to_ids(T.UNK)
    assert ids[0].tolist().count(unk) == 2  # "dr" and the name; every report word is known
    with pytest.raises(InputError, match="tokenizer_vocab_size"):
        Model(tiny_config(tokenizer="fixed", tokenizer_vocab_size=64))


def test_opacus_step_on_unet_text_encoder_and_vae(records):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    m = tiny_model(records, vae_steps=1)
    for name in list(m.nets):
        m.nets[name] = GradSampleModule(m.nets[name])
    m.opts = {
        n: DPOptimizer(o, noise_multiplier=0.5, max_grad_norm=1.0, expected_batch_size=4)
        for n, o in m.make_optimizers().items()
    }
    before = {n: flat(m.part(n)) for n in m.nets}
    assert set(m.train_step(records[:4])) == {"vae_rec", "vae_kl"}
    assert np.isfinite(m.train_step(records[:3])["loss"])
    for name in m.nets:
        assert not torch.equal(before[name], flat(m.part(name))), name
    # An empty Poisson batch still takes the noisy step the accountant counts.
    unet = flat(m.part("unet"))
    assert m.train_step([]) == {}
    assert not torch.equal(unet, flat(m.part("unet")))
    # The state is independent of the wrappers.
    assert not any("_module" in k for k in m.state())


def test_opacus_step_with_bert_text_encoder(records):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    m = tiny_model(records, vae_steps=0, text_encoder="bert")
    m.nets["text_encoder"] = GradSampleModule(m.nets["text_encoder"])
    m.nets["unet"] = GradSampleModule(m.nets["unet"])
    m.opts = {
        n: DPOptimizer(o, noise_multiplier=0.5, max_grad_norm=1.0, expected_batch_size=4)
        for n, o in m.make_optimizers().items()
    }
    before = flat(m.part("text_encoder"))
    assert np.isfinite(m.train_step(records[:4])["loss"])
    assert not torch.equal(before, flat(m.part("text_encoder")))


def test_checkpoint_has_diffusers_folder_that_loads_as_pretrained(records, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    cfg, m = tiny_run(records)
    for _ in range(3):
        m.train_step(records[:4])
    m.eval()
    save_checkpoint(tmp_path / "ck", m, cfg)
    folder = tmp_path / "ck" / "diffusers"
    assert (
        UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True).config.in_channels
        == cfg.model.latent_channels
    )
    assert AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).config.in_channels == 1
    assert isinstance(CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True), CLIPTextModel)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.vae.config.scaling_factor == cfg.model.latent_scale
    prompts = [prompt_from_labels({"Pleural Effusion": 1})]
    expected = m.sample(prompts, seed=5)[0]
    started = Model(cfg.model.model_copy(update={"pretrained": folder}))
    started.eval()
    np.testing.assert_array_equal(started.sample(prompts, seed=5)[0], expected)
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    loaded.eval()
    np.testing.assert_array_equal(loaded.sample(prompts, seed=5)[0], expected)


def test_sets_generated_side_by_side_are_the_ones_generated_one_after_another(records, tmp_path):
    from cxrsynth.generate import generate, generate_side_by_side

    cfg, m = tiny_run(records)
    m.eval()
    save_checkpoint(tmp_path / "base", m, cfg, save_optimizers=False)
    m.train()
    m.train_step(records[:4])
    m.eval()
    save_checkpoint(tmp_path / "tuned", m, cfg, save_optimizers=False)
    jobs_names = ("syn", "base")
    jobs = [(tmp_path / "tuned", tmp_path / "a" / "syn"), (tmp_path / "base", tmp_path / "a" / "base")]
    conditions = [{"Pleural Effusion": 1}, {"Cardiomegaly": 1}, {"No Finding": 1}] * 2
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    generate_side_by_side(jobs, 6, seed=3, conditions=conditions, progress=Progress(quiet=True), workers=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for checkpoint, name in ((tmp_path / "tuned", "syn"), (tmp_path / "base", "base")):
            generate(
                checkpoint, 6, tmp_path / "b" / name, seed=3, conditions=conditions, progress=Progress(quiet=True)
            )
    finally:
        torch.set_num_threads(threads)
    for name in ("syn", "base"):
        files = sorted(p.relative_to(tmp_path / "b" / name) for p in (tmp_path / "b" / name).rglob("*") if p.is_file())
        assert len(files) == 7  # the manifest and six images
        for rel in files:
            assert (tmp_path / "a" / name / rel).read_bytes() == (tmp_path / "b" / name / rel).read_bytes(), rel
    # The two checkpoints made different images: each job wrote its own model's samples.
    made = {
        name: [p.read_bytes() for p in sorted((tmp_path / "a" / name / "images").iterdir())] for name in jobs_names
    }
    assert all(a != b for a, b in zip(made["syn"], made["base"]))


def test_pretrained_folder_missing_parts_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match=r"unet/config.json"):
        Model(tiny_config(pretrained=tmp_path))


def test_generate_labels_come_from_prompts_and_prevalence(records):
    m = tiny_model(records, vae_steps=0)
    m.eval()
    out = m.generate(2, ["The heart is enlarged.", {"Pleural Effusion": 1, "Cardiomegaly": 0}], seed=0)
    assert out[0].labels["Cardiomegaly"] == 1
    assert out[1].labels["Pleural Effusion"] == 1 and out[1].labels["Cardiomegaly"] == 0
    drawn = m.generate(6, None, seed=0)
    train_texts = {r.findings for r in records} | {r.report for r in records}
    assert all(r.findings and r.findings not in train_texts for r in drawn)
    with pytest.raises(InputError, match="condition"):
        m.generate(2, ["one prompt"], seed=0)
    with pytest.raises(InputError, match="unknown label"):
        m.generate(1, [{"Heart Attack": 1}], seed=0)


def test_member_scores_are_fixed_per_record(records):
    m = tiny_model(records, vae_steps=0)
    m.eval()
    a = m.member_scores(records[:5])
    assert a.shape == (5,) and np.all(np.isfinite(a)) and np.all(a < 0)
    np.testing.assert_array_equal(a, m.member_scores(records[:5]))
    assert len(set(np.round(a, 6))) > 1


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: ldm-tiny\nmodel:\n  family: ldm\n  samplr: ddim\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="samplr"):
        load_config(bad)
    with pytest.raises(Exception, match="norm_num_groups"):
        LDMConfig(unet_channels=(30, 60), norm_num_groups=8)


def test_cli_train_then_generate_with_and_without_prompts(tmp_path):
    from cxrsynth.cli import main

    model_over = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    cfg_path = tmp_path / "run.yaml"
    import yaml

    cfg_path.write_text(
        yaml.safe_dump(
            {
                "preset": "ldm-tiny",
                "model": model_over,
                "data": {"phantom": {"n": 24, "image_size": 16}},
                "train": {"batch_size": 4},
            }
        ),
        encoding="utf-8",
    )
    ck = tmp_path / "ck"
    assert main(["--quiet", "train", "--config", str(cfg_path), "--steps", "3", "--out", str(ck)]) == 0
    assert (ck / "diffusers" / "model_index.json").is_file()
    assert main(["--quiet", "generate", "--checkpoint", str(ck), "--n", "3", "--out", str(tmp_path / "syn")]) == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("There is a pleural effusion.\nHeart size is normal. No pleural effusion.\n", encoding="utf-8")
    assert (
        main(
            [
                "--quiet",
                "generate",
                "--checkpoint",
                str(ck),
                "--n",
                "3",
                "--out",
                str(tmp_path / "syn2"),
                "--prompts",
                str(prompts),
            ]
        )
        == 0
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    assert (
        main(
            [
                "--quiet",
                "generate",
                "--checkpoint",
                str(ck),
                "--n",
                "1",
                "--out",
                str(tmp_path / "x"),
                "--prompts",
                str(empty),
            ]
        )
        == 2
    )
    for name, n in (("syn", 3), ("syn2", 3)):
        rows = list(csv.DictReader(open(tmp_path / name / "manifest.csv", encoding="utf-8")))
        assert len(rows) == n and all(r["provenance"].startswith("family=ldm") for r in rows)
        assert all((tmp_path / name / r["image_path"]).is_file() for r in rows)
    rows = list(csv.DictReader(open(tmp_path / "syn2" / "manifest.csv", encoding="utf-8")))
    assert rows[0]["findings"] == "There is a pleural effusion." and rows[0]["Pleural Effusion"] == "1"
    assert rows[1]["Pleural Effusion"] == "0" and rows[2]["Pleural Effusion"] == "1"


def _pixels(folder):
    rows = list(csv.DictReader(open(folder / "manifest.csv", encoding="utf-8")))
    return rows, [np.asarray(Image.open(folder / r["image_path"])) for r in rows]


def test_generate_samples_with_the_guidance_and_steps_it_is_given(tmp_path):
    import yaml

    from cxrsynth.cli import main

    model_over = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    cfg_path = tmp_path / "run.yaml"
    run = {"preset": "ldm-tiny", "model": model_over, "data": {"phantom": {"n": 24, "image_size": 16}}}
    cfg_path.write_text(yaml.safe_dump({**run, "train": {"batch_size": 4}}), encoding="utf-8")
    ck = tmp_path / "ck"
    assert main(["--quiet", "train", "--config", str(cfg_path), "--steps", "3", "--out", str(ck)]) == 0
    own = yaml.safe_load((ck / "run.yaml").read_text(encoding="utf-8"))["model"]

    def gen(name, *extra):
        return main(
            ["--quiet", "generate", "--checkpoint", str(ck), "--n", "4", "--out", str(tmp_path / name), *extra]
        )

    assert gen("plain") == 0
    assert gen("same", "--guidance", str(own["guidance"]), "--sample-steps", str(own["sample_steps"])) == 0
    assert gen("other", "--guidance", "1", "--sample-steps", "3") == 0
    plain_rows, plain = _pixels(tmp_path / "plain")
    same_rows, same = _pixels(tmp_path / "same")
    other_rows, other = _pixels(tmp_path / "other")
    # The checkpoint's own values given explicitly sample the same images; others do not.
    assert all(np.array_equal(a, b) for a, b in zip(plain, same))
    assert not any(np.array_equal(a, b) for a, b in zip(plain, other))
    assert [r["Pleural Effusion"] for r in other_rows] == [r["Pleural Effusion"] for r in plain_rows]
    assert all(r["provenance"].endswith(";guidance=1.0;sample_steps=3") for r in other_rows)
    # Provenance names a setting only where it differs from the checkpoint's own.
    assert not any("guidance" in r["provenance"] for r in plain_rows + same_rows)
    # A value the model's config refuses is bad input, and nothing is written.
    assert gen("bad", "--guidance", "0.5") == 2
    assert not (tmp_path / "bad").exists()


def test_dp_training_through_privacy_dp_wiring(tmp_path):
    """The project's DP wiring (cxrsynth.privacy.dp) wraps the LDM's real-data nets; Poisson batches train."""
    import json

    from cxrsynth.config import config_from_dict
    from cxrsynth.privacy.dp import privatize
    from cxrsynth.train import train

    base = load_config("ldm-tiny").model_dump(mode="json")
    base["model"].update({k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()})
    base["data"]["phantom"].update({"n": 24, "image_size": 16})
    base["train"].update({"steps": 3, "batch_size": 4})
    base["dp"].update({"enabled": True, "noise_multiplier": 1.0})
    out = train(config_from_dict(base), tmp_path / "ck", privatize=privatize)
    ledger = json.loads((out / "train_state.json").read_text())["privacy_ledger"]
    assert set(ledger["networks"]) == {"unet", "text_encoder", "vae"}
    assert 0 < ledger["epsilon"] < float("inf")
    # Step 1 trains the VAE alone (noise sigma), steps 2-3 the U-Net and text encoder (sigma*sqrt(2)
    # each): every sampled batch is one release at the configured sigma.
    assert ledger["history"] == [[1.0, ledger["sample_rate"], 3]]


def test_label_prompts_read_no_report_text_and_match_generation_prompts(records):
    from cxrsynth.models.ldm.prompts import training_prompt

    m = tiny_model(records, prompt_section="labels")
    labeled = next(r for r in records if r.has_labels())
    assert training_prompt(labeled, "labels") == prompt_from_labels(labeled.labels)
    assert training_prompt(labeled.with_(labels={}), "labels") == ""
    # The vocabulary is the templates': the words of the reports (and any PHI in them) are not in it.
    vocab = set(m.tokenizer.get_vocab())
    assert {"cardiomegaly", "effusion", "pneumothorax"} <= vocab
    report_only = {w.lower().strip(".,") for r in records for w in r.report.split()} - {
        w.lower().strip(".,") for w in " ".join(prompt_from_labels(r.labels) for r in records).split()
    }
    assert report_only and not (report_only & (vocab - {"the", "is", "no", "a", "of", "in"}))
    assert Model.vocabulary_text(m.config, labeled) == ""
    # Federated setup without site words gives the same tokenizer.
    fed = Model(tiny_config(prompt_section="labels"))
    fed.setup_from_counts({}, 0)
    assert fed.tokenizer.get_vocab() == m.tokenizer.get_vocab()
    losses = m.train_step(records[:4])  # VAE stage
    losses = m.train_step(records[:4])
    assert np.isfinite(losses["loss"])
    out = m.generate(2, [labeled.labels, {"Cardiomegaly": 1}], seed=0)
    assert out[1].labels["Cardiomegaly"] == 1 and "Cardiomegaly." in out[1].report


def test_label_vector_conditioning_reaches_the_unet_and_survives_dp_and_a_checkpoint(records, tmp_path):
    from opacus import GradSampleModule

    from cxrsynth.data.records import condition_vector

    m = tiny_model(records, label_conditioning="vector", prompt_section="labels", vae_steps=0, prompt_dropout=0.0)
    unet = m.part("unet")
    assert unet.class_embedding is not None
    labeled = next(r for r in records if r.has_labels())
    classes = m._classes([labeled.labels, {}])
    assert torch.equal(classes[0], torch.as_tensor(condition_vector(labeled.labels))) and not classes[1].any()
    # The label vector changes the U-Net's prediction (it enters through the time embedding).
    x = torch.randn(2, unet.config.in_channels, m.latent_size(), m.latent_size())
    t = torch.tensor([10, 10])
    hidden = m.part("text_encoder")(*m._tokens(["", ""])[:2])[0]
    with torch.no_grad():
        a = unet(x, t, encoder_hidden_states=hidden, class_labels=m._classes([{"Cardiomegaly": 1}] * 2)).sample
        b = unet(x, t, encoder_hidden_states=hidden, class_labels=m._classes([{"Cardiomegaly": 0}] * 2)).sample
    assert not torch.allclose(a, b)
    # Per-sample gradients of the label embedding under Opacus, and a checkpoint round trip.
    before = unet.class_embedding.linear_1.weight.detach().clone()
    m.nets["unet"] = GradSampleModule(m.nets["unet"])
    m.train_step(records[:4])
    assert not torch.equal(before, m.part("unet").class_embedding.linear_1.weight)
    from cxrsynth.config import config_from_dict

    cfg = config_from_dict({"model": m.config.model_dump(mode="json")})
    save_checkpoint(tmp_path / "ck", m, cfg, {"step": 1}, save_optimizers=False)
    back, _, _ = load_checkpoint(tmp_path / "ck")
    assert torch.equal(
        back.part("unet").class_embedding.linear_1.weight, m.part("unet").class_embedding.linear_1.weight
    )
    out = back.generate(2, [{"Cardiomegaly": 1}, {"Pleural Effusion": 1}], seed=1)
    assert out[0].labels["Cardiomegaly"] == 1 and out[1].labels["Pleural Effusion"] == 1
