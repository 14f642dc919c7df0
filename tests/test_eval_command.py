"""`cxrsynth evaluate` end to end on small phantom datasets."""

import json

import numpy as np
import pytest
import torch
from test_eval_metrics import toy_records

from cxrsynth.cli import main
from cxrsynth.data.dataset import write_dataset
from cxrsynth.data.split import split_by_patient
from cxrsynth.eval.config import EvalConfig
from cxrsynth.eval.evaluate import run_evaluation


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    real = split_by_patient(toy_records(160, seed=0), 0.3)
    write_dataset(root / "real", real)
    good = [
        r.with_(
            record_id=f"syn-{i}", patient_id=f"syn-{i}", site="synthetic", split="", provenance="family=phantom;seed=1"
        )
        for i, r in enumerate(toy_records(80, seed=1, prefix="g"))
    ]
    write_dataset(root / "good", good)
    # Labels shuffled across records: images and reports no longer say what the labels say.
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(good))
    shuffled = [g.with_(labels=good[j].labels) for g, j in zip(good, perm)]
    write_dataset(root / "shuffled", shuffled)
    return root


CFG = EvalConfig(image_size=32, classifier_width=8, classifier_steps=60, batch_size=32)


def test_evaluate_command_writes_metrics_and_page(datasets, capsys):
    out = datasets / "out"
    code = main(
        [
            "--quiet",
            "evaluate",
            "--synthetic",
            str(datasets / "good"),
            "--real",
            str(datasets / "real"),
            "--out",
            str(out),
            "--classifier-steps",
            "40",
        ]
    )
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["fidelity"]["fid_synthetic_vs_holdout"] >= 0 and "classifier trained on" in m["fidelity"]["extractor"]
    assert set(m["utility"]["arms"]) == {"real", "synthetic", "real+synthetic"}
    assert m["diversity"]["synthetic"]["pairs"] > 0
    assert m["reports"]["references"] == "label-matched" and 0 <= m["reports"]["bleu_4"] <= 1
    assert m["synthetic"]["families"] == ["phantom"]
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "Sample studies" in page
    printed = capsys.readouterr().out
    assert "FID synthetic vs real holdout" in printed and "macro AUROC" in printed


def test_shuffled_labels_lose_utility_and_agreement(datasets, tmp_path):
    good = run_evaluation(datasets / "good", datasets / "real", tmp_path / "g", CFG)
    bad = run_evaluation(datasets / "shuffled", datasets / "real", tmp_path / "b", CFG)
    g_auc = good["utility"]["arms"]["synthetic"]["auroc"]["Cardiomegaly"]
    b_auc = bad["utility"]["arms"]["synthetic"]["auroc"]["Cardiomegaly"]
    assert g_auc > 0.8 and b_auc < g_auc - 0.2
    if "label_agreement" in good:  # the labeler is another engineer's module
        assert (
            bad["label_agreement"]["synthetic"]["exact_agreement"]
            < good["label_agreement"]["synthetic"]["exact_agreement"]
        )
    assert bad["reports"]["n"] >= 0


def test_paired_references_are_used(datasets, tmp_path):
    from cxrsynth.data.dataset import read_dataset
    from cxrsynth.eval.evaluate import reference_pairs

    real, _ = read_dataset(datasets / "real")
    syn = [
        real[0].with_(record_id="syn-0", provenance=f"family=mopoe;reference={real[0].record_id}"),
        real[1].with_(record_id="syn-1", provenance=f"family=mopoe;reference={real[1].record_id}"),
    ]
    mode, cands, refs = reference_pairs(syn, real, 5)
    assert mode == "paired" and refs == [[real[0].report], [real[1].report]]


def test_bad_inputs_exit_2_with_the_file_named(datasets, tmp_path, capsys):
    code = main(
        [
            "--quiet",
            "evaluate",
            "--synthetic",
            str(tmp_path / "nothing"),
            "--real",
            str(datasets / "real"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "manifest.csv" in capsys.readouterr().err
    code = main(
        [
            "--quiet",
            "evaluate",
            "--synthetic",
            str(datasets / "good"),
            "--real",
            str(datasets / "real"),
            "--out",
            str(tmp_path / "o"),
            "--seeds",
            "0",
        ]
    )
    assert code == 2 and "seeds" in capsys.readouterr().err
    args = [
        "--quiet",
        "evaluate",
        "--synthetic",
        str(datasets / "good"),
        "--real",
        str(datasets / "real"),
        "--out",
        str(tmp_path / "o"),
        "--extractor",
        str(tmp_path / "w.pt"),
        "--classifier-steps",
        "1",
    ]
    # A missing extractor is bad input, said before any work (issue 19) ...
    assert main(args) == 2 and "w.pt" in capsys.readouterr().err
    # ... an extractor file that does not load fails its stage, named, and the rest still runs.
    (tmp_path / "w.pt").write_bytes(b"not a model")
    code = main(args)
    assert code == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["status"]["fidelity"]["status"] == "failed" and "w.pt" in m["status"]["fidelity"]["detail"]
