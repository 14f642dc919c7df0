"""Datasets that decode images on access, and the batch sampler the training loop draws from.

A hospital archive (10^5 studies and more) does not fit in memory as decoded images. A
`ManifestDataset` keeps the manifest's text and labels in compact columns and decodes a
record's PNGs when the record is asked for, in a DataLoader worker when there are workers, so
decoding runs beside the training step instead of before it. A `RecordsDataset` serves records
already in memory (phantom data, a federated site's partition) through the same loader.

`IndexBatchSampler` draws lists of dataset indices: fixed-size batches from reshuffled epochs,
or Poisson sampling (each unit joins a batch independently with probability q), which is what
the DP accountant assumes. It draws in the main process only, so the batches, and so the
accounting, do not depend on the number of workers; with `world_size` > 1 every rank draws the
same global batch and keeps its share of it, so the union over the ranks is the batch one
process would have drawn.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxrsynth.data.dataset import (
    MANIFEST,
    PHI_HEADERS,
    DatasetReport,
    _row_to_record,
    checked_rows,
    dataset_file,
    load_image_file,
    open_manifest,
    phi_line,
    read_csv_row,
)
from cxrsynth.data.records import LABELS, Record
from cxrsynth.errors import InputError

NO_LABEL = -2  # int8 code of an empty label cell (not mentioned)


def label_codes(labels: dict) -> bytes:
    """A record's 14 labels as int8 codes (NO_LABEL for not mentioned), one byte each."""
    return bytes((NO_LABEL if labels[n] is None else labels[n]) & 0xFF for n in LABELS)


def labels_of_codes(codes: np.ndarray) -> dict:
    """The labels dict of a row of int8 codes (`label_codes`)."""
    return {n: (None if v == NO_LABEL else int(v)) for n, v in zip(LABELS, codes.tolist())}


# Below this many bytes of pixels a batch crosses from a worker whole: fetching each shared tensor
# costs the training process a round trip to the worker, more than reading a few hundred KB from
# the pipe (64 px batches of 32: 1.9 ms whole, 2.3 ms as shared tensors; 256 px: 7.9 and 2.7 ms).
SHARED_MIN_BYTES = 1 << 20


class RecordBatch(list):
    """A batch of records (a list, so every model's `train_step` takes it as it is) that also
    holds its frontal images stacked in one uint8 tensor when they share a size. On CUDA the
    DataLoader pins that tensor, so `frontal_images` copies it to the GPU without blocking.

    Sent from a DataLoader worker, a batch of `SHARED_MIN_BYTES` of pixels or more sends them in
    stacked tensors (shared memory: the frontal one, and the laterals stacked as the batch is
    sent) and its records without them; they get their images back as views of the tensors.
    Pickled whole, a batch of 32 studies at 512 px is 16 MB through a pipe that holds 64 KB,
    which the training process reads in hundreds of turns with the worker. A smaller batch is
    sent whole and stacked again where it arrives."""

    frontal: Optional[torch.Tensor] = None

    def pin_memory(self) -> "RecordBatch":
        if self.frontal is not None:
            self.frontal = self.frontal.pin_memory()
        return self

    def __reduce__(self):
        records = list(self)
        pixels = sum(im.nbytes for r in records for im in (r.image, r.lateral) if im is not None)
        if pixels < SHARED_MIN_BYTES:
            return collate_records, (records,)
        if self.frontal is not None:
            records = [r.with_(image=None) for r in records]
        lateral_of = tuple(i for i, r in enumerate(records) if r.lateral is not None)
        lateral = _stacked([records[i].lateral for i in lateral_of])
        if lateral is not None:
            records = [r.with_(lateral=None) if r.lateral is not None else r for r in records]
        return _rebuild_batch, (records, self.frontal, lateral, lateral_of if lateral is not None else ())


