"""Scratch folders hold what is derived from a site's records (index rows with DICOM header PHI,
image embeddings): a killed process leaves its folder behind, and the next cxrsynth process on the
host removes it, never one that is still in use; a disk that fills under the ingest index is an
error that names the folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cxrsynth import scratch
from cxrsynth.data.index import TempIndex
from cxrsynth.errors import InputError

HOLD = """
import sys, time
from cxrsynth.data.index import TempIndex
index = TempIndex("CREATE TABLE t (x BLOB)")
index.execute("INSERT INTO t VALUES (?)", (b"MRN 12345",))
index.commit()
from cxrsynth import scratch
audit = scratch.make("audit")
print(index.folder, audit, flush=True)
time.sleep(600)
"""


@pytest.fixture
def tmpdir_root(tmp_path, monkeypatch):
    root = tmp_path / "scratch"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _holder(root: Path) -> tuple[subprocess.Popen, list[Path]]:
    env = {**os.environ, "TMPDIR": str(root)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True, env=env)
    folders = [Path(p) for p in proc.stdout.readline().split()]
    assert len(folders) == 2 and all(p.is_dir() for p in folders)
    return proc, folders


def test_a_killed_processs_scratch_folders_are_removed_by_the_next_one_and_a_running_ones_are_kept(tmpdir_root):
    running, kept = _holder(tmpdir_root)
    killed, left = _holder(tmpdir_root)
    try:
        assert (left[0] / "index.sqlite").is_file() and oct(left[0].stat().st_mode & 0o777) == "0o700"
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert all(p.is_dir() for p in left)  # a killed process cannot clean up
        others = [
            tmpdir_root / f"cxrsynth-index.{'0' * 12}.{killed.pid}.abc",  # another host's, on a shared TMPDIR
            tmpdir_root / f"cxrsynth-sim-{killed.pid}",  # not a scratch folder
            tmpdir_root / "unrelated",
        ]
        for p in others:
            p.mkdir()
        index = TempIndex("CREATE TABLE t (x INTEGER)")
        assert not any(p.exists() for p in left)
        assert all(p.is_dir() for p in kept + others)
        assert Path(index.folder).parent == tmpdir_root
        assert Path(index.folder).name.startswith(f"cxrsynth-index.{scratch.host_tag()}.{os.getpid()}.")
        index.close()
        assert not Path(index.folder).exists()
    finally:
        running.kill()
        running.wait(timeout=30)
        killed.kill()
    assert set(scratch.sweep()) == set(kept)  # its process has ended now
    assert not any(p.exists() for p in kept)
    assert all(p.is_dir() for p in others)


def test_a_scratch_block_removes_its_folder_however_it_ends(tmpdir_root):
    with scratch.folder("audit") as path:
        assert Path(path).is_dir() and Path(path).stat().st_mode & 0o777 == 0o700
        (Path(path) / "embeddings.f32").write_bytes(b"\0" * 64)
    assert not Path(path).exists()
    with pytest.raises(RuntimeError):
        with scratch.folder("align") as path:
            raise RuntimeError("the search failed")
    assert not Path(path).exists()
    with pytest.raises(ValueError, match="scratch folder kind 'sim'"):
        scratch.make("sim")


def test_a_full_disk_under_the_ingest_index_names_the_index_and_tmpdir(tmpdir_root):
    index = TempIndex("CREATE TABLE t (x BLOB)")
    index.execute("PRAGMA max_page_count = 4")  # SQLite's own "disk is full", at four pages
    with pytest.raises(InputError, match=r"index\.sqlite: database or disk is full .*TMPDIR") as e:
        for _ in range(1000):
            index.execute("INSERT INTO t VALUES (?)", (os.urandom(512),))
        index.commit()
    assert str(tmpdir_root) in str(e.value)
    with pytest.raises(Exception, match="no such table"):  # any other SQLite error is its own
        index.execute("SELECT * FROM missing")
    index.close()
    assert not Path(index.folder).exists()
