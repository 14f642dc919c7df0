"""Metrics now computed by well-kept libraries, checked against the hand-written code they replaced.

The OLD_* reference values below were computed by running the replaced hand-written code (commit
4df075a: `eval/text_metrics.py`, `eval/diversity.py`, the LDM's and EMIXER's `_update_ema`, the
mean pooling in `privacy/audit/text.py`) on exactly these fixed inputs; they are not hand-made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrsynth.eval.diversity import ms_ssim, n_scales
from cxrsynth.eval.fidelity import frechet_distance
from cxrsynth.eval.text_metrics import report_metrics

# ---- fixed inputs -----------------------------------------------------------------------------

CANDIDATES = [
    "The heart is enlarged. There is a small left pleural effusion.",
    "No pneumothorax. Lungs are clear.",
    "Heart size is normal; no focal consolidation, effusion or pneumothorax.",
    "Mild pulmonary edema with bilateral effusions.",
    "Support devices in place. the the the",
]
REFERENCES = [
    ["The heart is mildly enlarged. Small left pleural effusion.", "Cardiomegaly with a small left effusion."],
    ["Lungs are clear. No pneumothorax or effusion."],
    [
        "Heart size is normal. No focal consolidation, pleural effusion or pneumothorax.",
        "Normal heart size.",
        "No acute cardiopulmonary process.",
    ],
    ["Moderate pulmonary edema and small bilateral pleural effusions."],
    ["Endotracheal tube and nasogastric tube in place."],
]
SENTENCES = ["No pneumothorax.", "The heart is enlarged with a small left pleural effusion.", "Lungs are clear."]


def image_pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth bright blob on noise, and the same with more noise and a bright lower band."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 60 + 120 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.05) + rng.normal(0, 20, (h, w))
    other = base + rng.normal(0, 30, (h, w)) + 40 * (yy > 0.7 * h / max(h, w))
    return np.clip(base, 0, 255).astype(np.uint8), np.clip(other, 0, 255).astype(np.uint8)


def noise_ladder(size: int = 64, sigmas=(10, 25, 60), seed: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
    """An image and copies of it with growing noise: MS-SSIM falls along the ladder."""
    base, _ = image_pair(size, size, seed)
    rng = np.random.default_rng(seed)
    return base, [np.clip(base + rng.normal(0, s, base.shape), 0, 255).astype(np.uint8) for s in sigmas]


def tiny_sentence_model(folder: Path) -> Path:
    """A 2-layer BERT whose weights come from numpy's seeded generator (not torch's initialiser),
    with a word-level tokenizer over SENTENCES, saved as a plain transformers folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = sorted({w for s in SENTENCES for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(s.lower())})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=64,
    )
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    model = BertModel(cfg, add_pooling_layer=False)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                torch.as_tensor(
                    1.0 + rng.normal(0, 0.1, p.shape) if "LayerNorm.weight" in name else rng.normal(0, 0.3, p.shape),
                    dtype=torch.float32,
                )
            )
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


# ---- reference values from the replaced code (see the module docstring) -----------------------

OLD_REPORT_METRICS = {
    "bleu_1": 0.7437020080606683,
    "bleu_2": 0.637328810217321,
    "bleu_3": 0.51996731557824,
    "bleu_4": 0.39364569871330474,
    "rouge_l": 0.6408478227240098,
    "cider_d": 2.8031482141771695,
}
# shape: (MS-SSIM of image_pair(h, w), scales used)
OLD_MS_SSIM = {
    (16, 16): (0.7714080902467049, 1),
    (32, 32): (0.7999633160236239, 2),
    (64, 64): (0.7423379052215009, 3),
    (48, 96): (0.6812809429913738, 3),
    (100, 100): (0.7276384860374401, 4),
    (256, 256): (0.6847936144982193, 5),
}
OLD_MS_SSIM_LADDER = [0.9766783043507484, 0.8569929297700768, 0.5845541216581075]
# The EMA after steps 1..12 of constant-valued weights (EMA starts at 0, the UNet holds k at step k).
OLD_EMA = [0.8181818127632141, 1.704545497894287, 2.6013987064361572, 3.5004994869232178, 4.400199890136719, 5.3000874519348145,
           6.2000412940979, 7.100020408630371, 8.050010681152344, 9.025005340576172, 10.012502670288086, 11.006251335144043]  # fmt: skip