def _rebuild_batch(
    records: list[Record], frontal: Optional[torch.Tensor], lateral: Optional[torch.Tensor], lateral_of: tuple
) -> RecordBatch:
    batch = RecordBatch(records)
    batch.frontal = frontal
    if frontal is not None:
        for r, image in zip(records, frontal.numpy()):
            r.image = image
    if lateral is not None:
        for i, image in zip(lateral_of, lateral.numpy()):
            records[i].lateral = image
    return batch


def _stacked(images: list[np.ndarray]) -> Optional[torch.Tensor]:
    """The images as one uint8 tensor, or None when there are none or their shapes differ."""
    if not images or len({(im.shape, im.dtype) for im in images}) != 1:
        return None
    return torch.from_numpy(np.stack(images))


def collate_records(records: list[Record]) -> RecordBatch:
    batch = RecordBatch(records)
    if all(r.image is not None for r in records):
        batch.frontal = _stacked([r.image for r in records])
    return batch


class RecordsDataset(Dataset):
    """Records already in memory, with the training loop's label mask applied on access."""

    def __init__(self, records: Sequence[Record]):
        self.records = list(records)
        self.keep_labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        rec = self.records[i]
        if self.keep_labels is not None and not self.keep_labels[i]:
            rec = rec.with_(labels=dict.fromkeys(LABELS))
        return rec

    def patient_ids(self) -> list[str]:
        return [r.patient_id for r in self.records]

    def splits(self) -> list[str]:
        return [r.split for r in self.records]

    def metadata(self, i: int) -> Record:
        return self[i]

    def subset(self, indices: Sequence[int]) -> "RecordsDataset":
        return RecordsDataset([self.records[i] for i in indices])


class ImageError(InputError):
    """An image that turned out unreadable when decoded: the manifest (file, row) naming it, or
    the image file itself (row None), and why."""

    def __init__(self, file: str, row: Optional[int], reason: str):
        super().__init__(f"{file}{'' if row is None else f', row {row}'}: {reason}")
        self.file, self.row, self.reason = file, row, reason


