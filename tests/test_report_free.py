"""A labelled image folder without reports, end to end: the commands of the README section "Bring
a labelled image folder without reports" on a folder the test makes (PNGs and a CSV of NIH-style
labels), and the audit's "no reports" statuses at the site and through the federated wire format."""

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from cxrsynth.cli import main
from cxrsynth.config import AuditPolicy
from cxrsynth.data.dataset import read_dataset, save_png
from cxrsynth.data.label_maps import NIH_TO_CHEXPERT
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import Record
from cxrsynth.privacy.audit.combine import combine
from cxrsynth.privacy.audit.protocol import answer_to_record, record_to_answer
from cxrsynth.privacy.audit.run import audit_records, finish_audit
from cxrsynth.privacy.audit.site import site_audit

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### Bring a labelled image folder without reports"
TEXT_CHECKS = ("text_rare_ngrams", "text_near_duplicates", "text_embedding")
# The NIH finding each phantom label is written as (the reverse of the ingest mapping).
AS_NIH = {t: s for s, t in reversed(list(NIH_TO_CHEXPERT.items())) if t}


def readme_commands() -> list[list[str]]:
    """The `cxrsynth` lines of the section's bash block, as argument lists."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("cxrsynth ")]


def make_site_folder(root: Path, n: int, seed: int = 0) -> None:
    """site/labels.csv (image_path, Patient ID, Patient Age, NIH's 15 findings) and site/png/."""
    site = root / "site"
    recs = make_phantom(n, sites=1, seed=seed, image_size=32, lateral=False)
    names = list(NIH_TO_CHEXPERT)
    site.mkdir(parents=True, exist_ok=True)
    with open(site / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "Patient ID", "Patient Age", *names])
        for i, r in enumerate(recs):
            save_png(r.image, site / f"png/{i:04d}.png")
            positive = {AS_NIH[k] for k, v in r.labels.items() if v == 1 and k in AS_NIH}
            w.writerow([f"png/{i:04d}.png", r.patient_id, 40 + i % 50, *(int(s in positive) for s in names)])


# Speed only: the README's commands with fewer steps, samples and classifier steps appended
# (argparse keeps the last value of an option).
def _fast(root: Path) -> dict[tuple[str, ...], list[str]]:
    (root / "fast-ldm.yaml").write_text("preset: ldm-tiny\nmodel: {vae_steps: 3, sample_steps: 3}\n", encoding="utf-8")
    (root / "fast-fl.yaml").write_text(
        "preset: ldm-tiny\nmodel: {vae_steps: 2, sample_steps: 3}\nfederation: {sites: 2, partition: iid, rounds: 2, local_steps: 3, min_sites: 2}\n",
        encoding="utf-8",
    )
    # A few synthetic samples cannot narrow the closeness and membership intervals, and the tiny
    # model's images carry no label yet: the release below is the report-free one, not a good one.
    # The 30 images of a 6-step model sit near one or two references, so the closeness check is the
    # bound (at 1.0), not the permutation test, whose verdict would turn on where those few fall.
    (root / "fast-policy.yaml").write_text(
        "fidelity_steps: 30\ncloseness_test: upper_bound\nmax_closeness_upper: 1.0\nmax_mia_auc_upper: 1.0\nskip: [label_fidelity]\n",
        encoding="utf-8",
    )
    return {
        ("train",): ["--config", "fast-ldm.yaml", "--steps", "6"],
        ("fl", "simulate"): ["--config", "fast-fl.yaml"],
        ("generate",): ["--n", "30"],
        ("evaluate",): ["--classifier-steps", "20"],
        ("audit",): ["--policy", "fast-policy.yaml"],
    }


