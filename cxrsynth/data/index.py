"""What reading a large source would otherwise hold in memory, a row a study or a file, kept in
an SQLite file instead.

A MIMIC-CXR-JPG tree's tables, a DICOM folder's files before they are grouped into studies, the
checked studies of either: in memory these grow by hundreds of bytes to kilobytes a study (a
Python string, tuple or dict entry each), which at 10^5 studies is more than the rest of an
ingest holds. In an SQLite file they cost a few MB of page cache at any size. The file lies in a
private scratch folder (`cxrsynth.scratch`, mode 0700: it holds DICOM header PHI), removed by
`close()`, when its `TempIndex` is collected, or at exit, whichever comes first, and by the next
cxrsynth process when this one was killed; `TMPDIR` says where (a disk, not a RAM-backed /tmp,
for a large source). A disk that fills is an error naming the folder, not SQLite's own.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from cxrsynth import scratch
from cxrsynth.errors import InputError

NAME = "index.sqlite"


def blob(text: str) -> bytes:
    """A string as SQLite stores it here: file names may hold bytes that are not UTF-8 (Python's
    surrogate escapes), which SQLite's text cannot take. Sorting these bytes sorts as the
    strings do (code point order)."""
    return text.encode("utf-8", "surrogatepass")


def unblob(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


class TempIndex:
    """An SQLite database in a private temporary file, with `schema` (SQL statements).

    Each process opens its own connection when it first asks for `db`: an SQLite connection
    must not be used across `fork` (DataLoader workers), and a copy sent to another process by
    pickling opens the path again, read-only. Only the process that created the index writes to
    it and removes it. What is added is seen by other processes once it is committed (`commit`).
    """

    def __init__(self, schema: str):
        self.folder = scratch.make("index")
        self.path = os.path.join(self.folder, NAME)
        self._owner: Optional[int] = os.getpid()
        self._connections: dict[int, sqlite3.Connection] = {}
        self._remove = weakref.finalize(self, _remove, self.folder, self._owner)
        # An empty file is a new database to SQLite; its journal takes the same mode.
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._explained():
            self.db.executescript(schema)
            self.db.execute("BEGIN")

    @property
    def db(self) -> sqlite3.Connection:
        """This process's connection."""
        pid = os.getpid()
        if pid not in self._connections:
            if not os.path.isfile(self.path):
                raise FileNotFoundError(f"{self.path}: the index was closed and removed; read the source again.")
            if pid == self._owner:
                connection = sqlite3.connect(self.path, check_same_thread=False)
                # A scratch file, thrown away on any failure: nothing to make durable.
                connection.execute("PRAGMA synchronous = OFF")
            else:
                uri = f"{Path(self.path).as_uri()}?mode=ro"
                connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._connections[pid] = connection
        return self._connections[pid]

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """`db.execute`, with a full disk reported as the folder that filled."""
        with self._explained():
            return self.db.execute(sql, tuple(params))

    @contextmanager
    def _explained(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as e:
            if "full" not in str(e) and "disk I/O" not in str(e):
                raise
            raise InputError(
                f"{self.path}: {e} (the temporary index of the source being read); free space in "
                f"{os.path.dirname(self.folder)} or point TMPDIR at a folder on a larger disk, then read the source again."
            ) from None

    def commit(self) -> None:
        """What was added, seen by other processes from now on. The creator then stays in a
        transaction, as it was since it began: a statement outside one takes and lets go of the
        file's lock, which made a lookup 16 us instead of 3."""
        connection = self._connections.get(os.getpid())
        if os.getpid() == self._owner and connection is not None:
            with self._explained():
                connection.commit()
                connection.execute("BEGIN")

    def close(self) -> None:
        """Close this process's connection; the creator's `close` removes the file too."""
        connection = self._connections.pop(os.getpid(), None)
        if connection is not None:
            connection.close()
        if os.getpid() == self._owner:
            self._remove()

    def __getstate__(self) -> dict:
        self.commit()
        return {**self.__dict__, "_owner": None, "_connections": {}, "_remove": None}


def _remove(folder: str, owner: int) -> None:
    # A forked worker holds a copy of the object; its exit or collection must not remove the file.
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)