class SpanFile:
    """A file read by byte ranges (`os.pread`), kept open from the moment its ranges were taken:
    a file replaced meanwhile (an ingest putting the folder's new manifest in place) is still the
    one read. DataLoader workers made by fork share the descriptor (pread moves no file offset);
    a copy sent to another process opens the path again and refuses a different file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: Optional[int] = None
        self.ident = self._open()

    def _open(self) -> tuple[int, int, int]:
        """Open the path; the (device, inode, size) of what was opened."""
        self.fd = os.open(self.path, os.O_RDONLY)
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino, st.st_size

    def read(self, start: int, end: int) -> bytes:
        if self.fd is None and self._open() != self.ident:
            raise InputError(f"{self.path}: the file was replaced while the dataset was open; open it again.")
        return os.pread(self.fd, end - start, start)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "fd": None}

    def __del__(self):
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None


class ManifestDataset(Dataset):
    """A dataset directory whose records are read on access.

    The manifest is read and validated once (bad rows reported and skipped, as `read_dataset`
    does, and a row whose image file is missing counted there too). What the sampling, the split
    and the label counts need stays in memory, compactly: record and patient ids, site, split and
    view, the 14 labels in one int8 array, and each row's byte range in the manifest. The rest of a
    row (report text, study id, image paths) and its PHI header line are read again from the
    files when the record is asked for, and its PNGs decoded, so memory grows by about 0.5 KB a
    study (measured at 100,000), not by its text. An image that turns out corrupt when decoded is an InputError naming
    the file and the row.
    """

    _FEW = ("site", "split", "view")

    def __init__(
        self,
        root: str | Path,
        columns: dict,
        rows: np.ndarray,
        labels: np.ndarray,
        spans: np.ndarray,
        lateral: np.ndarray,
        source: SpanFile,
        fieldnames: list[str],
        index: Optional[np.ndarray] = None,
    ):
        self.root = Path(root)
        self.columns = columns  # record_id, patient_id, site, split, view: lists of strings
        self.rows = rows  # manifest data row of each record (1-based), for error messages
        self.labels = labels
        self.spans = spans  # byte range of each record's row in the manifest
        self.lateral = lateral  # whether each record names a lateral image
        self.source = source
        self.fieldnames = fieldnames
        # Positions in the columns this dataset serves: a subset (the training side of the split)
        # shares its parent's columns instead of copying them.
        self.index = np.arange(len(rows)) if index is None else index
        self.keep_labels: Optional[np.ndarray] = None
        self.phi_source: Optional[SpanFile] = None
        self.phi_spans: Optional[np.ndarray] = None  # byte range of each record's PHI line; -1: none
        self._last: Optional[tuple[int, dict]] = None  # (position, row) of the row read last
        self._resolved_root: Optional[str] = None

    @classmethod
    def open(
        cls, root: str | Path, *, strict: bool = False, report: Optional[DatasetReport] = None, with_phi: bool = False
    ) -> tuple["ManifestDataset", DatasetReport]:
        root = Path(root)
        manifest, reader = open_manifest(root)
        source = SpanFile(manifest)
        report = report or DatasetReport()
        columns: dict[str, list[str]] = {c: [] for c in ("record_id", "patient_id") + cls._FEW}
        labels = bytearray()
        rows: list[int] = []
        spans: list[tuple[int, int]] = []
        lateral = bytearray()
        resolved_root = root.resolve()

        def make(row: dict) -> Record:
            rec = _row_to_record(row, root, load_images=False)
            _existing(root, row["image_path"], "image_path", resolved_root)
            _existing(root, row.get("lateral_path") or "", "lateral_path", resolved_root)
            return rec

        # The checks of read_dataset, without keeping a Record per row.
        for i, row, rec in checked_rows(reader, make, manifest, report, strict):
            for c in columns:
                value = getattr(rec, c)
                # One string object per distinct site, split and view, not one per row.
                columns[c].append(sys.intern(value) if c in cls._FEW else value)
            labels += label_codes(rec.labels)
            rows.append(i)
            spans.append(reader.span)
            lateral.append(bool((row.get("lateral_path") or "").strip()))
        ds = cls(
            root,
            columns,
            np.array(rows, dtype=np.int64),
            np.frombuffer(bytes(labels), dtype=np.int8).reshape(-1, len(LABELS)).copy(),
            np.array(spans, dtype=np.int64).reshape(-1, 2),
            np.frombuffer(bytes(lateral), dtype=bool).copy(),
            source,
            list(reader.fieldnames or []),
        )
        ds._resolved_root = str(resolved_root)  # the paths were checked against it above
        if with_phi and (root / PHI_HEADERS).is_file():
            ds._index_phi(root / PHI_HEADERS)
        return ds, report

    def _index_phi(self, path: Path) -> None:
        """The byte range of each record's line in the PHI header file (checked line by line)."""
        position = {rid: k for k, rid in enumerate(self.columns["record_id"])}
        spans = np.full((len(self.rows), 2), -1, dtype=np.int64)
        self.phi_source = SpanFile(path)
        offset = 0
        with open(path, "rb") as f:
            for i, raw in enumerate(f, start=1):
                entry = phi_line(path, i, raw)
                k = None if entry is None else position.get(entry[0])
                if k is not None:
                    spans[k] = (offset, offset + len(raw))
                offset += len(raw)
        self.phi_spans = spans

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_last": None}  # a copy elsewhere reads its rows from the file

    def _row(self, k: int) -> dict:
        """The manifest row of column position k, read again from the file (the last one read is
        kept: a record's metadata and its two images read the same row)."""
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        row = read_csv_row(self.source.path, self.fieldnames, self.source.read(*self.spans[k].tolist()))
        if (row.get("record_id") or "").strip() != self.columns["record_id"][k]:
            raise InputError(
                f"{self.source.path}, row {int(self.rows[k])}: the manifest changed while the dataset was open; open it again."
            )
        self._last = (k, row)
        return row

    def _phi(self, k: int) -> dict[str, str]:
        if self.phi_spans is None or self.phi_spans[k, 0] < 0:
            return {}
        start, end = self.phi_spans[k].tolist()
        entry = phi_line(self.phi_source.path, 0, self.phi_source.read(start, end))
        return entry[1] if entry else {}

    def metadata(self, i: int) -> Record:
        """Record i without its images (report, labels, ids): its manifest row is read, no image."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        keep = self.keep_labels is None or self.keep_labels[i]
        k = int(self.index[i])
        rec = _row_to_record(self._row(k), self.root, load_images=False)
        rec.labels = labels_of_codes(self.labels[k]) if keep else dict.fromkeys(LABELS)
        for c in self.columns:  # the split may have been made since (`with_splits`)
            setattr(rec, c, self.columns[c][k])
        rec.phi_meta = self._phi(k)
        return rec

    def __getitem__(self, i: int) -> Record:
        rec = self.metadata(i)
        rec.image = self.image(i)
        if self.has_lateral(i):
            rec.lateral = self.image(i, lateral=True)
        return rec

    @property
    def resolved_root(self) -> str:
        if self._resolved_root is None:
            self._resolved_root = str(self.root.resolve())
        return self._resolved_root

    def image(self, i: int, lateral: bool = False) -> np.ndarray:
        """Record i's frontal (or lateral) image alone, decoded."""
        k = int(self.index[i])
        column = "lateral_path" if lateral else "image_path"
        rel = self.image_path(i, lateral)
        try:
            # Opening the dataset resolved every path (links followed) and checked it stays inside;
            # a row read again is the same row (its record id is checked), so a path that stays
            # inside as written needs no second resolve, which cost as much as decoding the PNG.
            plain = os.path.normpath(rel)
            if os.path.isabs(plain) or plain == ".." or plain.startswith("../"):
                path = dataset_file(self.root, rel, column, Path(self.resolved_root))
            else:
                path = os.path.join(self.resolved_root, plain)
            return load_image_file(path, column, rel)
        except ValueError as e:
            raise ImageError(str(self.root / MANIFEST), int(self.rows[k]), str(e)) from None

    def image_path(self, i: int, lateral: bool = False) -> str:
        """Record i's frontal (or lateral) image path as the manifest gives it ("" for no lateral)."""
        return (self._row(int(self.index[i])).get("lateral_path" if lateral else "image_path") or "").strip()

    def has_lateral(self, i: int) -> bool:
        return bool(self.lateral[int(self.index[i])])

    def check_images(self) -> None:
        """Decode every image once, one at a time: an `ImageError` for the first that does not read."""
        for i in range(len(self)):
            self.image(i)
            if self.has_lateral(i):
                self.image(i, lateral=True)

    def record_ids(self) -> list[str]:
        column = self.columns["record_id"]
        return [column[i] for i in self.index.tolist()]

    def patient_ids(self) -> list[str]:
        column = self.columns["patient_id"]
        return [column[i] for i in self.index.tolist()]

    def splits(self) -> list[str]:
        column = self.columns["split"]
        return [column[i] for i in self.index.tolist()]

    def subset(self, indices: Sequence[int]) -> "ManifestDataset":
        """The records at `indices`, sharing this dataset's columns (no label mask carried over)."""
        sub = copy.copy(self)
        sub.index = self.index[np.asarray(indices, dtype=np.int64)]
        sub.keep_labels = None
        return sub

    def with_splits(self, splits: Sequence[str]) -> "ManifestDataset":
        """The same dataset with the split column replaced (a split made by patient)."""
        column = list(self.columns["split"])
        for i, side in zip(self.index.tolist(), splits):
            column[i] = sys.intern(side)
        self.columns["split"] = column
        return self


