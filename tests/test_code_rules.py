"""The import order and the lint rules hold for the whole tree (configured in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from itertools import permutations
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install the test extra: pip install -e '.[test]'")
    return path


def _installed_layout(dest: Path) -> Path:
    """The package as it installs (setup.py): client/, server/ and privacy/ inside cxrsynth/. The
    import graph is read from files, and in the source tree they sit beside cxrsynth/, not in it."""
    package = dest / "cxrsynth"
    shutil.copytree(ROOT / "cxrsynth", package, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("client", "server", "privacy"):
        shutil.copytree(ROOT / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_layers_hold_core_privacy_flower_apps_pipeline(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(_installed_layout(tmp_path / "layout"))}
    run = subprocess.run(
        [_tool("lint-imports"), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_no_model_family_imports_another():
    import grimp

    from cxrsynth.models import registry

    graph = grimp.build_graph("cxrsynth")
    folders = [f"cxrsynth.models.{name}" for name in registry.names() if f"cxrsynth.models.{name}" in graph.modules]
    assert len(folders) >= 3
    for a, b in permutations(folders, 2):
        assert not graph.chain_exists(a, b, as_packages=True), f"{a} imports {b}: {graph.find_shortest_chain(a, b)}"


def test_ruff_finds_nothing():
    run = subprocess.run(
        [_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_the_tree_is_formatted_by_ruff():
    """`ruff format` (line length 119, pyproject) leaves every file as it is."""
    run = subprocess.run(
        [_tool("ruff"), "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, "run `ruff format .`:\n" + run.stdout[-4000:] + run.stderr[-2000:]
