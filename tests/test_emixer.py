"""EMIXER: shapes, the z split, stop/continue logic, rotations, loss signs, DP-SGD, train -> generate."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator

from cxrsynth.cli import main
from cxrsynth.config import load_config
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import LABELS
from cxrsynth.data.transforms import frontal_images
from cxrsynth.errors import ConfigError, InputError
from cxrsynth.models.condition import Condition
from cxrsynth.models.emixer.config import EmixerConfig
from cxrsynth.models.emixer.discriminators import rotate
from cxrsynth.models.emixer.generator import split_z
from cxrsynth.models.emixer.labels import COND_DIM, condition_tensor
from cxrsynth.models.emixer.losses import d_loss, g_loss
from cxrsynth.models.emixer.model import REAL_DATA_NETS, Model
from cxrsynth.models.emixer.report import (
    IMP,
    build_vocabulary,
    encode_reports,
    grid_to_text,
    keep_mask,
    report_sentences,
    sentence_count,
)

TINY = dict(
    image_size=16,
    up_blocks=2,
    z_chunk=4,
    z_dim=16,
    class_embed_dim=8,
    g_width=8,
    attn_resolution=16,
    d_width=8,
    feature_dim=16,
    word_dim=8,
    sentence_hidden=16,
    word_hidden=16,
    report_hidden=16,
    vocab_size=96,
    vocab_min_count=2,
    max_sentences=3,
    max_words=5,
    d_steps=2,
)


def real_images(model, records) -> torch.Tensor:
    return frontal_images(records, model.config.image_size, model.device, "EMIXER")


def get_dummy_components(n: int = 24, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = EmixerConfig(**{**TINY, **overrides})
    records = make_phantom(n, sites=1, seed=seed, image_size=16, lateral=False)
    model = Model(cfg)
    model.setup(records)
    model.opts = model.make_optimizers()
    return model, records


def test_z_split_feeds_linear_then_each_conditional_block():
    cfg = EmixerConfig(**TINY)
    z = torch.arange(cfg.z_dim, dtype=torch.float32)[None]
    chunks = split_z(z, cfg.z_chunk)
    assert len(chunks) == cfg.up_blocks + 2
    assert all(c.shape == (1, cfg.z_chunk) for c in chunks)
    assert torch.equal(torch.cat(chunks, 1), z)
    with pytest.raises(ValueError):
        split_z(torch.zeros(1, 15), 4)
    # Changing only the last chunk changes the image only through the final conditional block.
    model, _ = get_dummy_components()
    g = model.nets["generator"].eval()
    y = condition_tensor([{"Cardiomegaly": 1}], "cpu")
    z2 = z.clone()
    z2[0, -cfg.z_chunk :] += 3.0
    with torch.no_grad():
        assert not torch.allclose(g(z, y), g(z2, y))


def test_paper_config_splits_120_into_20s_and_refuses_a_bad_split():
    cfg = load_config("emixer-paper").model
    assert (cfg.z_dim, cfg.z_chunk, cfg.image_size, cfg.feature_dim, cfg.vocab_min_count) == (120, 20, 128, 512, 6)
    with pytest.raises(ConfigError, match="z_dim"):
        load_config("emixer-tiny", {"model": {"z_dim": 81}})
    with pytest.raises(ConfigError, match="model.hidden_size"):
        load_config("emixer-tiny", {"model": {"hidden_size": 3}})


def test_shapes_of_every_network():
    model, records = get_dummy_components()
    cfg, b = model.config, 3
    y = condition_tensor([r.labels for r in records[:b]], "cpu")
    assert y.shape == (b, COND_DIM)
    img = model.nets["generator"](torch.randn(b, cfg.z_dim), y)
    assert img.shape == (b, 1, 16, 16) and img.abs().max() <= 1
    f = model.nets["report_decoder"]
    topics, stop = f.topics(img)
    assert topics.shape == (b, cfg.max_sentences, cfg.word_dim) and stop.shape == (b, cfg.max_sentences, 2)
    ids, counts, onehot = f.decode(img, model.vocab, soft=True)
    assert ids.shape == (b, cfg.max_sentences, cfg.max_words + 1) and counts.shape == (b,)
    assert onehot.shape == (*ids.shape, cfg.vocab_size) and torch.equal(onehot.argmax(-1), ids)
    assert model.nets["d_image"](img, y).shape == (b,)
    assert model.nets["d_image"].rotation(img).shape == (b, 4)
    assert model.nets["d_report"](onehot).shape == (b,)
    assert model.nets["d_joint"](img, onehot).shape == (b,)


def test_stop_continue_logic():
    stop = torch.tensor([[0.1, 0.9, 0.9, 0.2], [0.2, 0.3, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]])
    assert sentence_count(stop).tolist() == [2, 4, 1]
    eos = 2
    ids = torch.tensor([[[5, 6, eos, 7], [8, eos, 9, 9], [5, 5, 5, 5]]])
    keep = keep_mask(ids, torch.tensor([2]), eos)
    assert keep[0].tolist() == [[True, True, True, False], [True, True, False, False], [False] * 4]


def test_report_grid_round_trip_keeps_sections_and_teaches_stop():
    model, records = get_dummy_components()
    vocab, cfg = model.vocab, model.config
    assert IMP in vocab.stoi and len(vocab) <= cfg.vocab_size
    rec = records[0].with_(findings="Heart size is normal.", impression="No pneumothorax.")
    ids, counts = encode_reports([rec], vocab, cfg.max_sentences, cfg.max_words)
    assert counts.tolist() == [2]
    assert (ids[0, :2] == vocab.eos_id).sum(dim=1).tolist() == [1, 1]
    assert ids[0, 0, 0] == vocab.stoi[IMP]  # impression first: truncation keeps the diagnoses
    assert (ids[0, 2] == vocab.pad_id).all()
    findings, impression = grid_to_text(ids, counts, vocab)[0]
    words = lambda s: [w for w in s.lower().replace(".", " ").split()]  # noqa: E731
    assert set(words(findings)) <= set(words(rec.findings)) | {"<unk>"}
    assert "pneumothorax" in impression.lower() and "pneumothorax" not in findings.lower()


def test_decoder_learns_finding_sentences_only():
    rec = make_phantom(1, sites=1, seed=0, image_size=16, lateral=False)[0].with_(
        findings="No prior studies for comparison. Small left pleural effusion. No pneumothorax.",
        impression="Left pleural effusion. Findings were discussed with Dr. Mensah by telephone at 5:49 PM. Electronically signed by Ana Lee, MD.",
    )
    kept = [" ".join(t) for t in report_sentences(rec)]
    assert kept == [f"{IMP} left pleural effusion", "small left pleural effusion", "no pneumothorax"]
    every = [" ".join(t) for t in report_sentences(rec, "all")]
    assert any("signed" in t for t in every) and any("comparison" in t for t in every) and set(kept) < set(every)
    vocab = build_vocabulary([rec] * 6, min_count=6, size=64)
    assert "effusion" in vocab.stoi and not {"mensah", "signed", "comparison", "telephone"} & set(vocab.stoi)
    ids, counts = encode_reports([rec], vocab, max_sentences=4, max_words=6)
    assert counts.tolist() == [3]


def test_extra_decoder_steps_train_f_and_are_skipped_under_dp_sgd():
    losses = {}
    for f_steps in (1, 4):  # same seed: both models start from the same weights
        model, records = get_dummy_components(n=8, f_steps=f_steps, lr_f=3e-3)
        torch.manual_seed(1)
        for _ in range(3):
            model.train_step(records)
        x, (ids, counts) = (
            real_images(model, records),
            encode_reports(records, model.vocab, model.config.max_sentences, model.config.max_words),
        )
        with torch.no_grad():
            losses[f_steps] = model.nets["report_decoder"].loss(x, ids, counts, model.vocab.pad_id).item()
    assert losses[4] < losses[1] - 0.05, losses
    # Under DP-SGD one update per sampled batch: the extra updates are skipped, with a warning.
    model.nets["report_decoder"] = GradSampleModule(model.nets["report_decoder"])
    opt = model.opts["report_decoder"] = DPOptimizer(
        model.opts["report_decoder"], noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=2
    )
    updates, step = [], opt.step
    opt.step = lambda *a, **k: (updates.append(1), step(*a, **k))[1]
    with pytest.warns(UserWarning, match="f_steps"):
        assert np.isfinite(model.train_step(records[:2])["f_report"])
    assert len(updates) == 1


def test_report_decoder_feature_keeps_its_scale_when_the_encoder_weights_grow():
    """v feeds the sentence LSTM; were it to grow with the weights, the LSTM's gates would saturate
    and F would write one report for every image."""
    model, records = get_dummy_components()
    enc = model.nets["report_decoder"].encoder
    x = real_images(model, records[:6])
    with torch.no_grad():
        before = enc(x)
        enc.proj.weight.mul_(1000.0)
        enc.proj.bias.mul_(1000.0)
        after = enc(x)
    bound = model.config.feature_dim**0.5  # a layer-normalized vector of this width
    assert before.abs().max() <= bound and after.abs().max() <= bound
    assert (after[0] - after[1]).abs().max() > 0.1  # still a different feature per image


def test_rotation_labels_match_quarter_turns():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(4, 1, 1, 1)
    k = torch.tensor([0, 1, 2, 3])
    r = rotate(x, k)
    assert torch.equal(r[0], x[0])
    assert torch.equal(r[1, 0], torch.rot90(x[0, 0], 1))
    assert torch.equal(r[2, 0], x[0, 0].flip(0).flip(1))
    assert torch.equal(rotate(r[3:4], torch.tensor([1])), x[:1])


@pytest.mark.parametrize("kind", ["hinge", "bce"])
def test_loss_signs(kind):
    good = d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0), kind)
    bad = d_loss(torch.full((4,), -3.0), torch.full((4,), 3.0), kind)
    assert good < bad and good >= 0
    assert g_loss(torch.full((4,), 3.0), kind) < g_loss(torch.full((4,), -3.0), kind)
    if kind == "hinge":
        assert good == 0 and g_loss(torch.ones(2), kind) == -1


def test_real_data_networks_pass_the_opacus_validator():
    model, _ = get_dummy_components()
    for name in model.nets:
        errors = ModuleValidator.validate(model.nets[name], strict=False)
        assert (errors == []) == model.reads_real_data(name), (name, errors[:2])
    assert [n for n in model.nets if model.reads_real_data(n)] == list(REAL_DATA_NETS)


def _batch(model, records, b, seed=0):
    torch.manual_seed(seed)
    cfg, vocab = model.config, model.vocab
    recs = records[:b]
    real = real_images(model, recs)
    y = condition_tensor([r.labels for r in recs], "cpu")
    y[1] = 0  # one unlabeled record (the few-label setting)
    ids, counts = encode_reports(recs, vocab, cfg.max_sentences, cfg.max_words)
    with torch.no_grad():
        fake = model.nets["generator"](torch.randn(b, cfg.z_dim), y)
        _, _, fake_onehot = model.nets["report_decoder"].decode(fake, vocab)
    return real, y, ids, counts, fake, fake_onehot, torch.tensor([1, 3, 0][:b])


def test_synthetic_pairs_teach_f_only_from_labeled_records():
    model, records = get_dummy_components(f_synthetic_pairs=1.0)
    real, y, ids, counts, fake, onehot, rot = _batch(model, records, 3)
    losses = model.real_data_losses(real, y, ids, counts, fake, onehot, rot)
    assert losses["f_synthetic"] > 0
    # Record 1 is unlabeled (its fake came from sampled labels): it adds nothing to the loss.
    alone = model.real_data_losses(*[t[1:2] for t in (real, y, ids, counts, fake, onehot, rot)])
    assert alone["f_synthetic"] == 0 and alone["f_report"] > 0
    # The loss is F's teacher-forced loss on (fake, real report): it falls as F learns it.
    f = model.nets["report_decoder"]
    opt, labeled = torch.optim.Adam(f.parameters(), lr=0.01), y[:, -1]
    before = f.loss(fake, ids, counts, model.vocab.pad_id, weight=labeled).item()
    for _ in range(30):
        opt.zero_grad()
        f.loss(fake, ids, counts, model.vocab.pad_id, weight=labeled).backward()
        opt.step()
    assert f.loss(fake, ids, counts, model.vocab.pad_id, weight=labeled).item() < 0.7 * before
    assert "f_synthetic" not in get_dummy_components()[0].real_data_losses(real, y, ids, counts, fake, onehot, rot)


@pytest.mark.parametrize("synthetic", [0.0, 1.0])
def test_opacus_per_sample_gradients_equal_one_record_at_a_time(synthetic):
    """Record i's real, paired-fake, synthetic-pair and rotated passes add up to one per-sample gradient per network."""
    model, records = get_dummy_components(f_synthetic_pairs=synthetic)
    inputs = _batch(model, records, 3)
    for name in REAL_DATA_NETS:
        model.nets[name] = GradSampleModule(model.nets[name])
    buffers = {n: copy.deepcopy(model.nets[n].state_dict()) for n in REAL_DATA_NETS}
    params = {n: [p for p in model.nets[n].parameters()] for n in REAL_DATA_NETS}

    def run(sl):
        for n in REAL_DATA_NETS:
            model.nets[n].load_state_dict(buffers[n])  # same power-iteration state every time
            for p in params[n]:
                p.grad, p.grad_sample = None, None
        losses = model.real_data_losses(*[t[sl] for t in inputs])
        sum(losses.values()).backward()

    run(slice(0, 3))
    batched = {n: [p.grad_sample.clone() for p in params[n]] for n in REAL_DATA_NETS}
    for i in range(3):
        run(slice(i, i + 1))
        for n in REAL_DATA_NETS:
            for p, gs in zip(params[n], batched[n]):
                assert gs.shape[0] == 3
                torch.testing.assert_close(gs[i], p.grad, rtol=1e-3, atol=1e-5, msg=f"{n}: record {i}")