def _existing(root: Path, rel: str, column: str, resolved_root: Path) -> str:
    """A manifest path, checked to stay inside the dataset and to name a file (not decoded)."""
    rel = (rel or "").strip()
    if not rel:
        return ""
    path = dataset_file(root, rel, column, resolved_root)
    if not path.is_file():
        raise ValueError(f"{column} {rel}: image file is missing")
    return rel


class RecordView(Sequence):
    """A dataset's records as a sequence, read one at a time: with their images decoded
    (`images`), or without (what the split and the label counts read; no file is opened)."""

    def __init__(self, dataset, images: bool = True):
        self.dataset = dataset
        self.images = images
        self._get = dataset.__getitem__ if images else dataset.metadata

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(len(self)))]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._get(i)


class ConcatView(Sequence):
    """Two record sequences one after the other, neither copied (`train + holdout` of lazy views)."""

    def __init__(self, first: Sequence[Record], second: Sequence[Record]):
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.first[i] if i < len(self.first) else self.second[i - len(self.first)]


def concat_view(first: Sequence[Record], second: Sequence[Record]) -> Sequence[Record]:
    """`first + second`: a list when both are lists, else a `ConcatView` (nothing decoded)."""
    if isinstance(first, list) and isinstance(second, list):
        return first + second
    return ConcatView(first, second)


