"""MoPoE-VAE: fusion, ELBO, missing modalities, DP-SGD, generation and checkpoints."""

import numpy as np
import pytest
import torch

from cxrsynth.config import load_config
from cxrsynth.data.labeler import label_report
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.text import Vocabulary
from cxrsynth.errors import InputError
from cxrsynth.models import build_model
from cxrsynth.models.condition import Condition
from cxrsynth.models.mopoe import fusion
from cxrsynth.models.mopoe.codec import decode_report, encode_text
from cxrsynth.models.mopoe.config import MoPoEConfig


def tiny_config(**over) -> MoPoEConfig:
    base = dict(
        image_size=16,
        latent_dim=8,
        channels=8,
        text_length=16,
        text_channels=16,
        embed_dim=8,
        vocab_min_count=1,
        lr=2e-3,
    )
    return MoPoEConfig(**{**base, **over})


def tiny_model(records, **over):
    torch.manual_seed(0)
    model = build_model(tiny_config(**over))
    model.setup(records)
    model.opts = model.make_optimizers()
    return model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small convolutions on a shared 2-core machine run far slower with 2 threads than with 1.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def records():
    recs = make_phantom(24, sites=2, seed=0, image_size=32)
    # Studies without a lateral view are common: a third of them here.
    return [r.with_(lateral=None) if i % 3 == 0 else r for i, r in enumerate(recs)]


# ---- fusion --------------------------------------------------------------------------------


def test_poe_of_one_expert_is_that_expert():
    mu, lv = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    out_mu, out_lv = fusion.product_of_experts(mu, lv, torch.ones(1, 5), prior=False)
    assert torch.allclose(out_mu, mu[0], atol=1e-6) and torch.allclose(out_lv, lv[0], atol=1e-6)


def test_poe_is_precision_weighted_and_includes_the_prior():
    mus = torch.tensor([[[2.0]], [[-1.0]]])
    logvars = torch.log(torch.tensor([[[1.0]], [[0.5]]]))
    mu, lv = fusion.product_of_experts(mus, logvars, torch.ones(2, 1))
    # precisions 1 (prior) + 1 + 2 = 4; mean (0 + 2*1 + -1*2) / 4 = 0
    assert mu.item() == pytest.approx(0.0, abs=1e-6) and lv.exp().item() == pytest.approx(0.25)
    mu, lv = fusion.product_of_experts(mus, logvars, torch.tensor([[1.0], [0.0]]))
    assert mu.item() == pytest.approx(1.0) and lv.exp().item() == pytest.approx(0.5)


def test_subset_enumeration_matches_the_papers_table():
    assert [fusion.subset_name(s) for s in fusion.SUBSETS] == list(fusion.TABLE_ORDER)
    assert len(fusion.subsets_of(("frontal", "report"))) == 3
    assert fusion.BY_NAME["LFT"] == ("frontal", "lateral", "report")


def test_missing_lateral_leaves_only_its_subsets():
    b, d = 4, 3
    mus = {m: torch.zeros(b, d) for m in fusion.MODALITIES}
    mus["lateral"] = torch.full((b, d), 1000.0)  # would dominate any subset it joined
    logvars = {m: torch.zeros(b, d) for m in fusion.MODALITIES}
    present = {"frontal": torch.ones(b), "lateral": torch.tensor([1.0, 0, 0, 0]), "report": torch.ones(b)}
    mu, lv, valid = fusion.subset_posteriors(mus, logvars, present)
    names = list(fusion.TABLE_ORDER)
    assert valid[0].tolist() == [1.0] * 7
    assert [n for n, v in zip(names, valid[1].tolist()) if v] == ["F", "T", "FT"]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        z = fusion.mixture_sample(mu, lv, valid, g)
        assert z[1:].abs().max() < 20
    assert torch.isfinite(fusion.mixture_kl(mu, lv, valid)).all()


# ---- the model -----------------------------------------------------------------------------


