"""The `cxrsynth` command: help lists the architecture's commands, phantom data is reproducible."""

import csv
import subprocess
import sys

import pytest

from cxrsynth.cli import main
from cxrsynth.data.dataset import read_dataset, read_phi_headers

COMMANDS = ("demo", "data", "deid", "train", "fl", "generate", "evaluate", "audit", "release")


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "cxrsynth.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in COMMANDS:
        assert f"    {cmd}" in out.stdout, cmd


def test_phantom_twice_gives_identical_files(tmp_path):
    args = ["--quiet", "data", "phantom", "--n", "40", "--sites", "3", "--seed", "0", "--size", "32"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 40
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_phantom_dataset_is_valid_and_phi_headers_stay_out_of_the_manifest(tmp_path):
    assert (
        main(["--quiet", "data", "phantom", "--out", str(tmp_path), "--n", "30", "--size", "32", "--holdout", "0.3"])
        == 0
    )
    recs, report = read_dataset(tmp_path)
    assert report.skipped == 0 and len(recs) == 30
    assert {r.split for r in recs} == {"train", "holdout"}
    headers = read_phi_headers(tmp_path)
    assert set(headers) == {r.record_id for r in recs}
    assert all(r.phi_meta == headers[r.record_id] for r in recs)  # read back for de-identification
    assert all(not r.phi_meta for r in read_dataset(tmp_path, with_phi=False)[0])
    manifest = (tmp_path / "manifest.csv").read_text()
    for meta in headers.values():
        assert meta["PatientName"] not in manifest and meta["PatientBirthDate"] not in manifest


@pytest.mark.parametrize(
    "argv, code, words",
    [
        (["data", "phantom", "--out", "x", "--n", "0"], 2, "--n"),
        (["data", "ingest", "--source", "mimic", "--path", "/nonexistent/tree", "--out", "x"], 2, "/nonexistent/tree"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, code, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet"] + argv) == code
    assert words in capsys.readouterr().err


def test_version_and_python_dash_m():
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "cxrsynth", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"cxrsynth {version('cxrsynth')}"
    bad = subprocess.run(
        [sys.executable, "-m", "cxrsynth", "no-such-command"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "no-such-command" in bad.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_is_taken_before_or_after_the_subcommand(where, tmp_path, capsys):
    args = ["data", "phantom", "--n", "6", "--sites", "2", "--size", "16", "--out", str(tmp_path / "a")]
    assert main(["--quiet", *args] if where == "before" else [*args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*args[:-1], str(tmp_path / "b")]) == 0
    assert "phantom studies" in capsys.readouterr().err


def test_skipped_rows_are_logged_warnings_on_stderr_not_results(tmp_path, capsys):
    from cxrsynth.eval.evaluate import load_synthetic
    from cxrsynth.progress import setup_logging

    assert (
        main(["--quiet", "data", "phantom", "--n", "6", "--sites", "2", "--size", "16", "--out", str(tmp_path)]) == 0
    )
    with open(tmp_path / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows.append({**rows[-1], "record_id": "extra-row", "image_path": "images/gone.png"})
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    setup_logging()
    capsys.readouterr()
    assert len(load_synthetic(tmp_path)) == 6
    out, err = capsys.readouterr()
    assert out == "" and "WARNING" in err and "1 row(s) skipped" in err and str(tmp_path) in err