def metadata_view(records: Sequence[Record]) -> Sequence[Record]:
    """The records without their images: a `RecordView`'s metadata (no file is read), else the
    records as they are (already in memory)."""
    if isinstance(records, RecordView) and records.images:
        return RecordView(records.dataset, images=False)
    if isinstance(records, ConcatView):
        return ConcatView(metadata_view(records.first), metadata_view(records.second))
    return records


def subset_view(records: Sequence[Record], indices: Sequence[int]) -> Sequence[Record]:
    """The records at `indices`: a `RecordView` of the dataset's subset (nothing decoded), else a list."""
    if isinstance(records, RecordView) and hasattr(records.dataset, "subset"):
        return RecordView(records.dataset.subset(list(indices)), images=records.images)
    return [records[int(i)] for i in indices]


def has_images(records: Sequence[Record], lateral: bool = False) -> np.ndarray:
    """Whether each record has a frontal (or lateral) image, without decoding any."""
    if isinstance(records, ConcatView):
        return np.r_[has_images(records.first, lateral), has_images(records.second, lateral)].astype(bool)
    ds = records.dataset if isinstance(records, RecordView) else None
    if isinstance(ds, ManifestDataset):
        # A manifest row always names a frontal image (a required column, checked on opening).
        return ds.lateral[ds.index] if lateral else np.ones(len(ds), dtype=bool)
    return np.array([(r.lateral if lateral else r.image) is not None for r in records], dtype=bool)


def image_at(records: Sequence[Record], i: int, lateral: bool = False) -> Optional[np.ndarray]:
    """Record i's frontal (or lateral) image; from a manifest, only that file is decoded."""
    if isinstance(records, ConcatView):
        n = len(records.first)
        return image_at(records.first, i, lateral) if i < n else image_at(records.second, i - n, lateral)
    ds = records.dataset if isinstance(records, RecordView) else None
    if isinstance(ds, ManifestDataset):
        return ds.image(i, lateral) if not lateral or ds.has_lateral(i) else None
    rec = records[i]
    return rec.lateral if lateral else rec.image


class ImageColumn(Sequence):
    """One image of each of some records (`positions`, each frontal or lateral), decoded on
    access: a search over a dataset's images reads them a block at a time through this, and
    nothing holds them all."""

    def __init__(
        self,
        records: Sequence[Record],
        positions: Optional[Sequence[int]] = None,
        lateral: Optional[Sequence[bool]] = None,
    ):
        self.records = records
        self.positions = np.arange(len(records)) if positions is None else np.asarray(positions, dtype=np.int64)
        self.lateral = (
            np.zeros(len(self.positions), dtype=bool) if lateral is None else np.asarray(lateral, dtype=bool)
        )
        if len(self.lateral) != len(self.positions):
            raise ValueError(f"{len(self.positions)} positions but {len(self.lateral)} lateral flags")

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(len(self)))]
        if isinstance(i, (list, tuple, np.ndarray, torch.Tensor)):
            return [self._get(int(j)) for j in i]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._get(int(i) % len(self))

    def _get(self, j: int) -> np.ndarray:
        return image_at(self.records, int(self.positions[j]), bool(self.lateral[j]))


