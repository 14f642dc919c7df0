"""Studies of a source tree (a MIMIC-CXR-JPG tree, a folder of DICOM files) kept by their file
names, read again when asked for.

Reading a source checks every study once: its images are decoded (and let go) and its report is
read, so a bad file is reported before anything is written. What is kept is what ingest's split,
counts and PHI headers read (ids, split, view, the 14 labels as int8 codes, the header PHI a
DICOM study carries) and the names of the study's image and report files, in a row of an SQLite
file (`TempIndex`), so memory does not grow with the number of studies. `StudyFiles` serves
the studies as a dataset (`RecordView` of it): `metadata(i)` reads the report file again,
`__getitem__(i)` decodes the images too. A report that changed since it was checked is refused,
since its labels were taken from what was read first; an image that no longer decodes is an
`ImageError` naming the file, which ingest reports as a skipped study.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np

from cxrsynth.data.index import TempIndex, blob, unblob
from cxrsynth.data.records import LABELS, Record
from cxrsynth.data.report_text import read_report_file, sections
from cxrsynth.data.stream import ImageError, labels_of_codes
from cxrsynth.errors import InputError


def report_digest(text: str) -> bytes:
    """What a study keeps of its report text: enough to tell it changed since it was read."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


_SCHEMA = """
CREATE TABLE studies (
    position INTEGER PRIMARY KEY,  -- 0, 1, ...: the study's index
    record_id BLOB, patient_id BLOB, study_id BLOB, split TEXT, view TEXT,
    frontal BLOB, lateral BLOB, report_file BLOB,  -- empty: none
    digest BLOB,  -- of the report text as read first
    codes BLOB,  -- the 14 labels, int8 codes
    phi TEXT  -- header PHI as JSON; NULL: none
);
"""


class _Row(NamedTuple):
    """A study's row (strings that may name files as `blob`s)."""

    record_id: bytes
    patient_id: bytes
    study_id: bytes
    split: str
    view: str
    frontal: bytes
    lateral: bytes
    report_file: bytes
    digest: bytes
    codes: bytes
    phi: Optional[str]


_SELECT = f"SELECT {', '.join(_Row._fields)} FROM studies WHERE position = ?"


class StudyFiles:
    """The checked studies of a source, `load_image(path)` decoding one of their image files
    (a ValueError saying why it cannot). Its rows lie in a temporary SQLite file, removed by
    `close()` or when the object is collected; a copy in a DataLoader worker reads the same file."""

    def __init__(self, load_image: Callable[[str], np.ndarray], site: str = ""):
        self.load_image = load_image
        self.site = sys.intern(site)
        self.index = TempIndex(_SCHEMA)
        self._n = 0
        self._labels = np.zeros((0, len(LABELS)), dtype=np.int8)

    def add(
        self,
        *,
        record_id: str,
        patient_id: str,
        study_id: str,
        split: str,
        view: str,
        codes: bytes,
        frontal: str,
        lateral: str = "",
        report_file: str = "",
        digest: bytes = b"",
        phi: Optional[dict[str, str]] = None,
    ) -> None:
        """One study as checked: `codes` its labels (`label_codes`), `digest` the `report_digest`
        of its report as read from `report_file`."""
        self.index.execute(
            "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._n,
                *map(blob, (record_id, patient_id, study_id)),
                split,
                view,
                *map(blob, (frontal, lateral, report_file)),
                digest or report_digest(""),
                bytes(codes),
                json.dumps(phi) if phi else None,
            ),
        )
        self._n += 1

    def commit(self) -> None:
        """The studies added so far, seen by other processes (DataLoader workers) too."""
        self.index.commit()

    def close(self) -> None:
        """Remove the rows' file; the studies can no longer be read."""
        self.index.close()

    @property
    def labels(self) -> np.ndarray:
        """The studies' labels as int8 codes, one row a study."""
        if len(self._labels) != len(self):
            codes = b"".join(c for (c,) in self.index.db.execute("SELECT codes FROM studies ORDER BY position"))
            self._labels = np.frombuffer(codes, dtype=np.int8).reshape(-1, len(LABELS))
        return self._labels

    def __len__(self) -> int:
        return self._n

    def _row(self, i: int) -> _Row:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return _Row._make(self.index.db.execute(_SELECT, (i,)).fetchone())

    def _text(self, row: _Row) -> str:
        if not row.report_file:
            return ""
        report_file = unblob(row.report_file)
        try:
            text = read_report_file(Path(report_file))
        except ValueError as e:
            raise InputError(f"{report_file}: {e}") from None
        if report_digest(text) != row.digest:
            raise InputError(f"{report_file}: the report changed while the source was read; run again.")
        return text

    def _record(self, row: _Row) -> Record:
        findings, impression = sections(self._text(row))
        return Record(
            record_id=unblob(row.record_id),
            patient_id=unblob(row.patient_id),
            study_id=unblob(row.study_id),
            site=self.site,
            split=row.split,
            view=row.view,
            findings=findings,
            impression=impression,
            labels=labels_of_codes(np.frombuffer(row.codes, dtype=np.int8)),
            phi_meta=json.loads(row.phi) if row.phi else {},
        )

    def metadata(self, i: int) -> Record:
        """Study i without its images (its report read again from its file)."""
        return self._record(self._row(i))

    def __getitem__(self, i: int) -> Record:
        row = self._row(i)
        rec = self._record(row)
        rec.image = self._decode(unblob(row.frontal))
        if row.lateral:
            rec.lateral = self._decode(unblob(row.lateral))
        return rec

    def _decode(self, path: str) -> np.ndarray:
        try:
            return self.load_image(path)
        except ValueError as e:
            raise ImageError(path, None, str(e)) from None