# EMIXER's average of G (g_ema=0.75, g_ema_start=3, d_steps=2) after G updates 1..8, G holding k at update k.
OLD_G_EMA = [1.0, 2.0, 3.0, 3.25, 3.6875, 4.265625, 4.94921875, 5.7119140625]
OLD_EMBED_FIRST4 = [
    [-0.08443968743085861, -0.20031441748142242, 0.21495062112808228, -0.22399036586284637],
    [-0.010965177789330482, -0.15842173993587494, 0.23568463325500488, -0.21381400525569916],
    [-0.0715777724981308, 0.015939855948090553, 0.08836182206869125, -0.3906343877315521],
]
OLD_EMBED_COSINES = [0.8133765459060669, 0.8814748525619507, 0.7417792081832886]


# ---- report metrics: pycocoevalcap -------------------------------------------------------------


def test_report_metrics_from_pycocoevalcap_match_the_replaced_code():
    m = report_metrics(CANDIDATES, REFERENCES)
    assert m["n"] == len(CANDIDATES)
    # ROUGE-L and CIDEr-D agree to the last bit; BLEU within pycocoevalcap's 1e-9/1e-15 guards
    # against division by zero (the replaced code had none).
    assert m["rouge_l"] == OLD_REPORT_METRICS["rouge_l"] and m["cider_d"] == OLD_REPORT_METRICS["cider_d"]
    for n in range(1, 5):
        assert m[f"bleu_{n}"] == pytest.approx(OLD_REPORT_METRICS[f"bleu_{n}"], abs=1e-9)


def test_report_metrics_print_nothing(capsys):
    report_metrics(CANDIDATES, REFERENCES)
    assert capsys.readouterr().out == ""


# ---- MS-SSIM: torchmetrics ---------------------------------------------------------------------


def test_ms_ssim_from_torchmetrics_stays_near_the_replaced_code():
    """torchmetrics averages the coarsest scale's SSIM over the whole (reflection-padded) image, the
    replaced code over the window's valid region only; with the old code changed to pad that one
    term the two agreed to 1e-8 on these inputs. The border's share of the coarsest scale, and so
    the difference, shrinks as images grow; scale counts and orderings are kept."""
    diffs = {}
    for (h, w), (old, scales) in OLD_MS_SSIM.items():
        a, b = image_pair(h, w)
        v = ms_ssim([a, b], [b, a])
        assert v[0] == pytest.approx(v[1])
        assert n_scales(min(h, w)) == scales
        diffs[(h, w)] = abs(float(v[0]) - old)
    assert diffs[(256, 256)] < 0.02
    squares = [diffs[(s, s)] for s in (32, 64, 100, 256)]
    assert squares == sorted(squares, reverse=True)
    base, noisy = noise_ladder()
    v = ms_ssim([base] * 3, noisy)
    assert list(v) == sorted(v, reverse=True)
    assert np.abs(v - OLD_MS_SSIM_LADDER).max() < 0.07


# ---- LDM EMA: diffusers' EMAModel --------------------------------------------------------------


def _constant_ema_run(model, steps: range) -> list[float]:
    out = []
    for k in steps:
        with torch.no_grad():
            for p in model.part("unet").parameters():
                p.fill_(float(k))
        model.steps_done[1] = k
        model._update_ema()
        values = torch.cat([p.flatten() for p in model.ema_unet.parameters()])
        assert torch.equal(values, values[0].expand_as(values))
        out.append(float(values[0]))
    return out