def test_report_codec_round_trip():
    from cxrsynth.data.records import Record

    rec = Record("r", "p", "s", findings="The heart is enlarged. No pleural effusion.", impression="Cardiomegaly.")
    vocab = Vocabulary.build([rec.report], min_count=1)
    ids = encode_text([rec.report], vocab, 32)
    assert ids.shape == (1, 32) and ids[0, -1].item() == vocab.pad_id
    assert decode_report(ids[0].tolist(), vocab) == (rec.findings, rec.impression)
    # Truncation keeps the end-of-report token.
    assert encode_text([rec.report], vocab, 8)[0, -1].item() == vocab.eos_id


def test_elbo_finite_and_decreasing(records):
    model = tiny_model(records)
    batch = records[:12]
    before = model.member_scores(batch)
    losses = [model.train_step(batch)["loss"] for _ in range(25)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 100
    after = model.member_scores(batch)
    assert after.shape == (12,) and (after > before).all()


def test_missing_modality_batch_trains_without_touching_lateral_nets(records):
    model = tiny_model(records)
    no_lateral = [r for r in records if r.lateral is None]
    losses = model.train_step(no_lateral)
    assert losses["nll_lateral"] == 0.0 and np.isfinite(losses["loss"])
    for name in ("enc_lateral", "dec_lateral"):
        grads = [p.grad for p in model.nets[name].parameters()]
        assert all(g is None or g.abs().max() == 0 for g in grads), name
    assert any(p.grad.abs().max() > 0 for p in model.nets["enc_frontal"].parameters())


def test_empty_batch_is_handled(records):
    model = tiny_model(records)
    assert model.train_step([]) == {"nll_frontal": 0.0, "nll_lateral": 0.0, "nll_report": 0.0, "kl": 0.0, "loss": 0.0}


def test_opacus_step_on_encoders_and_decoders(records):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model = tiny_model(records)
    for name in list(model.nets.keys()):
        model.nets[name] = GradSampleModule(model.nets[name])
        model.opts[name] = DPOptimizer(
            model.opts[name], noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=8
        )
    before = model.state()
    batch = records[:8]  # records 0, 3 and 6 have no lateral
    losses = model.train_step(batch)
    assert np.isfinite(losses["loss"])
    for net in model.nets.values():
        for p in net.parameters():
            assert p.grad_sample is None or p.grad_sample.shape[0] == len(batch)
    changed = {k.split(".")[0] for k, v in model.state().items() if not np.array_equal(v, before[k])}
    assert changed == set(model.nets.keys())
    # An empty Poisson batch: DP-SGD still steps (noise only).
    before = model.state()
    model.train_step([])
    assert any(not np.array_equal(v, before[k]) for k, v in model.state().items() if k.startswith("dec_report"))


def test_unconditional_generation_labels_come_from_the_report(records):
    model = tiny_model(records)
    out = model.generate(3, seed=5)
    assert len(out) == 3
    for r in out:
        assert r.image.shape == (16, 16) and r.image.dtype == np.uint8 and r.lateral.shape == (16, 16)
        assert r.labels == label_report(r.report)
    again = model.generate(3, seed=5)
    assert all(np.array_equal(a.image, b.image) and a.report == b.report for a, b in zip(out, again))


def test_conditional_generation_and_helpers(records):
    model = tiny_model(records)
    frontal = [r.image for r in records[:2]]
    assert len(model.report_from_frontal(frontal)) == 2
    pairs = model.images_from_report([records[0].report])
    assert pairs[0][0].shape == (16, 16) and pairs[0][1].shape == (16, 16)
    lat = model.lateral_from_frontal(frontal, seed=1)
    assert lat[0].shape == (16, 16)
    # The condition changes the latent: two different frontal images give different laterals.
    assert not np.array_equal(lat[0], model.lateral_from_frontal(frontal[1:], seed=1)[0]) or np.array_equal(
        frontal[0], frontal[1]
    )
    one = model.generate(2, [Condition(prompt=records[1].report)] * 2, seed=0)
    assert len(one) == 2
    both = model.generate(1, [Condition(prompt=records[1].report, frontal=frontal[0])], seed=0)
    assert len(both) == 1


def test_bad_conditions_teach(records):
    model = tiny_model(records)
    with pytest.raises(InputError, match="Label conditions need labels among model.modalities"):
        model.generate(1, [{"Cardiomegaly": 1}])
    with pytest.raises(InputError, match="1 condition.* for 2 record"):
        model.generate(2, [Condition(prompt="x")])
    with pytest.raises(InputError, match="empty MoPoE condition"):
        model.generate(1, [Condition()])


def test_checkpoint_round_trip(records, tmp_path):
    from cxrsynth.checkpoint import load_checkpoint, save_checkpoint
    from cxrsynth.config import config_from_dict

    cfg = config_from_dict({"model": tiny_config().model_dump()})
    model = tiny_model(records)
    model.train_step(records[:8])
    save_checkpoint(tmp_path, model, cfg, {"step": 1})
    loaded, _, state = load_checkpoint(tmp_path)
    assert state["step"] == 1 and loaded.vocab.itos == model.vocab.itos
    a, b = model.generate(2, seed=3), loaded.generate(2, seed=3)
    assert all(np.array_equal(x.image, y.image) and x.report == y.report for x, y in zip(a, b))
    assert np.allclose(model.member_scores(records[:4]), loaded.member_scores(records[:4]), rtol=1e-4)


def test_config_refuses_shapes_the_nets_cannot_take():
    from cxrsynth.config import config_from_dict
    from cxrsynth.errors import ConfigError

    with pytest.raises(ConfigError, match="power of two"):
        config_from_dict({"model": {"family": "mopoe", "image_size": 48}})
    with pytest.raises(ConfigError, match="multiple of 4"):
        config_from_dict({"model": {"family": "mopoe", "text_length": 30}})


def test_causal_report_decoder_sees_no_later_word():
    from cxrsynth.models.mopoe.nets import CausalTextDecoder

    torch.manual_seed(0)
    dec = CausalTextDecoder(vocab_size=20, text_length=16, embed_dim=8, channels=16, latent_dim=4)
    z, ids = torch.randn(2, 4), torch.randint(0, 20, (2, 16))
    changed = ids.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 20
    a, b = dec(z, ids), dec(z, changed)
    assert torch.allclose(a[:, :, :9], b[:, :, :9]) and not torch.allclose(a[:, :, 9:], b[:, :, 9:])


def test_word_by_word_decoding_reads_only_the_receptive_field():
    """Generation feeds the decoder the last RECEPTIVE_FIELD words of the prefix at their
    positions; the logits equal those of the whole prefix at every position."""
    from cxrsynth.models.mopoe.nets import CausalTextDecoder

    torch.manual_seed(0)
    length = CausalTextDecoder.RECEPTIVE_FIELD + 24
    dec = CausalTextDecoder(vocab_size=20, text_length=length, embed_dim=8, channels=16, latent_dim=4)
    z, ids = torch.randn(3, 4), torch.randint(0, 20, (3, length))
    full = dec(z, ids)
    for t in (0, 5, CausalTextDecoder.RECEPTIVE_FIELD - 1, CausalTextDecoder.RECEPTIVE_FIELD, length - 1):
        start = max(0, t + 1 - CausalTextDecoder.RECEPTIVE_FIELD)
        window = dec(z, ids[:, start : t + 1], offset=start, last=True)
        torch.testing.assert_close(window[:, :, 0], full[:, :, t])
    # One word fewer than the field would change the logits: the field is not larger than needed.
    t = length - 1
    short = dec(
        z,
        ids[:, t + 2 - CausalTextDecoder.RECEPTIVE_FIELD : t + 1],
        offset=t + 2 - CausalTextDecoder.RECEPTIVE_FIELD,
        last=True,
    )
    assert not torch.allclose(short[:, :, 0], full[:, :, t])


def test_paper_preset_builds_at_its_sizes():
    cfg = load_config("mopoe-paper").model
    assert (cfg.image_size, cfg.latent_dim) == (128, 64)
    model = build_model(cfg)
    with torch.no_grad():
        mu, _ = model.nets["enc_lateral"](torch.zeros(1, 1, 128, 128))
        assert mu.shape == (1, 64) and model.nets["dec_frontal"](mu).shape == (1, 1, 128, 128)


@pytest.mark.slow
def test_paper_preset_steps():
    recs = make_phantom(4, sites=1, seed=1, image_size=128)
    model = build_model(load_config("mopoe-paper").model)
    model.setup(recs * 6)  # enough repeats for the vocabulary's min_count
    model.opts = model.make_optimizers()
    assert np.isfinite(model.train_step(recs[:2])["loss"])
    assert model.generate(1, seed=0)[0].image.shape == (128, 128)


@pytest.mark.slow
def test_tiny_preset_latents_carry_the_visible_labels(tmp_path):
    """Minutes: the whole mopoe-tiny run, then the Table 1 probe on its holdout."""
    from cxrsynth.checkpoint import load_checkpoint
    from cxrsynth.config import load_config
    from cxrsynth.models.mopoe.probe import chance_level, linear_probe_table
    from cxrsynth.progress import Progress
    from cxrsynth.train import load_run_data, train

    cfg = load_config("mopoe-tiny")
    model, _, _ = load_checkpoint(train(cfg, tmp_path / "ckpt", progress=Progress(quiet=True)))
    records = load_run_data(cfg)
    fit, test = [r for r in records if r.split == "train"], [r for r in records if r.split == "holdout"]
    for label in ("Cardiomegaly", "Pleural Effusion"):
        table = linear_probe_table(model, fit, test, label)
        # Both findings change the phantom images a lot: far above chance from every view.
        assert min(table[s] for s in ("F", "L", "LF", "LFT")) > chance_level(test, label) + 0.4, (label, table)
        assert table["LFT"] >= table["T"], (label, table)


def test_encode_subset_needs_the_subsets_modalities(records):
    model = tiny_model(records)
    with_lateral = [r for r in records if r.lateral is not None]
    lft = model.encode_subset(with_lateral, "LFT")
    assert lft.shape == (len(with_lateral), 8)
    assert not np.allclose(lft, model.encode_subset(with_lateral, "F"))
    with pytest.raises(InputError, match=r"r000000.*no lateral"):
        model.encode_subset(records, "LF")


def test_a_labels_modality_draws_label_sets_from_the_label_mix(records, tmp_path):
    """With labels among the modalities, generation's label sets come from the training label mix
    (and, federated, from the sites' counts), travel in the checkpoint, and every record made from
    a label set carries it; without one, the family draws none."""
    from cxrsynth.checkpoint import load_checkpoint, save_checkpoint
    from cxrsynth.config import config_from_dict
    from cxrsynth.data.records import finding_key

    assert tiny_model(records).draw_labels(4) is None
    model = tiny_model(records, modalities=("frontal", "lateral", "report", "labels"), label_pattern_min_count=2)
    drawn = model.draw_labels(400, seed=1)
    train_rate = np.mean([r.labels["Support Devices"] == 1 for r in records])
    drawn_rate = np.mean([d["Support Devices"] == 1 for d in drawn])
    assert abs(drawn_rate - train_rate) < 0.1, (drawn_rate, train_rate)
    assert model.draw_labels(5, seed=1) == model.draw_labels(5, seed=1) != model.draw_labels(5, seed=2)

    # The sites' counts replace the mix: every labelled study there has cardiomegaly.
    model.fit_label_counts({"labeled": 50, finding_key("Cardiomegaly", 1): 50})
    assert all(d["Cardiomegaly"] == 1 for d in model.draw_labels(20))

    cfg = config_from_dict({"model": model.config.model_dump()})
    save_checkpoint(tmp_path, model, cfg, {"step": 0})
    loaded, _, _ = load_checkpoint(tmp_path)
    assert loaded.draw_labels(20, seed=3) == model.draw_labels(20, seed=3)
    sets = loaded.draw_labels(3, seed=4)
    out = loaded.generate(3, [Condition(labels=s) for s in sets], seed=0)
    assert [{k: v for k, v in r.labels.items() if v is not None} for r in out] == [
        {k: v for k, v in s.items() if v is not None} for s in sets
    ]


def test_reports_keep_no_sentence_that_contradicts_their_label_set(records):
    """A generated report is the best of `report_candidates` samples against the record's label
    set, and with `drop_contradicting_sentences` no sentence it keeps states a finding the set
    contradicts; the choice and the filter are pure post-processing of sampled text."""
    from cxrsynth.data.records import empty_labels
    from cxrsynth.data.text import split_sentences
    from cxrsynth.models.mopoe.model import _consistent, _label_match

    target = {**empty_labels(), "Pleural Effusion": 0, "Pneumothorax": 0, "Cardiomegaly": 1}
    kept = _consistent(
        (
            "There is a large right pleural effusion. No pneumothorax. No acute cardiopulmonary process. "
            "No pleural effusion or pneumothorax. No pneumothorax.",
            "No pneumothorax. Cardiomegaly.",
        ),
        target,
    )
    # Contradictions go; so does a sentence that only repeats its section, not the impression's summary.
    assert kept == ("No pneumothorax. No pleural effusion or pneumothorax.", "No pneumothorax. Cardiomegaly.")
    said = label_report("FINDINGS: No pneumothorax.\nIMPRESSION: Cardiomegaly.")
    assert _label_match(said, target) > _label_match(label_report("IMPRESSION: No cardiomegaly."), target)

    def contradictions(out, sets):
        bad = 0
        for rec, labels in zip(out, sets):
            for sentence in split_sentences(rec.findings) + split_sentences(rec.impression):
                said = {k: v for k, v in label_report(sentence).items() if v is not None and k != "No Finding"}
                bad += any(labels.get(k) != v for k, v in said.items())
        return bad

    model = tiny_model(records, modalities=("frontal", "report", "labels"), text_length=32, label_pattern_min_count=1)
    for _ in range(60):
        model.train_step(records)
    sets = [{**empty_labels(), **r.labels} for r in records] * 2
    plain = model.generate(len(sets), [Condition(labels=s) for s in sets], seed=0)
    assert contradictions(plain, sets) > 0  # the test can tell: unfiltered samples contradict their sets
    model.config = model.config.model_copy(update={"report_candidates": 4, "drop_contradicting_sentences": True})
    chosen = model.generate(len(sets), [Condition(labels=s) for s in sets], seed=0)
    assert contradictions(chosen, sets) == 0
    assert sum(bool(r.report.strip()) for r in chosen) > len(sets) // 2


def test_the_report_expert_can_read_only_sentences_that_state_a_finding(records):
    """`report_sentences: findings` leaves demographics, sign-offs and placeholders out of what
    the report expert reads, of its vocabulary and of what sites count for a shared one."""
    from cxrsynth.models.mopoe.model import Model, report_of

    rec = records[0].with_(
        findings="[NAME] is a 93 year old male, MRN: [ID]. Small left pleural effusion. No pneumothorax.",
        impression="Effusion. Electronically signed by [NAME], MD.",
    )
    kept = report_of(tiny_config(report_sentences="findings"), rec)
    assert (kept.findings, kept.impression) == ("Small left pleural effusion. No pneumothorax.", "Effusion.")
    assert report_of(tiny_config(), rec) is rec
    assert "93" not in Model.vocabulary_text(tiny_config(report_sentences="findings"), rec)
    assert "93" in Model.vocabulary_text(tiny_config(), rec)

    plain = tiny_model([rec] * 4, vocab_min_count=1)
    clinical = tiny_model([rec] * 4, vocab_min_count=1, report_sentences="findings")
    assert "year" in plain.vocab.itos and "year" not in clinical.vocab.itos
    assert "effusion" in clinical.vocab.itos
    with pytest.raises(InputError, match="states a finding"):
        tiny_model(
            [rec.with_(findings="[NAME] is a 93 year old male.", impression="")] * 2, report_sentences="findings"
        )