def test_train_steps_under_opacus_with_poisson_batches():
    model, records = get_dummy_components()
    for name in REAL_DATA_NETS:
        model.nets[name] = GradSampleModule(model.nets[name])
        model.opts[name] = DPOptimizer(
            model.opts[name], noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=3
        )
    before = {k: v.copy() for k, v in model.state().items()}
    # Poisson sampling gives batches of varying size, sometimes empty or a single record.
    for batch in ([], records[1:4], records[:1], records[4:6]):
        seen = {k: v.copy() for k, v in model.state().items()}
        losses = model.train_step(batch)
        assert (losses == {}) == (not batch)
        if not batch:  # an empty sampled batch is still a noisy release of every real-data network
            now = model.state()
            for name in REAL_DATA_NETS:
                assert any(not np.array_equal(seen[k], now[k]) for k in seen if k.startswith(name + ".")), name
        assert all(np.isfinite(v) for v in losses.values())
        if "g_image" in losses:  # G's step must leave nothing behind on the DP networks
            for name in REAL_DATA_NETS:
                assert all(
                    getattr(p, "grad_sample", None) is None and p.grad is None for p in model.nets[name].parameters()
                )
    assert (
        model.step_count == 3
    )  # the empty batch (noise only) does not count; G stepped once, after the 1-record batch
    after = model.state()
    for name in model.nets:
        changed = any(
            not np.array_equal(before[k], after[k])
            for k in before
            if k.startswith(name + ".") and k.endswith("weight")
        )
        assert changed, f"{name} was not updated"
    assert set(after) == set(before)  # DP wrappers do not leak into the state names