def test_ldm_ema_warm_up_from_diffusers_matches_the_replaced_code_and_resumes():
    from test_ldm import tiny_config

    from cxrsynth.models.ldm.model import Model

    torch.manual_seed(0)
    m = Model(tiny_config(ema_decay=0.5))
    with torch.no_grad():
        for p in m.ema_unet.parameters():
            p.fill_(0.0)
    assert _constant_ema_run(m, range(1, 7)) == pytest.approx(OLD_EMA[:6], abs=1e-6)
    # A model loaded from the state (keys `ema_unet.*`) goes on with the same averages and warm-up.
    state = m.state()
    assert any(k.startswith("ema_unet.") for k in state)
    resumed = Model(tiny_config(ema_decay=0.5))
    resumed.load_state(state)
    assert _constant_ema_run(resumed, range(7, 13)) == pytest.approx(OLD_EMA[6:], abs=1e-6)


def test_emixer_generator_average_from_diffusers_matches_the_replaced_code():
    from test_emixer import get_dummy_components

    model, _ = get_dummy_components(g_ema=0.75, g_ema_start=3, d_steps=2)
    avg = model.nets["generator_ema"]
    with torch.no_grad():
        for p in avg.parameters():
            p.fill_(0.0)
    seen = []
    for g_update in range(1, 9):
        model.step_count = 2 * g_update
        with torch.no_grad():
            for p in model.nets["generator"].parameters():
                p.fill_(float(g_update))
        model._update_ema()
        values = torch.cat([p.detach().flatten() for p in avg.parameters()])
        assert torch.equal(values, values[0].expand_as(values))
        seen.append(float(values[0]))
    assert seen == pytest.approx(OLD_G_EMA, abs=1e-6)


# ---- sentence embeddings: sentence-transformers -------------------------------------------------


def test_sentence_embeddings_match_the_replaced_mean_pooling(tmp_path):
    from cxrsynth.privacy.audit.text import embed_texts

    e = embed_texts(tiny_sentence_model(tmp_path / "enc"), SENTENCES)
    assert e.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(e[:, :4], OLD_EMBED_FIRST4, atol=1e-6)
    np.testing.assert_allclose([e[0] @ e[1], e[0] @ e[2], e[1] @ e[2]], OLD_EMBED_COSINES, atol=1e-6)


def test_sentence_embeddings_follow_the_folders_own_pooling_config(tmp_path):
    """A sentence-transformers folder that pools by its first ([CLS]) token is read that way."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoModel, AutoTokenizer

    from cxrsynth.privacy.audit.text import embed_texts

    plain = tiny_sentence_model(tmp_path / "plain")
    word = Transformer(
        str(plain), model_kwargs={"local_files_only": True}, processor_kwargs={"local_files_only": True}
    )
    SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "cls")]).save(str(tmp_path / "cls"))
    e = embed_texts(tmp_path / "cls", SENTENCES)
    tok = AutoTokenizer.from_pretrained(str(plain), local_files_only=True)
    with torch.no_grad():
        h = AutoModel.from_pretrained(str(plain), local_files_only=True)(
            **tok(SENTENCES, padding=True, return_tensors="pt")
        ).last_hidden_state
    np.testing.assert_allclose(e, torch.nn.functional.normalize(h[:, 0], dim=1).numpy(), atol=1e-5)
    assert np.abs(e - embed_texts(plain, SENTENCES)).max() > 1e-3


# ---- FID: the project's own, checked against torchmetrics --------------------------------------


class _Features(torch.nn.Module):
    """Hands torchmetrics' FID the features themselves."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.5, 1.0), (0.0, 2.0)])
def test_frechet_distance_agrees_with_torchmetrics(shift, scale):
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(7)
    mix = rng.normal(size=(8, 8))
    a = rng.normal(size=(300, 8)) @ mix
    b = scale * rng.normal(size=(250, 8)) @ mix + shift
    fid = FrechetInceptionDistance(feature=_Features(8))
    fid.update(torch.as_tensor(a), real=True)
    fid.update(torch.as_tensor(b), real=False)
    assert frechet_distance(a, b) == pytest.approx(float(fid.compute()), rel=1e-6, abs=1e-8)
