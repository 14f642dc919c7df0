"""Output folders that are written whole or not at all.

A command that writes a folder (a dataset, an audit) refuses an `--out` that is a file, or a
folder that already holds something, unless it is told to replace it (`--replace`, or an
`is_own` test such as "an earlier audit"). It then writes into a new sibling folder and swaps it
in only when everything is written, so a failure, a bad input found late or an interrupt leaves
the old folder exactly as it was, and a replaced folder never keeps stray files of the old one.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from cxrsynth.errors import InputError


def check_out(
    out: Path,
    replace: bool = False,
    is_own: Optional[Callable[[Path], bool]] = None,
    hint: str = "pass --replace to replace it whole",
) -> None:
    """InputError unless `out` is new, an empty folder, or a folder we may replace."""
    out = Path(out)
    if out.is_symlink():
        raise InputError(f"--out {out}: is a symbolic link; give a real folder.")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; --out names a folder to write.")
    if out.is_dir() and any(out.iterdir()) and not replace and not (is_own and is_own(out)):
        raise InputError(f"--out {out}: exists and is not empty; choose a new folder, or {hint}.")
    if not out.parent.exists():
        raise InputError(f"--out {out}: its parent folder {out.parent} does not exist.")


@contextmanager
def fresh_dir(
    out: Path,
    replace: bool = False,
    is_own: Optional[Callable[[Path], bool]] = None,
    hint: str = "pass --replace to replace it whole",
) -> Iterator[Path]:
    """Yield a new folder to write into; on success it becomes `out` (replacing what was there)."""
    out = Path(out)
    check_out(out, replace, is_own, hint)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