def as_dataset(records) -> Dataset:
    """A map-style dataset over `records`: itself when it already is one, else a RecordsDataset."""
    if isinstance(records, (RecordsDataset, ManifestDataset)):
        return records
    return RecordsDataset(records)


class IndexBatchSampler(Sampler[list[int]]):
    """Batches of indices into a dataset of `n` records, `steps` of them (forever when None).

    'shuffle': fixed-size batches from reshuffled epochs. 'poisson': each record joins a batch
    independently with probability batch_size / n, the sampling DP-SGD accounting assumes
    (batches vary in size and may be empty; Opacus' UniformWithReplacementSampler draws the same
    way). 'poisson-patient': each patient joins with probability batch_size / (number of
    patients) and brings one of their studies, drawn uniformly; a patient is then one row of the
    batch, so per-sample clipping bounds a patient's whole contribution and the accountant's
    sample rate is the patients' (patient-level DP).

    `rank` / `world_size`: data-parallel training. All ranks draw the same global batch (same
    seed) and rank r keeps positions r, r + world_size, ... of it.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        mode: str = "shuffle",
        patient_ids: Optional[Sequence[str]] = None,
        steps: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if n <= 0:
            raise InputError("no training records: the dataset (after the holdout split) is empty.")
        if mode not in ("shuffle", "poisson", "poisson-patient"):
            raise InputError(f"sampling {mode!r}: expected shuffle, poisson or poisson-patient.")
        self.n = n
        self.batch_size = min(batch_size, n)
        self.mode = mode
        self.rng = np.random.default_rng(seed)
        self.steps = steps
        self.rank, self.world_size = rank, world_size
        self._order: list[int] = []
        self.patients: list[list[int]] = []
        if mode == "poisson-patient":
            if patient_ids is None:
                raise InputError("poisson-patient sampling needs the records' patient ids.")
            groups: dict[str, list[int]] = {}
            for i, p in enumerate(patient_ids):
                groups.setdefault(p, []).append(i)
            self.patients = list(groups.values())
            self.batch_size = min(batch_size, len(self.patients))

    @property
    def units(self) -> int:
        """Privacy units the sample rate is taken over: patients or records."""
        return len(self.patients) if self.patients else self.n

    @property
    def sample_rate(self) -> float:
        return self.batch_size / self.units

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless sampler has no length")
        return self.steps

    def next_global(self) -> list[int]:
        """The next batch of all ranks together."""
        if self.mode == "poisson-patient":
            mask = self.rng.random(len(self.patients)) < self.sample_rate
            return [int(self.patients[i][self.rng.integers(len(self.patients[i]))]) for i in np.flatnonzero(mask)]
        if self.mode == "poisson":
            mask = self.rng.random(self.n) < self.sample_rate
            return [int(i) for i in np.flatnonzero(mask)]
        if len(self._order) < self.batch_size:
            self._order += [int(i) for i in self.rng.permutation(self.n)]
        take, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return take

    def __iter__(self) -> Iterator[list[int]]:
        done = 0
        while self.steps is None or done < self.steps:
            yield self.next_global()[self.rank :: self.world_size]
            done += 1


def record_loader(
    dataset: Dataset, sampler: IndexBatchSampler, workers: int = 0, device: Optional[torch.device] = None
) -> DataLoader:
    """Batches of records (`RecordBatch`) from `dataset` in the sampler's order; `workers`
    processes decode images ahead of the step; on CUDA the stacked images are pinned."""
    pin = device is not None and device.type == "cuda"
    extra = {"persistent_workers": False, "prefetch_factor": 2} if workers else {}
    # A generator of its own: a DataLoader draws its workers' base seed from it when iterated, and
    # from torch's global one without it, which would shift every random draw of the model's steps.
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_records,
        num_workers=workers,
        pin_memory=pin,
        generator=torch.Generator(),
        **extra,
    )
