"""Studies of a source tree (a MIMIC-CXR-JPG tree, a folder of DICOM files) kept by their file
names, read again when asked for.

Reading a source checks every study once: its images are decoded (and let go) and its report is
read, so a bad file is reported before anything is written. What is kept is what ingest's split,
counts and PHI headers read (ids, split, view, the 14 labels as int8 codes, the header PHI a
DICOM study carries) and the names of the study's image and report files. `StudyFiles` serves
the studies as a dataset (`RecordView` of it): `metadata(i)` reads the report file again,
`__getitem__(i)` decodes the images too. A report that changed since it was checked is refused,
since its labels were taken from what was read first; an image that no longer decodes is an
`ImageError` naming the file, which ingest reports as a skipped study.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cxrsynth.data.records import LABELS, Record
from cxrsynth.data.report_text import read_report_file, sections
from cxrsynth.data.stream import ImageError, labels_of_codes
from cxrsynth.errors import InputError


def report_digest(text: str) -> bytes:
    """What a study keeps of its report text: enough to tell it changed since it was read."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


class StudyFiles:
    """The checked studies of a source, `load_image(path)` decoding one of their image files
    (a ValueError saying why it cannot)."""

    def __init__(self, load_image: Callable[[str], np.ndarray], site: str = ""):
        self.load_image = load_image
        self.site = sys.intern(site)
        self.ids: list[tuple[str, str, str]] = []  # record, patient, study
        self.few: list[tuple[str, str]] = []  # split, view (interned)
        self.files: list[tuple[str, str, str]] = []  # frontal, lateral ("" for none), report ("" for none)
        self.digests: list[bytes] = []  # of the report text as read first
        self.phi: dict[int, dict[str, str]] = {}  # header PHI, by position, for the studies that have any
        self._codes = bytearray()
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
        if phi:
            self.phi[len(self.ids)] = phi
        self.ids.append((record_id, patient_id, study_id))
        self.few.append((sys.intern(split), sys.intern(view)))
        self.files.append((frontal, lateral, report_file))
        self.digests.append(digest or report_digest(""))
        self._codes += codes

    @property
    def labels(self) -> np.ndarray:
        """The studies' labels as int8 codes, one row a study."""
        if len(self._labels) != len(self):
            self._labels = np.frombuffer(bytes(self._codes), dtype=np.int8).reshape(-1, len(LABELS))
        return self._labels

    def __len__(self) -> int:
        return len(self.ids)

    def _text(self, i: int) -> str:
        report_file = self.files[i][2]
        if not report_file:
            return ""
        try:
            text = read_report_file(Path(report_file))
        except ValueError as e:
            raise InputError(f"{report_file}: {e}") from None
        if report_digest(text) != self.digests[i]:
            raise InputError(f"{report_file}: the report changed while the source was read; run again.")
        return text

    def metadata(self, i: int) -> Record:
        """Study i without its images (its report read again from its file)."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        record_id, patient_id, study_id = self.ids[i]
        split, view = self.few[i]
        findings, impression = sections(self._text(i))
        return Record(
            record_id=record_id,
            patient_id=patient_id,
            study_id=study_id,
            site=self.site,
            split=split,
            view=view,
            findings=findings,
            impression=impression,
            labels=labels_of_codes(self.labels[i]),
            phi_meta=dict(self.phi.get(i, {})),
        )

    def __getitem__(self, i: int) -> Record:
        rec = self.metadata(i)
        frontal, lateral, _ = self.files[i]
        rec.image = self._decode(frontal)
        if lateral:
            rec.lateral = self._decode(lateral)
        return rec

    def _decode(self, path: str) -> np.ndarray:
        try:
            return self.load_image(path)
        except ValueError as e:
            raise ImageError(path, None, str(e)) from None
