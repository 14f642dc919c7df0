"""The `cxrsynth` command: help lists the architecture's commands, phantom data is reproducible."""

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
    assert main(["--quiet", "data", "phantom", "--out", str(tmp_path), "--n", "30", "--size", "32", "--holdout", "0.3"]) == 0
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


@pytest.mark.parametrize("argv, code, words", [
    (["data", "phantom", "--out", "x", "--n", "0"], 2, "--n"),
    (["data", "ingest", "--source", "mimic", "--path", "/nonexistent/tree", "--out", "x"], 2, "/nonexistent/tree"),
])
def test_bad_arguments_exit_2_with_a_message(argv, code, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet"] + argv) == code
    assert words in capsys.readouterr().err