@pytest.mark.long
def test_readme_commands_take_a_report_free_folder_from_ingest_to_release(tmp_path, monkeypatch, capsys):
    # 200 studies: the patient split draws about 40 holdout records (the audit calibrates on 20 or more).
    make_site_folder(tmp_path, 200)
    monkeypatch.chdir(tmp_path)
    fast = _fast(tmp_path)
    commands = readme_commands()
    assert [c[0] for c in commands] == ["data", "train", "fl", "generate", "evaluate", "release", "audit", "release"]
    for args in commands:
        extra = next((v for k, v in fast.items() if tuple(args[: len(k)]) == k), [])
        assert main(["--quiet", *args, *extra]) == 0, f"cxrsynth {' '.join(args + extra)}: {capsys.readouterr().err}"

    report = json.loads(Path("site-data/ingest_report.json").read_text())
    assert report["labels"]["vocabulary"] == "nih" and report["with_report_text"] == 0 and report["with_labels"] == 200
    real, _ = read_dataset("site-data")
    assert not any(r.report for r in real) and sum(r.labels["Pleural Effusion"] == 1 for r in real) > 0
    assert (Path("runs/rf-fl") / "run.yaml").is_file()

    metrics = json.loads(Path("runs/rf-eval/metrics.json").read_text())
    assert metrics["status"]["reports"]["status"] == metrics["status"]["label_agreement"]["status"] == "no reports"
    assert "reports" not in metrics and metrics["utility"]["arms"]["synthetic"]["macro_auroc"] is not None
    # On the page those two parts are marked as neither passed nor failed; the others passed.
    page = Path("runs/rf-eval/index.html").read_text()
    rows = re.findall(r'<tr class="(\w+)"><td>([^<]+)</td><td>([^<]+)</td>', page)
    assert {name: cls for cls, name, status in rows if status == "no reports"} == {
        "reports": "warn",
        "label_agreement": "warn",
    }
    assert rows and all(cls == "ok" for cls, _, status in rows if status == "ok")
    assert metrics["fidelity"]["fid_synthetic_vs_holdout"] is not None

    checks = json.loads(Path("runs/rf-audit/audit.json").read_text())["checks"]
    for name in TEXT_CHECKS:
        assert (
            checks[name]["passed"]
            and checks[name]["status"] == "no_reports"
            and "no training report to leak" in checks[name]["note"]
        )
    # The LDM writes the label sentence it was prompted with: that text is scanned and read.
    assert checks["phi"]["status"] == "ran" and checks["report_labels"]["status"] == "ran"
    assert all(checks[n]["status"] == "ran" for n in ("image_copies", "image_closeness", "membership"))
    card = Path("runs/rf-release/DATASET_CARD.md").read_text()
    assert "sentences written from the labels (not reports: the sites' data held none)" in card
    assert "Reports were de-identified" not in card


def _bare(records: list[Record]) -> list[Record]:
    return [r.with_(findings="", impression="") for r in records]


@pytest.fixture(scope="module")
def sets():
    """(synthetic, train, holdout) without any text: the synthetic set is the holdout's images
    with their own labels, so images carry their labels (label fidelity can pass)."""
    recs = _bare(make_phantom(160, sites=1, seed=5, image_size=32, lateral=False))
    train, holdout = recs[:110], recs[110:]
    synthetic = [
        r.with_(record_id=f"syn{i}", patient_id=f"synp{i}", study_id=f"syns{i}", site="synthetic")
        for i, r in enumerate(holdout)
    ]
    return synthetic, train, holdout


POLICY = AuditPolicy(
    fidelity_steps=60,
    min_fidelity_positives=3,
    min_fidelity_real_positives=5,
    max_closeness_upper=1.0,
    skip=("membership",),
)


def test_audit_without_any_report_says_no_reports_and_still_runs_the_image_checks(sets):
    synthetic, train, holdout = sets
    audit, _ = audit_records(synthetic, train, holdout, POLICY)
    checks = audit["checks"]
    for name in (*TEXT_CHECKS, "phi", "report_labels"):
        assert checks[name]["status"] == "no_reports" and checks[name]["passed"] and checks[name]["note"], name
    assert "nothing to scan" in checks["phi"]["note"]
    assert checks["image_copies"]["status"] == "ran" and checks["image_closeness"]["status"] == "ran"
    assert checks["label_fidelity"]["status"] == "ran" and checks["label_fidelity"]["macro_auroc"] > 0.6


