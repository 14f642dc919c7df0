"""Pretraining on public data and fine-tuning from the base (issue 14): the base card and its
hash, the pin every site checks, what fine-tuning freezes, and the record of the base in the
checkpoint and the privacy ledger."""

import numpy as np
import pytest

from cxrsynth.checkpoint import load_checkpoint
from cxrsynth.cli import main
from cxrsynth.config import load_config
from cxrsynth.pretrained import (
    NO_PRIVACY_COST,
    apply_finetune,
    base_sha256,
    load_base,
    model_sha256,
    pinned,
    read_card,
)

TINY = (
    "preset: mopoe-tiny\n"
    "model: {image_size: 16, latent_dim: 8, channels: 8, text_length: 64, text_channels: 16, embed_dim: 8, vocab_min_count: 2}\n"
    "data: {phantom: {n: 60, image_size: 32}}\n"
    "train: {steps: 3, batch_size: 8, num_threads: 1}\n"
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    (root / "run.yaml").write_text(TINY, encoding="utf-8")
    out = root / "base"
    assert main(["--quiet", "pretrain", "--config", str(root / "run.yaml"), "--phantom", "40", "--out", str(out)]) == 0
    return out


def _run(base, tmp_path, extra: str = "") -> "object":
    path = tmp_path / "finetune.yaml"
    path.write_text(
        TINY + f"train: {{steps: 2, batch_size: 8, num_threads: 1, init_from: '{base}'}}\n" + extra, encoding="utf-8"
    )
    return path


def test_pretrain_writes_a_base_card_whose_hash_is_recomputed_from_the_files(base):
    card = read_card(base)
    assert card.family == "mopoe" and card.records == 40 and card.privacy_cost == NO_PRIVACY_COST
    assert "phantom cohort" in card.pretrained_on and "no hospital's data" in card.pretrained_on
    assert base_sha256(base) == card.sha256
    # The public cohort draws its own acquisition styles: none of the hospitals' site names.
    model, cfg, state = load_checkpoint(base)
    assert state["base"]["sha256"] == card.sha256 and not cfg.dp.enabled


def test_pretrain_refuses_a_non_empty_out_and_a_config_with_dp(base, tmp_path, capsys):
    assert main(["--quiet", "pretrain", "--config", "mopoe-tiny", "--phantom", "10", "--out", str(base)]) == 2
    assert "not empty" in capsys.readouterr().err
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.errors import InputError
    from cxrsynth.pretrained import pretrain

    cfg = load_config("mopoe-tiny", {"dp": {"enabled": True}})
    with pytest.raises(InputError, match="without DP"):
        pretrain(cfg, make_phantom(4, sites=1, image_size=16), tmp_path / "b", "x")


def test_fine_tuning_starts_from_the_base_and_records_it(base, tmp_path):
    out = tmp_path / "ft"
    # Only the report decoder is trained: every other weight must stay the base's, bit for bit.
    cfg_path = _run(base, tmp_path, "")
    text = cfg_path.read_text().replace("init_from:", "finetune: ['dec_report.*'], init_from:")
    cfg_path.write_text(text)
    assert main(["--quiet", "train", "--config", str(cfg_path), "--out", str(out)]) == 0
    tuned, _, state = load_checkpoint(out)
    ref, _, _ = load_checkpoint(base)
    a, b = tuned.state(), ref.state()
    changed = {k for k in a if not np.array_equal(a[k], b[k])}
    assert changed and all(k.startswith("dec_report.") for k in changed)
    assert state["base"]["sha256"] == read_card(base).sha256 and state["base"]["privacy_cost"] == NO_PRIVACY_COST


def test_a_run_refuses_a_base_that_differs_from_its_pin_or_from_its_card(base, tmp_path, capsys):
    wrong = "0" * 64
    cfg_path = _run(base, tmp_path)
    cfg_path.write_text(cfg_path.read_text().replace("init_from:", f"init_sha256: '{wrong}', init_from:"))
    assert main(["--quiet", "train", "--config", str(cfg_path), "--out", str(tmp_path / "a")]) == 1
    assert "the run pins " + wrong in capsys.readouterr().err
    # A base whose weights were changed after pretraining no longer matches its own card.
    import shutil

    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad-base"
    shutil.copytree(base, bad)
    weights = load_file(str(bad / "model.safetensors"))
    key = next(iter(weights))
    weights[key] = weights[key] + 1
    save_file(weights, str(bad / "model.safetensors"))
    cfg_path.write_text(_run(bad, tmp_path).read_text())
    assert main(["--quiet", "train", "--config", str(cfg_path), "--out", str(tmp_path / "b")]) == 1
    assert "changed after pretraining" in capsys.readouterr().err


def test_the_run_config_is_pinned_to_the_base_and_a_shape_change_is_named(base):
    cfg = load_config(
        "mopoe-tiny",
        {
            "model": {
                "image_size": 16,
                "latent_dim": 8,
                "channels": 8,
                "text_length": 64,
                "text_channels": 16,
                "embed_dim": 8,
            },
            "train": {"init_from": str(base)},
        },
    )
    assert pinned(cfg).train.init_sha256 == read_card(base).sha256
    model, _ = load_base(pinned(cfg))
    assert model_sha256(model) == read_card(base).sha256
    from cxrsynth.errors import InputError

    wider = cfg.model_copy(update={"model": cfg.model.model_copy(update={"channels": 16})})
    with pytest.raises(InputError, match="differs from the base in: channels"):
        load_base(wider)


def test_finetune_patterns_freeze_the_rest_and_dp_protects_only_what_trains(base):
    from cxrsynth.privacy.dp import privatize

    cfg = load_config("mopoe-tiny", {"train": {"init_from": str(base)}, "dp": {"enabled": True}})
    model, _, _ = load_checkpoint(base)
    trainable, total = apply_finetune(model, ("enc_frontal.*", "dec_frontal.*"))
    assert 0 < trainable < total
    assert all(
        not p.requires_grad
        for n, net in model.nets.items()
        if n not in ("enc_frontal", "dec_frontal")
        for p in net.parameters()
    )
    model.opts = model.make_optimizers()
    privatize(model, cfg, 0.1)
    from opacus import GradSampleModule

    wrapped = {n for n, net in model.nets.items() if isinstance(net, GradSampleModule)}
    assert wrapped == {"enc_frontal", "dec_frontal"}
    from cxrsynth.errors import InputError

    fresh, _, _ = load_checkpoint(base)
    with pytest.raises(InputError, match="no parameter of the mopoe model matches"):
        apply_finetune(fresh, ("unet.*",))


# A child process: the crash this guards against is a segmentation fault, which would end pytest.
FINETUNE_ATTENTION = """
import torch
from cxrsynth.config import load_config
from cxrsynth.data.phantom import make_phantom
from cxrsynth.models import build_model
from cxrsynth.pretrained import apply_finetune
from cxrsynth.train import seed_everything

seed_everything(0)
cfg = load_config("ldm-tiny", {"model": {"vae_steps": 0}})
records = make_phantom(8, sites=1, seed=0, image_size=cfg.model.image_size, lateral=False)
model = build_model(cfg.model)
model.setup(records)
trainable, total = apply_finetune(model, ("unet.*attentions*",))
model.opts = model.make_optimizers()
before = {k: p.detach().clone() for k, p in model.nets["unet"].named_parameters()}
model.train()
for _ in range(2):
    model.train_step(records[:4])
moved = {k for k, p in model.nets["unet"].named_parameters() if not torch.equal(p, before[k])}
assert moved and all(".attentions." in k for k in moved), sorted(moved)
print("trained", trainable, "of", total)
"""


def test_fine_tuning_the_attention_layers_alone_trains_them_and_nothing_else(tmp_path):
    # The first attention block's norm takes the output of frozen layers: an input that needs no
    # gradient, which torch's CPU kernels may lay out channels-last.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FINETUNE_ATTENTION], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("trained ")


def test_a_site_refuses_round_one_weights_that_are_not_the_pinned_base(base, tmp_path):
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from cxrsynth.client.app import make_app
    from cxrsynth.data.dataset import write_dataset
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.privacy.wire import round_config, to_arrays

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 11, 0
    root = tmp_path / "site"
    write_dataset(root, [r.with_(site="site-a") for r in make_phantom(n=24, sites=1, seed=5, image_size=16)])
    cfg = pinned(
        load_config(
            "mopoe-tiny",
            {
                "model": {
                    "image_size": 16,
                    "latent_dim": 8,
                    "channels": 8,
                    "text_length": 64,
                    "text_channels": 16,
                    "embed_dim": 8,
                },
                "train": {"init_from": str(base), "batch_size": 4, "num_threads": 1},
                "federation": {"local_steps": 1},
                "dp": {"enabled": True, "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_budget": 10.0},
            },
        )
    )
    model, _ = load_base(cfg)
    ctx = Context(
        run_id=11, node_id=1, node_config={"data-path": str(root), "site": "site-a"}, state=RecordDict(), run_config={}
    )

    def round_one(arrays):
        conf = round_config(cfg, model.extra_state())
        conf["server-round"] = 1
        return make_app()(
            Message(RecordDict({"arrays": to_arrays(arrays), "config": conf}), dst_node_id=1, message_type="train"),
            ctx,
        )

    ok = round_one(model.state())
    assert not ok.has_error(), ok.error.reason
    other = {k: (v + 1 if v.dtype.kind == "f" else v) for k, v in model.state().items()}
    refused = round_one(other)
    assert refused.has_error() and "not to the base " + cfg.train.init_sha256 in refused.error.reason


def test_finetune_lr_sets_the_step_size_of_a_run_from_a_base(base, tmp_path):
    """A fresh Adam moves each weight by about its learning rate from the first step: at
    finetune_lr 1e-9 the fine-tuned weights stay within a hair of the base; at the preset's rate
    they do not."""
    ref = load_checkpoint(base)[0].state()

    def largest_change(extra: str, name: str) -> float:
        (tmp_path / name).mkdir()
        cfg_path = _run(base, tmp_path / name)
        cfg_path.write_text(cfg_path.read_text().replace("init_from:", f"{extra}init_from:"))
        assert main(["--quiet", "train", "--config", str(cfg_path), "--out", str(tmp_path / name / "out")]) == 0
        tuned = load_checkpoint(tmp_path / name / "out")[0].state()
        return max(float(np.abs(tuned[k] - ref[k]).max()) for k in ref if np.issubdtype(ref[k].dtype, np.floating))

    assert largest_change("finetune_lr: 1.0e-9, ", "tiny-lr") < 1e-6
    assert largest_change("", "preset-lr") > 1e-4


def test_the_public_phantom_cohort_is_published_de_identified():
    """Its reports carry typed tags where the hospitals' carry names, dates and numbers, and no
    header PHI: a base must not learn PHI-shaped text to write into a release. Published in
    a public label vocabulary (NIH's), the labels it has no source for are not stated, although
    the images show them."""
    from cxrsynth.data.phantom import make_phantom
    from cxrsynth.pretrained import public_phantom

    cfg = load_config("mopoe-tiny", {"data": {"phantom": {"image_size": 16}}})
    public, source = public_phantom(cfg, 60, seed=3)
    assert "de-identified" in source
    from cxrsynth.pretrained import PUBLIC_SITE_OFFSET, PUBLIC_STYLES

    raw = make_phantom(
        60,
        sites=PUBLIC_STYLES,
        seed=3,
        image_size=16,
        lateral=cfg.data.phantom.lateral,
        site_offset=PUBLIC_SITE_OFFSET,
    )
    assert "all 14 labels" in source
    assert [r.labels for r in public] == [r.labels for r in raw]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(public, raw))
    # Published in NIH ChestX-ray14's vocabulary: the three labels it has no source for are not
    # stated, the others as drawn, the images the same.
    nih, source_nih = public_phantom(cfg, 60, seed=3, vocabulary="nih")
    unstated = ("Enlarged Cardiomediastinum", "Fracture", "Support Devices")
    assert "not stated: Enlarged Cardiomediastinum, Fracture, Support Devices" in source_nih
    assert all(r.labels[n] is None for r in nih for n in unstated)
    assert sum(r.labels["Support Devices"] == 1 for r in raw) > 0
    for a, b in zip(nih, raw):
        assert {k: v for k, v in a.labels.items() if k not in unstated} == {
            k: v for k, v in b.labels.items() if k not in unstated
        }
        assert np.array_equal(a.image, b.image)
    values = {v for r in raw for k, v in r.phi_meta.items() if len(str(v)) > 3}
    text = " ".join(r.report for r in public)
    assert not any(r.phi_meta for r in public)
    assert not [v for v in values if str(v) in text]
    assert "[NAME]" in text and "[DATE]" in text and "[ID]" in text