def test_moving_average_of_g_follows_g_and_writes_the_release():
    model, records = get_dummy_components(g_ema=0.9, g_ema_start=1, f_synthetic_pairs=1.0)
    g, avg = model.nets["generator"], model.nets["generator_ema"]
    assert "generator_ema" not in model.opts  # averaged, never optimized
    assert all(torch.equal(a, b) for a, b in zip(avg.parameters(), g.parameters()))

    def params(net):
        return [p.detach().clone() for p in net.parameters()]

    model.train_step(records[:4])
    model.train_step(records[4:8])  # G's first update: the average copies G
    assert all(torch.equal(a, b) for a, b in zip(avg.parameters(), g.parameters()))
    before_avg = params(avg)
    model.train_step(records[8:12])
    model.train_step(records[12:16])  # second update: 0.9 of the old average, 0.1 of G
    for a, old, live in zip(avg.parameters(), before_avg, g.parameters()):
        torch.testing.assert_close(a, 0.9 * old + 0.1 * live)
    assert any(not torch.equal(a, b) for a, b in zip(avg.parameters(), g.parameters()))
    # The average keeps its own batch-norm statistics (it runs on every step's labels).
    assert not torch.equal(avg.out_norm.running_mean, g.out_norm.running_mean)
    # Generation uses the average: silencing G changes nothing, silencing the average does.
    out = model.generate(3, None, seed=2)
    with torch.no_grad():
        g.out_conv.layer.weight.zero_()
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, model.generate(3, None, seed=2)))
    with torch.no_grad():
        avg.out_conv.layer.weight.zero_()
    flat = model.generate(3, None, seed=2)
    assert all(np.ptp(r.image) == 0 for r in flat) and not all(np.ptp(r.image) == 0 for r in out)
    # It is saved with the weights and is absent when the setting is off.
    assert any(k.startswith("generator_ema.") for k in model.state())
    assert "generator_ema" not in get_dummy_components()[0].nets


