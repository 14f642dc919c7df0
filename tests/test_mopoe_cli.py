"""MoPoE end to end through the command line: train, generate, the linear-probe table."""

import pytest
import torch

from cxrsynth.cli import main
from cxrsynth.data.dataset import read_dataset
from cxrsynth.data.labeler import label_report
from cxrsynth.models.mopoe.fusion import TABLE_ORDER


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_run(path, n: int, steps: int, batch: int, extra: str = "", modalities: str = "[frontal, lateral, report]"):
    """The paper's three modalities unless `modalities` says otherwise (the preset adds labels)."""
    path.write_text(
        "preset: mopoe-tiny\n"
        "model: {image_size: 16, latent_dim: 8, channels: 8, text_length: 64, text_channels: 16, embed_dim: 8, vocab_min_count: 2, "
        f"modalities: {modalities}}}\n"
        f"data: {{phantom: {{n: {n}, image_size: 32}}}}\n"
        f"train: {{steps: {steps}, batch_size: {batch}}}\n" + extra,
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("mopoe")
    cfg = tiny_run(root / "run.yaml", n=80, steps=12, batch=16)
    out = root / "ckpt"
    assert main(["--quiet", "train", "--config", str(cfg), "--out", str(out)]) == 0
    return out


def test_train_then_generate(checkpoint, tmp_path):
    for name in ("run.yaml", "model.safetensors", "extra.json", "train_state.json", "optimizers.pt", "losses.jsonl"):
        assert (checkpoint / name).is_file(), name
    out = tmp_path / "syn"
    assert (
        main(["--quiet", "generate", "--checkpoint", str(checkpoint), "--n", "5", "--out", str(out), "--seed", "3"])
        == 0
    )
    records, report = read_dataset(out)
    assert len(records) == 5 and report.skipped == 0
    for r in records:
        assert r.image.shape == (16, 16) and r.lateral is not None
        assert "family=mopoe" in r.provenance
        assert r.labels == label_report(r.report)
    # MoPoE samples without guidance: the setting is refused by name, not ignored.
    bad = ["--quiet", "generate", "--checkpoint", str(checkpoint), "--n", "2", "--out", str(tmp_path / "g")]
    assert main([*bad, "--guidance", "2"]) == 2
    assert not (tmp_path / "g").exists()


def test_resume_continues_the_step_count(checkpoint):
    assert (
        main(
            [
                "--quiet",
                "train",
                "--config",
                str(checkpoint.parent / "run.yaml"),
                "--out",
                str(checkpoint),
                "--steps",
                "14",
                "--resume",
            ]
        )
        == 0
    )
    import json

    assert json.loads((checkpoint / "train_state.json").read_text())["step"] == 14


def test_label_conditions_are_refused_with_exit_2(checkpoint, tmp_path, capsys):
    from cxrsynth.data.dataset import write_dataset
    from cxrsynth.data.phantom import make_phantom

    real = tmp_path / "real"
    write_dataset(real, make_phantom(4, image_size=32))
    code = main(
        [
            "--quiet",
            "generate",
            "--checkpoint",
            str(checkpoint),
            "--n",
            "2",
            "--out",
            str(tmp_path / "x"),
            "--labels-from",
            str(real),
        ]
    )
    assert code == 2 and "Label conditions need labels among model.modalities" in capsys.readouterr().err


def test_the_presets_labels_modality_generates_from_label_sets(tmp_path):
    """mopoe-tiny's labels modality: `generate --labels-from` conditions on a dataset's label sets,
    and each synthetic record carries the set it was made from."""
    from cxrsynth.data.dataset import write_dataset
    from cxrsynth.data.phantom import make_phantom

    cfg = tiny_run(tmp_path / "run.yaml", n=40, steps=4, batch=8, modalities="[frontal, lateral, report, labels]")
    ckpt = tmp_path / "ckpt"
    assert main(["--quiet", "train", "--config", str(cfg), "--out", str(ckpt)]) == 0
    real = make_phantom(4, image_size=32, seed=5)
    write_dataset(tmp_path / "real", real)
    out = tmp_path / "syn"
    args = ["--quiet", "generate", "--checkpoint", str(ckpt), "--n", "4", "--out", str(out)]
    assert main([*args, "--labels-from", str(tmp_path / "real")]) == 0
    records, _ = read_dataset(out)
    stated = [{k: v for k, v in r.labels.items() if v is not None} for r in records]
    assert sorted(map(str, stated)) == sorted(str({k: v for k, v in r.labels.items() if v is not None}) for r in real)


def test_probe_table_prints_every_subset(checkpoint, capsys, tmp_path):
    from cxrsynth.models.mopoe.probe import main as probe_main

    page = tmp_path / "probe.html"
    assert (
        probe_main(
            ["--checkpoint", str(checkpoint), "--label", "Finding", "--label", "Support Devices", "--html", str(page)]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["label", *TABLE_ORDER, "random"]
    assert lines[2].startswith("Finding") and lines[3].startswith("Support Devices")
    values = [float(v) for v in lines[3].split()[2:]]
    assert len(values) == 8 and all(0.0 <= v <= 1.0 for v in values)
    html = page.read_text(encoding="utf-8")
    assert "Linear probe" in html and html.count("data:image/png;base64,") >= 3


def test_train_with_dp_sgd_writes_a_ledger(tmp_path):
    import json

    cfg = tiny_run(
        tmp_path / "dp.yaml",
        n=40,
        steps=4,
        batch=8,
        extra="dp: {enabled: true, noise_multiplier: 1.0, max_grad_norm: 1.0}\n",
    )
    out = tmp_path / "ckpt"
    assert main(["--quiet", "train", "--config", str(cfg), "--out", str(out)]) == 0
    ledger = json.loads((out / "train_state.json").read_text())["privacy_ledger"]
    assert ledger["epsilon"] > 0 and set(ledger["networks"]) == {
        f"{d}_{m}" for d in ("enc", "dec") for m in ("frontal", "lateral", "report")
    }
