"""The demo, shortened: every stage runs through its public API or says why it did not."""

import csv
import json
import sys
from pathlib import Path

import pytest

from cxrsynth.cli import main
from cxrsynth.data.records import LABELS
from cxrsynth.eval.stages import NOT_BUILT, OK, SKIPPED
from cxrsynth.server.demo import run_demo

STAGES = [
    "pretraining on public data",
    "phantom data",
    "de-identification",
    "federated fine-tuning (DP-SGD)",
    "generation",
    "evaluation",
    "privacy audit",
    "release",
]


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # Shorter still than --quick where it does not change what runs: fewer evaluation steps and conditions.
    return run_demo(out, "ldm", quick=True, eval_classifier_steps=20, conditions=6)


def test_quick_demo_reports_every_stage_honestly(quick_demo):
    demo = quick_demo
    assert [s.name for s in demo.stages] == STAGES
    by_name = {s.name: s for s in demo.stages}
    assert by_name["phantom data"].status == OK
    if by_name["release"].status == "refused":
        audit = json.loads((demo.out / "audit" / "audit.json").read_text())
        assert not audit["passed"]
        for name, check in audit["checks"].items():
            assert (name in by_name["release"].detail) == (not check["passed"])
    # A stage that did not produce output blocks what depends on it, with the reason named.
    for before, after in zip(STAGES[1:], STAGES[2:]):
        if by_name[before].status != OK and after not in ("privacy audit",):
            assert by_name[after].status == SKIPPED and before in by_name[after].detail
    for s in demo.stages:
        assert s.status == OK or s.detail, f"{s.name}: status {s.status} without a reason"
    page = (demo.out / "index.html").read_text(encoding="utf-8")
    for s in demo.stages:
        assert s.name in page and s.status in page


def test_quick_demo_numbers_come_from_its_outputs(quick_demo):
    demo = quick_demo
    phantom = demo.stages[1].value
    for site, counts in phantom["per_site"].items():
        rows = _rows(demo.out / "sites" / site / "raw" / "manifest.csv")
        assert counts["studies"] == len(rows)
        assert counts["holdout"] == sum(r["split"] == "holdout" for r in rows)
    assert sum(c["studies"] for c in phantom["per_site"].values()) == demo.cfg.studies
    by_name = {s.name: s for s in demo.stages}
    if by_name["federated fine-tuning (DP-SGD)"].status == OK:
        # The sites' label counts reach the checkpoint: it draws labels in the sites' mix, not the
        # public cohort's the base was pretrained on, and the run started from the pinned base.
        from cxrsynth.checkpoint import load_checkpoint
        from cxrsynth.generate import generate
        from cxrsynth.pretrained import read_card

        model, cfg, state = load_checkpoint(demo.checkpoint)
        base, _, _ = load_checkpoint(demo.out / "base")
        assert model.extra_state()["label_counts"] != base.extra_state()["label_counts"]
        assert cfg.train.init_sha256 == read_card(demo.out / "base").sha256 == state["base"]["sha256"]
        assert state["privacy_ledger"]["base"]["privacy_cost"].startswith("none")
        drawn = generate(demo.checkpoint, 4, demo.out / "unconditional", seed=3)
        assert any(r[name] for r in _rows(Path(drawn) / "manifest.csv") for name in LABELS)
    if by_name["generation"].status == OK:
        assert len(_rows(demo.out / "synthetic" / "manifest.csv")) == by_name["generation"].value["records"]
    if by_name["evaluation"].status == OK:
        metrics = json.loads((demo.out / "eval" / "metrics.json").read_text())
        assert metrics == json.loads(json.dumps(by_name["evaluation"].value["metrics"], default=str))
        # The base model's own samples are scored beside the release, for the same label sets.
        arms = metrics["utility"]["arms"]
        assert set(arms) == {"real", "synthetic", "real+synthetic", "base-only synthetic"}
        assert metrics["utility"]["fine_tuning_gain"] == pytest.approx(
            arms["synthetic"]["macro_auroc"] - arms["base-only synthetic"]["macro_auroc"]
        )
        base_rows, rows = (
            _rows(demo.out / "base-synthetic" / "manifest.csv"),
            _rows(demo.out / "synthetic" / "manifest.csv"),
        )
        assert [{k: r[k] for k in LABELS} for r in base_rows] == [{k: r[k] for k in LABELS} for r in rows]
    if by_name["de-identification"].status == OK:
        # No raw PHI header value may reach the de-identified dataset.
        text = (demo.out / "data" / "all" / "manifest.csv").read_text(encoding="utf-8")
        raw = [r for r in demo.raw if r.phi_meta]
        for r in raw[:20]:
            for v in r.phi_meta.values():
                if len(v) > 5:
                    assert v not in text


def test_missing_stage_is_not_built_and_blocks_dependents(tmp_path, monkeypatch, capsys):
    # Hide de-identification as if it had not landed: the demo must fail closed.
    monkeypatch.setitem(sys.modules, "cxrsynth.privacy.deid", None)
    code = main(["demo", "--quick", "--out", str(tmp_path / "d")])
    assert code == 2
    err = capsys.readouterr().err
    assert "de-identification: NOT BUILT YET" in err
    assert "federated fine-tuning (DP-SGD): SKIPPED - needs 'de-identification'" in err
    page = (tmp_path / "d" / "index.html").read_text(encoding="utf-8")
    assert NOT_BUILT in page and not (tmp_path / "d" / "fl").exists() and not (tmp_path / "d" / "data").exists()


def test_demo_refuses_a_foreign_out_dir(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("someone's file")
    assert main(["--quiet", "demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "not made by `cxrsynth demo`" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["emixer", "mopoe"])
def test_quick_demo_other_families_reach_the_release_gate(family, tmp_path):
    demo = run_demo(tmp_path / family, family, quick=True)
    by_name = {s.name: s for s in demo.stages}
    for name in STAGES[:-1]:
        assert by_name[name].status == OK, f"{name}: {by_name[name].status} {by_name[name].detail}"
    assert by_name["release"].status in (OK, "refused")
    metrics = json.loads((demo.out / "eval" / "metrics.json").read_text())
    assert metrics["synthetic"]["families"] == [family]