def test_text_checks_run_when_a_site_has_reports_and_fail_closed_for_a_site_that_does_not_say(sets):
    synthetic, train, holdout = sets
    with_one_report = train[:-1] + [train[-1].with_(findings="Heart size is normal. No pleural effusion.")]
    answer, _ = site_audit(synthetic, with_one_report, holdout, POLICY, site="a")
    assert answer["n_train_reports"] == 1 and "rare_ngrams" in answer and "near_duplicates" in answer
    bare, _ = site_audit(synthetic, train, holdout, POLICY, site="b")
    assert bare["n_train_reports"] == 0 and "rare_ngrams" not in bare
    checks = combine([answer, bare], POLICY)["checks"]
    assert checks["text_rare_ngrams"]["status"] == "ran" and checks["text_near_duplicates"]["status"] == "ran"
    older = {k: v for k, v in bare.items() if k != "n_train_reports"}  # a site that does not send the count
    checks = combine([older], POLICY)["checks"]
    assert not checks["text_rare_ngrams"]["passed"] and checks["text_rare_ngrams"]["status"] == "skipped"


def test_the_no_reports_count_crosses_the_federated_wire_format(sets):
    synthetic, train, holdout = sets
    answer, _ = site_audit(
        synthetic, train, holdout, POLICY.model_copy(update={"skip": ("membership", "label_fidelity")}), site="a"
    )
    metrics = answer_to_record(answer, synthetic)
    assert metrics["n_train_reports"] == 0 and all(isinstance(v, (int, float, list)) for v in metrics.values())
    back = record_to_answer(metrics, synthetic, "node1")
    audit = finish_audit([back], synthetic, POLICY.model_copy(update={"skip": ("membership", "label_fidelity")}))
    assert all(audit["checks"][n]["status"] == "no_reports" for n in TEXT_CHECKS)


def test_synthetic_text_from_a_report_free_model_is_still_scanned_and_read(sets):
    synthetic, train, holdout = sets
    written = [
        r.with_(
            findings="There is a pleural effusion."
            if r.labels.get("Pleural Effusion") == 1
            else "No pleural effusion."
        )
        for r in synthetic
    ]
    audit, _ = audit_records(
        written, train, holdout, POLICY.model_copy(update={"skip": ("membership", "label_fidelity")})
    )
    checks = audit["checks"]
    assert checks["phi"]["status"] == "ran" and checks["report_labels"]["status"] == "ran"
    assert checks["text_rare_ngrams"]["status"] == "no_reports"  # no training report, nothing to leak


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, model", [("emixer-tiny", "{reports: none}"), ("mopoe-tiny", "{modalities: [frontal, labels]}")]
)
def test_report_free_emixer_and_mopoe_federate_generate_evaluate_and_audit(tmp_path, monkeypatch, preset, model):
    make_site_folder(tmp_path, 200)
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "--quiet",
                "data",
                "ingest",
                "--source",
                "manifest",
                "--path",
                "site/labels.csv",
                "--labels",
                "nih",
                "--ignore-columns",
                "Patient Age",
                "--out",
                "site-data",
            ]
        )
        == 0
    )
    Path("fl.yaml").write_text(
        f"preset: {preset}\nmodel: {model}\nfederation: {{sites: 2, partition: iid, rounds: 2, local_steps: 3, min_sites: 2}}\n",
        encoding="utf-8",
    )
    assert main(["--quiet", "fl", "simulate", "--config", "fl.yaml", "--data", "site-data", "--out", "fl"]) == 0
    assert (
        main(["--quiet", "generate", "--checkpoint", "fl", "--n", "30", "--out", "syn", "--labels-from", "site-data"])
        == 0
    )
    syn, _ = read_dataset("syn")
    assert not any(r.report for r in syn) and all(r.has_labels() for r in syn)
    assert (
        main(
            [
                "--quiet",
                "evaluate",
                "--synthetic",
                "syn",
                "--real",
                "site-data",
                "--out",
                "eval",
                "--classifier-steps",
                "20",
            ]
        )
        == 0
    )
    Path("policy.yaml").write_text("fidelity_steps: 30\n", encoding="utf-8")
    assert main(
        [
            "--quiet",
            "audit",
            "--synthetic",
            "syn",
            "--train",
            "site-data",
            "--holdout",
            "site-data",
            "--checkpoint",
            "fl",
            "--policy",
            "policy.yaml",
            "--out",
            "audit",
        ]
    ) in (0, 1)
    checks = json.loads(Path("audit/audit.json").read_text())["checks"]
    assert all(checks[n]["status"] == "no_reports" for n in (*TEXT_CHECKS, "phi", "report_labels"))
    assert checks["membership"]["status"] == "ran" and np.isfinite(checks["membership"]["auc"])
