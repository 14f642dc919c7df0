"""The default demo's release is useful, and stays so: slow guards on what the README reports.

The full default demo (public pretraining, 3 hospitals, DP fine-tuning, generation, evaluation,
audit, release) runs once; the floors below sit under the figures measured on this 2-core machine
(README, "Useful synthetic data") so that a change that makes the release less useful fails here.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrsynth.server.demo import run_demo

pytestmark = pytest.mark.slow

# Measured (README, "Useful synthetic data"): synthetic-only / real-only 0.942 (0.912-0.950 over
# 3 seeds), 0.950 for the default demo (seed 0); issue 14's level is 0.9.
SYNTHETIC_TO_REAL_FLOOR = 0.9
EPSILON_BUDGET = 8.0
# What the sites add over the public base (their DP fine-tuning and their looks): +0.042 to
# +0.094 over 3 bench seeds on the default 2-style public cohort (README); the floor sits under it.
GAIN_FLOOR = 0.02
# What the release gives one hospital over its own records alone (README, "What the release gives
# each hospital"): +0.075 to +0.153 per site over 3 bench seeds and the demo; the floor sits under it.
SITE_RELEASE_GAIN_FLOOR = 0.05
# MoPoE (labels as a fourth modality, label sets from the sites' mix): 0.875x and, with the noise
# from the seed as here, 0.846x real-only in the demo with the sites' looks (README); issue 14's
# level for the LDM and MoPoE families is 0.8.
MOPOE_SYNTHETIC_TO_REAL_FLOOR = 0.8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # The noise from the seed: the guard is on the levels the default reaches, not on one draw of
    # the DP noise, which moves the audit's closeness verdict (README, "The sites' looks").
    return run_demo(tmp_path_factory.mktemp("demo-default"), seeded_noise=True)


def test_default_demo_releases_synthetic_data_that_carries_its_labels(demo):
    metrics = json.loads((demo.out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    u = metrics["utility"]
    real = u["arms"]["real"]["macro_auroc"]
    syn = u["arms"]["synthetic"]["macro_auroc"]
    assert syn >= SYNTHETIC_TO_REAL_FLOOR * real, (
        f"synthetic-only {syn:.3f} < {SYNTHETIC_TO_REAL_FLOOR} x real-only {real:.3f}"
    )
    audit = json.loads((demo.out / "audit" / "audit.json").read_text(encoding="utf-8"))
    assert audit["passed"], [k for k, v in audit["checks"].items() if not v["passed"]]
    assert audit["checks"]["dp_ledger"]["epsilon_max"] <= EPSILON_BUDGET
    assert (demo.out / "release").is_dir() and any((demo.out / "release").iterdir())


def test_the_release_does_not_make_the_pooled_classifier_worse(demo):
    # Real + synthetic against real-only on all the sites' records: at least as good, up to what
    # the holdout's draw explains (the upper end of the 95% interval is not below 0).
    u = json.loads((demo.out / "eval" / "metrics.json").read_text(encoding="utf-8"))["utility"]
    low, high = u["intervals"]["augmentation_gain"]
    assert high >= 0.0, f"real + synthetic minus real-only {u['augmentation_gain']:+.3f} ({low:+.3f} to {high:+.3f})"


def test_the_base_only_arm_is_scored_beside_the_fine_tuned_one(demo):
    metrics = json.loads((demo.out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    u = metrics["utility"]
    base = u["arms"]["base-only synthetic"]["macro_auroc"]
    assert u["fine_tuning_gain"] == pytest.approx(u["arms"]["synthetic"]["macro_auroc"] - base)
    # The base was pretrained on public data alone, and its samples carry labels too.
    assert base > 0.6
    # The sites' data made the release better for their own holdout.
    assert u["fine_tuning_gain"] >= GAIN_FLOOR, u["fine_tuning_gain"]


def test_every_hospital_classifies_better_with_the_release_than_with_its_own_records_alone(demo):
    sites = json.loads((demo.out / "eval" / "metrics.json").read_text(encoding="utf-8"))["utility"]["sites"]
    assert len(sites) == 3
    for site, v in sites.items():
        assert v["release_gain"] >= SITE_RELEASE_GAIN_FLOOR, (site, v)


def test_mopoe_release_carries_its_labels_in_its_images_and_reports(tmp_path):
    """The MoPoE demo (its own public base, DP fine-tuning, label sets from the sites' mix): its
    images carry the labels, where prior samples carried 0.65x real-only, and its reports state
    them (the best of 16 sampled reports, contradicting sentences left out: positive F1 0.85,
    where single samples gave 0.38); no PHI in them. The audit still refuses the release for rare
    training n-grams (README)."""
    demo = run_demo(tmp_path / "demo-mopoe", family="mopoe", seeded_noise=True)
    u = json.loads((demo.out / "eval" / "metrics.json").read_text(encoding="utf-8"))["utility"]
    real, syn = u["arms"]["real"]["macro_auroc"], u["arms"]["synthetic"]["macro_auroc"]
    assert syn >= MOPOE_SYNTHETIC_TO_REAL_FLOOR * real, (
        f"MoPoE synthetic-only {syn:.3f} < {MOPOE_SYNTHETIC_TO_REAL_FLOOR} x real-only {real:.3f}"
    )
    audit = json.loads((demo.out / "audit" / "audit.json").read_text(encoding="utf-8"))
    assert audit["checks"]["dp_ledger"]["epsilon_max"] <= EPSILON_BUDGET
    assert audit["checks"]["label_fidelity"]["passed"]
    assert audit["checks"]["report_labels"]["passed"] and audit["checks"]["phi"]["passed"]
    agreement = json.loads((demo.out / "eval" / "metrics.json").read_text(encoding="utf-8"))["label_agreement"]
    assert agreement["synthetic"]["macro_positive_f1"] >= 0.8, agreement["synthetic"]


def test_bench_utility_quick_writes_the_frontier(tmp_path):
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "bench_utility.py"),
            "--quick",
            "--families",
            "ldm",
            "--epsilons",
            "none,8",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
    assert [r["target"] for r in rows] == ["no DP", "8"]
    dp = rows[1]
    assert 0 < dp["epsilon_max"] <= 8.0
    assert rows[0]["epsilon_max"] == 0.0
    for r in rows:
        assert 0.0 <= r["auroc_synthetic"] <= 1.0 and 0.0 <= r["auroc_real"] <= 1.0
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| ldm | 8 |" in table and "| ldm | no DP |" in table
    assert (out / "frontier.png").stat().st_size > 1000