def test_generate_follows_conditions_and_prior(tmp_path):
    model, records = get_dummy_components()
    cond = [{"Cardiomegaly": 1, "No Finding": 0}, {"Pleural Effusion": "-1"}]
    out = model.generate(2, cond, seed=3)
    assert [r.labels["Cardiomegaly"] for r in out] == [1, None]
    assert out[1].labels["Pleural Effusion"] == -1 and set(out[0].labels) == set(LABELS)
    assert out[0].image.shape == (16, 16) and out[0].image.dtype == np.uint8
    again = model.generate(2, cond, seed=3)
    assert all(np.array_equal(a.image, b.image) and a.report == b.report for a, b in zip(out, again))
    assert not any("<unk>" in r.report or "<pad>" in r.report for r in out)
    sampled = model.generate(5, None, seed=1)
    assert all(r.labels and set(r.labels) == set(LABELS) for r in sampled)
    with pytest.raises(InputError, match="Cardio"):
        model.generate(1, [{"Cardio": 1}])
    with pytest.raises(InputError, match="conditioned on labels .* gives none \\(prompt\\)"):
        model.generate(1, [Condition(prompt="The heart is enlarged.")])
    with pytest.raises(InputError, match="one per record"):
        model.generate(3, cond)
    scores = model.member_scores(records[:4])
    assert scores.shape == (4,) and np.isfinite(scores).all()


