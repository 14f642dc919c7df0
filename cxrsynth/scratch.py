"""Private scratch folders for what is derived from a site's records while a command runs: the
ingest index (study rows, DICOM header PHI), the audit's image embeddings and aligned windows.

A folder is made with mode 0700 under `TMPDIR` and removed when the work is done, failed or not.
A process that is killed (SIGKILL, out of memory, power) cannot remove its own, so its name says
which host and process made it, `cxrsynth-<kind>.<host>.<pid>.<random>`, and every new scratch
folder first removes those of this host whose process has ended and that belong to this user.
A folder of a process that is still running, of another host (a shared TMPDIR) or another user
is never touched; nor is a folder whose process number has since been given to another process,
until that one ends too.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

KINDS = ("index", "audit", "align")
_NAME = re.compile(r"^cxrsynth-(?P<kind>[a-z]+)\.(?P<host>[0-9a-f]{12})\.(?P<pid>[0-9]+)\.")


def host_tag() -> str:
    """This host, as scratch folder names carry it (a digest: a host name may hold dots)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:12]


def make(kind: str) -> str:
    """A new private folder for `kind` (one of KINDS), after removing abandoned ones."""
    if kind not in KINDS:
        raise ValueError(f"scratch folder kind {kind!r}; expected one of {', '.join(KINDS)}")
    sweep()
    return tempfile.mkdtemp(prefix=f"cxrsynth-{kind}.{host_tag()}.{os.getpid()}.")


@contextmanager
def folder(kind: str) -> Iterator[str]:
    """`make(kind)`, removed when the block ends, however it ends."""
    path = make(kind)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep(root: Optional[str | Path] = None) -> list[Path]:
    """Remove the scratch folders under `root` (the temporary folder) that this host's processes
    made and left behind when they ended; the folders removed."""
    root = Path(root or tempfile.gettempdir())
    host, uid, removed = host_tag(), os.getuid(), []
    try:
        entries = list(root.glob("cxrsynth-*"))
    except OSError:
        return removed
    for path in entries:
        match = _NAME.match(path.name)
        if not match or match["kind"] not in KINDS or match["host"] != host:
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        if st.st_uid != uid or not stat.S_ISDIR(st.st_mode):  # lstat: a link to a folder is not one
            continue
        if _running(int(match["pid"])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process holds the number
        return True
    except OverflowError:
        return False
    return True