def test_train_generate_and_resume_from_the_command_line(tmp_path, capsys):
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        "preset: emixer-tiny\n"
        f"model: {json.dumps(TINY)}\n"
        "data: {phantom: {n: 30, sites: 1, image_size: 16, lateral: false}, labeled_fraction: 0.3}\n"
        "train: {steps: 2, batch_size: 4, num_threads: 1}\n",
        encoding="utf-8",
    )
    ckpt = tmp_path / "ckpt"
    assert main(["--quiet", "train", "--config", str(cfg_path), "--out", str(ckpt)]) == 0
    assert main(["--quiet", "train", "--config", str(cfg_path), "--out", str(ckpt), "--steps", "4", "--resume"]) == 0
    lines = [json.loads(x) for x in (ckpt / "losses.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert "g_image" in lines[1] and "f_report" in lines[0]
    extra = json.loads((ckpt / "extra.json").read_text())
    assert extra["step"] == 4 and IMP in extra["vocabulary"]["itos"]
    out = tmp_path / "syn"
    assert main(["--quiet", "generate", "--checkpoint", str(ckpt), "--n", "5", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv", encoding="utf-8")))
    assert len(rows) == 5 and all((out / r["image_path"]).is_file() for r in rows)
    assert all(r["site"] == "synthetic" and "family=emixer" in r["provenance"] for r in rows)
    assert any(r[name] != "" for r in rows for name in LABELS)
    # A checkpoint whose weights no longer fit the networks run.yaml describes (another version,
    # or run.yaml edited afterwards) is bad input, named, not a raw state_dict error.
    run = (ckpt / "run.yaml").read_text()
    (ckpt / "run.yaml").write_text(run.replace("d_width: 8", "d_width: 16"))
    capsys.readouterr()
    assert main(["--quiet", "generate", "--checkpoint", str(ckpt), "--n", "2", "--out", str(tmp_path / "syn2")]) == 2
    assert "model.safetensors: the weights do not fit the emixer networks" in capsys.readouterr().err
    (ckpt / "run.yaml").write_text(run)
    (ckpt / "format.json").write_text('{"checkpoint_format": 99}')
    assert main(["--quiet", "generate", "--checkpoint", str(ckpt), "--n", "2", "--out", str(tmp_path / "syn3")]) == 2
    assert "checkpoint format 99 was written by a newer cxrsynth" in capsys.readouterr().err
