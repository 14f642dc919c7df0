"""The dataset directory format: `manifest.csv` plus the PNG files it names.

Real, de-identified and synthetic datasets all use it (README.md, "Bring your data into the dataset format").
Reading validates every row; a bad row is reported with the file and row number and, unless
`strict`, skipped and counted in the returned `DatasetReport` so nothing is silently dropped.
"""

from __future__ import annotations

import codecs
import collections
import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrsynth.data.records import LABELS, SPLITS, VIEWS, Record, empty_labels
from cxrsynth.errors import InputError

MANIFEST = "manifest.csv"
BASE_COLUMNS = (
    "record_id",
    "patient_id",
    "study_id",
    "site",
    "split",
    "view",
    "image_path",
    "lateral_path",
    "findings",
    "impression",
)
COLUMNS = BASE_COLUMNS + LABELS + ("provenance",)
REQUIRED = ("record_id", "patient_id", "study_id", "image_path")


@dataclass
class Problem:
    file: str
    row: Optional[int]  # 1-based data row (header is row 0); None for whole-file problems
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}" + (f", row {self.row}" if self.row is not None else "")
        return f"{where}: {self.reason}"


@dataclass
class DatasetReport:
    """What a read or an ingest kept and what it skipped, with reasons."""

    read: int = 0
    kept: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # kept, but worth a look (e.g. no report text)
    notes: dict = field(
        default_factory=dict
    )  # what the reader did beyond rows (e.g. the label mapping), for the ingest report

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def add(self, file: str, row: Optional[int], reason: str) -> None:
        self.problems.append(Problem(str(file), row, reason))

    def warn(self, file: str, row: Optional[int], reason: str) -> None:
        self.warnings.append(Problem(str(file), row, reason))

    def as_dict(self) -> dict:
        reasons: dict[str, int] = {}
        for p in self.problems:
            key = reason_kind(p.reason)
            reasons[key] = reasons.get(key, 0) + 1
        return {
            "read": self.read,
            "kept": self.kept,
            "skipped": self.skipped,
            "skipped_by_reason": reasons,
            "problems": [{"file": p.file, "row": p.row, "reason": p.reason} for p in self.problems],
            "warnings": [{"file": p.file, "row": p.row, "reason": p.reason} for p in self.warnings],
            **self.notes,
        }


# Problem kinds for the skipped-by-reason counts, matched in order on the problem's text.
REASON_KINDS = (
    ("image file is missing", "missing image"),
    ("corrupt or not an image", "corrupt image"),
    ("unusable shape", "corrupt image"),
    ("not UTF-8", "non-UTF-8 text"),
    ("label value", "unknown label value"),
    ("malformed row", "malformed row"),
    ("DICOM", "unreadable DICOM"),
    ("duplicate record_id", "duplicate record"),
    ("no readable frontal", "no frontal image"),
    ("no frontal", "no frontal image"),
    ("not listed in", "image not in metadata"),
)


def reason_kind(reason: str) -> str:
    for needle, kind in REASON_KINDS:
        if needle in reason:
            return kind
    return "other"


def parse_label(value: str) -> Optional[int]:
    """Parse one label cell: '1', '0', '-1' (also '1.0' etc.) or empty; anything else is an error."""
    v = value.strip()
    if v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        raise ValueError(f"label value {value!r} is not one of 1, 0, -1 or empty") from None
    if f not in (1.0, 0.0, -1.0):
        raise ValueError(f"label value {value!r} is not one of 1, 0, -1 or empty")
    return int(f)


def load_png(path: Path) -> np.ndarray:
    """Read an image as a 2-D uint8 array; raise ValueError naming the problem."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "I;16", "I"):
                im = im.convert("L")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise ValueError("image file is missing") from None
    except Image.DecompressionBombError:
        raise ValueError(
            "image file claims more pixels than any radiograph has (a decompression bomb, or a corrupt header)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ValueError(f"image file is corrupt or not an image ({e.__class__.__name__})") from None
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
    if arr.ndim != 2 or min(arr.shape) < 4:
        raise ValueError(f"image has unusable shape {arr.shape}")
    return arr


def save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fixed PNG encoder settings so the same array always gives the same bytes.
    Image.fromarray(np.asarray(arr, dtype=np.uint8), mode="L").save(
        path, format="PNG", optimize=False, compress_level=6
    )


def read_dataset(
    root: str | Path,
    *,
    strict: bool = False,
    load_images: bool = True,
    report: Optional[DatasetReport] = None,
    with_phi: bool = True,
) -> tuple[list[Record], DatasetReport]:
    """Read a dataset directory. Bad rows are reported (file + row) and skipped, or raised if strict.

    With `with_phi`, a site dataset's `phi_headers.jsonl` (if any) fills `Record.phi_meta`, so
    de-identification can use the header PHI of data read back from disk.
    """
    root = Path(root)
    manifest, reader = open_manifest(root)
    report = report or DatasetReport()
    make = lambda row: _row_to_record(row, root, load_images)  # noqa: E731
    records = [rec for _, _, rec in checked_rows(reader, make, manifest, report, strict)]
    if with_phi and (root / PHI_HEADERS).is_file():
        headers = read_phi_headers(root)
        records = [r.with_(phi_meta=dict(headers[r.record_id])) if r.record_id in headers else r for r in records]
    return records, report


def open_manifest(root: Path) -> tuple[Path, "CsvRows"]:
    """(path, rows) of a dataset directory's manifest, its header checked against the format."""
    manifest = Path(root) / MANIFEST
    if not manifest.is_file():
        raise InputError(f"{manifest}: no manifest.csv here; a dataset is a directory with manifest.csv and its PNGs.")
    reader = csv_rows(manifest)
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"{manifest}: header lacks required column(s) {missing}; expected columns {list(COLUMNS)}.")
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise InputError(f"{manifest}: unknown column(s) {unknown}; expected columns {list(COLUMNS)}.")
    return manifest, reader


def checked_rows(
    rows: Iterable[dict],
    make: Callable[[dict], Record],
    file: Path,
    report: DatasetReport,
    strict: bool,
    duplicate: str = "record_id",
) -> Iterator[tuple[int, dict, Record]]:
    """(row number, row, record) for the CSV rows that make a record. A row that fails (ValueError)
    or repeats a record_id is named (file, row) and counted in `report`; with `strict` it is an
    InputError instead."""
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        report.read += 1
        try:
            check_utf8(row)
            rec = make(row)
            if rec.record_id in seen:
                value = rec.study_id if duplicate == "study" else rec.record_id
                raise ValueError(f"duplicate {duplicate} {value!r}")
            seen.add(rec.record_id)
        except ValueError as e:
            if strict:
                raise InputError(f"{file}, row {i}: {e}") from None
            report.add(str(file), i, str(e))
            continue
        report.kept += 1
        yield i, row, rec


class ByteLines:
    """The lines of a binary file as text (UTF-8; bytes that are not UTF-8 kept as surrogates, a
    leading byte-order mark dropped), split as a text file opened with newline="" splits them (at
    "\\n", "\\r\\n" and a lone "\\r", each kept on its line), with `offset`: the byte position
    after the last line returned. A CSV row read from it therefore has a byte span in the file,
    from which it can be read again later (`read_csv_row`) without keeping its text."""

    CHUNK = 1 << 20

    def __init__(self, f: io.BufferedIOBase):
        self.f = f
        self.pending: collections.deque[bytes] = collections.deque()
        self.carry = b""  # a line not known to be complete yet
        self.offset = 0

    def __iter__(self):
        return self

    def _fill(self) -> None:
        while not self.pending:
            chunk = self.f.read(self.CHUNK)
            data = self.carry + chunk
            self.carry = b""
            if not chunk:
                if data:
                    self.pending.append(data)
                return
            # bytes.splitlines breaks at exactly "\\n", "\\r\\n" and "\\r".
            lines = data.splitlines(keepends=True)
            if not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r"):
                self.carry = lines.pop()  # unfinished, or a "\\r" whose "\\n" is in the next chunk
            self.pending.extend(lines)

    def __next__(self) -> str:
        if not self.pending:
            self._fill()
            if not self.pending:
                raise StopIteration
        raw = self.pending.popleft()
        if self.offset == 0 and raw.startswith(codecs.BOM_UTF8):
            self.offset += len(codecs.BOM_UTF8)
            raw = raw[len(codecs.BOM_UTF8) :]
        self.offset += len(raw)
        return raw.decode("utf-8", "surrogateescape")

    def close(self) -> None:
        self.f.close()


class CsvRows:
    """The rows of a CSV text as dicts (csv.DictReader, strict quoting). A text that is not CSV
    (an unterminated quote, which would swallow every following row into one cell; a cell over
    the csv module's 128 KiB limit) is an InputError naming the file and the row where it starts:
    such a file cannot be read row by row, so no row of it is trusted.

    Over a file (`ByteLines`), `span` is the byte range (start, end) of the row last returned."""

    def __init__(self, path: Path, text: str | io.TextIOBase | ByteLines):
        self.path = Path(path)
        # A file is read as the rows are (a manifest of 10^5 studies is tens of MB of text).
        self._source = io.StringIO(text, newline="") if isinstance(text, str) else text
        self._lines = text if isinstance(text, ByteLines) else None
        self._reader = csv.DictReader(self._source, strict=True)
        self.span = (0, 0)
        try:
            self.fieldnames = self._reader.fieldnames
        except csv.Error as e:
            raise InputError(f"{path}, header: not valid CSV ({e}).") from None

    def __iter__(self):
        row, line = 0, self._reader.line_num
        try:
            while True:
                # csv reads no further than the row it returns, so the row's bytes lie between the
                # offset before and the offset after (blank lines before it included).
                start = self._lines.offset if self._lines else 0
                try:
                    item = next(self._reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    hint = (
                        "a cell longer than 131072 characters"
                        if "field limit" in str(e)
                        else "an unterminated or stray quote"
                    )
                    raise InputError(
                        f"{self.path}, row {row + 1} (line {line + 1}): not valid CSV ({e}; {hint}). Nothing of the file was read."
                    ) from None
                row, line = row + 1, self._reader.line_num
                if self._lines:
                    self.span = (start, self._lines.offset)
                yield item
        finally:
            self._source.close()


def csv_rows(path: Path) -> CsvRows:
    """The rows of a CSV file. Bytes that are not UTF-8 are kept as surrogates so the row holding
    them can be named and skipped (see `check_utf8`) instead of failing the whole file."""
    try:
        source = ByteLines(open(path, "rb"))
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e.__class__.__name__}).") from None
    try:
        reader = CsvRows(path, source)
    except BaseException:
        source.close()
        raise
    bad = [c for c in reader.fieldnames or [] if has_surrogates(c)]
    if bad:
        source.close()
        raise InputError(f"{path}: the header is not UTF-8 text; save the file as UTF-8.")
    return reader


def read_csv_row(path: Path, fieldnames: list[str], data: bytes) -> dict:
    """The row held by `data`, bytes of a CSV file between a row's span (`CsvRows.span`), as a
    dict over `fieldnames` as csv.DictReader makes it."""
    text = data.decode("utf-8", "surrogateescape")
    try:
        return next(csv.DictReader(io.StringIO(text, newline=""), fieldnames=fieldnames, strict=True))
    except (csv.Error, StopIteration) as e:
        raise InputError(f"{path}: the file changed while it was read (a row no longer reads: {e!r}).") from None


_SURROGATES = re.compile("[\udc80-\udcff]")


def has_surrogates(text: str) -> bool:
    return not text.isascii() and _SURROGATES.search(text) is not None


def check_utf8(row: dict) -> None:
    """ValueError naming the first column whose cell held bytes that are not UTF-8."""
    for key, value in row.items():
        if isinstance(value, str) and has_surrogates(value):
            raise ValueError(f"column {key!r} is not UTF-8 text; save the file as UTF-8")


def _row_to_record(row: dict, root: Path, load_images: bool) -> Record:
    if None in row:  # csv puts surplus cells under the None key
        raise ValueError(f"malformed row: {len(row[None])} more cell(s) than header columns")
    for col in REQUIRED:
        if not (row.get(col) or "").strip():
            raise ValueError(f"malformed row: required column {col!r} is empty")
    view = (row.get("view") or "PA").strip().upper()
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is not one of {list(VIEWS)}")
    split = (row.get("split") or "").strip()
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of 'train', 'holdout' or empty")
    labels = empty_labels()
    for name in LABELS:
        try:
            labels[name] = parse_label(row.get(name) or "")
        except ValueError as e:
            raise ValueError(f"column {name!r}: {e}") from None
    image = lateral = None
    if load_images:
        image = _load_rel(root, row["image_path"], "image_path")
        if (row.get("lateral_path") or "").strip():
            lateral = _load_rel(root, row["lateral_path"], "lateral_path")
    return Record(
        record_id=row["record_id"].strip(),
        patient_id=row["patient_id"].strip(),
        study_id=row["study_id"].strip(),
        site=(row.get("site") or "").strip(),
        split=split,
        view=view,
        findings=row.get("findings") or "",
        impression=row.get("impression") or "",
        labels=labels,
        image=image,
        lateral=lateral,
        provenance=row.get("provenance") or "",
    )


def dataset_file(root: Path, rel: str, column: str, resolved_root: Optional[Path] = None) -> Path:
    """The file a manifest path names, symbolic links followed, checked to stay inside the dataset
    directory. `resolved_root`: `root.resolve()`, when the caller has it already."""
    path = (root / rel.strip()).resolve()
    if (resolved_root or root.resolve()) not in path.parents:
        raise ValueError(f"{column} {rel.strip()!r} points outside the dataset directory")
    return path


def _load_rel(root: Path, rel: str, column: str) -> np.ndarray:
    return load_image_file(dataset_file(root, rel, column), column, rel)


def load_image_file(path: Path | str, column: str, rel: str) -> np.ndarray:
    """`load_png`, its error naming the manifest column and path."""
    try:
        return load_png(path)
    except ValueError as e:
        raise ValueError(f"{column} {rel.strip()}: {e}") from None


def image_relpath(record: Record, lateral: bool = False) -> str:
    """images/<record id, made file-safe>-<hash of the id>.png. The hash keeps ids that differ only
    in characters the safe form maps to "_" ("a/b", "a b", "a_b") or in letter case apart."""
    import hashlib

    safe = (
        "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in record.record_id)[:80].lstrip(".")
        or "_"
    )
    tag = hashlib.sha256(record.record_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"images/{safe}-{tag}{'_lat' if lateral else ''}.png"


def write_dataset(root: str | Path, records: Iterable[Record], progress=None) -> Path:
    """Write records as a dataset directory (manifest.csv + PNGs). Returns the manifest path.

    PHI header fields (`Record.phi_meta`) are never written here; see `write_phi_headers`.
    `progress` (a `cxrsynth.progress.Progress`) reports long writes.
    """
    records = list(records)
    dup = _first_duplicate(r.record_id for r in records)
    if dup is not None:
        raise InputError(f"record_id {dup!r} appears twice; record ids must be unique in a dataset.")
    task = progress.task("writing images", len(records)) if progress is not None else None
    writer = DatasetWriter(root)
    for rec in records:
        if task is not None:
            task.advance()
        writer.add(rec)
    return writer.close()


class DatasetWriter:
    """Writes a dataset one record at a time: each record's PNGs and manifest row when it is added,
    the row into `manifest.csv.tmp`, which `close` puts in place of the manifest. Memory holds no
    image or row of a record once added, only the record ids seen.

    `keep`: rows of the folder's existing manifest to carry into the new one, as a function of a
    row (dict) returning whether to keep it; their PNGs stay where they are. Rows are kept in the
    order they stand, before the records added here."""

    def __init__(self, root: str | Path, keep: Optional[Callable[[dict], bool]] = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._ids: set[str] = set()
        self.manifest = self.root / MANIFEST
        self._tmp = self.manifest.with_suffix(".csv.tmp")
        self._file = open(self._tmp, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=list(COLUMNS), lineterminator="\n")
        self._writer.writeheader()
        self.kept = 0
        if keep is not None and self.manifest.is_file():
            for row in csv_rows(self.manifest):
                if keep(row):
                    self._ids.add(row["record_id"].strip())
                    self._writer.writerow({c: row.get(c) or "" for c in COLUMNS})
                    self.kept += 1

    def add(self, rec: Record) -> None:
        if rec.record_id in self._ids:
            raise InputError(f"record_id {rec.record_id!r} appears twice; record ids must be unique in a dataset.")
        if rec.image is None:
            raise InputError(f"record {rec.record_id}: has no image to write")
        self._ids.add(rec.record_id)
        img_rel = image_relpath(rec)
        save_png(rec.image, self.root / img_rel)
        lat_rel = ""
        if rec.lateral is not None:
            lat_rel = image_relpath(rec, lateral=True)
            save_png(rec.lateral, self.root / lat_rel)
        row = {
            "record_id": rec.record_id,
            "patient_id": rec.patient_id,
            "study_id": rec.study_id,
            "site": rec.site,
            "split": rec.split,
            "view": rec.view,
            "image_path": img_rel,
            "lateral_path": lat_rel,
            "findings": rec.findings,
            "impression": rec.impression,
            "provenance": rec.provenance,
        }
        for name in LABELS:
            v = rec.labels.get(name)
            row[name] = "" if v is None else str(int(v))
        self._writer.writerow(row)

    def close(self) -> Path:
        self._file.close()
        self._tmp.replace(self.manifest)
        return self.manifest


def _first_duplicate(items) -> Optional[str]:
    seen: set = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None


def split_overlap(records: Iterable[Record]) -> int:
    """How many patients have records on both sides of the train/holdout split."""
    first: dict[str, str] = {}  # each patient's first split: one entry a patient, not a set
    both: set[str] = set()
    for r in records:
        if r.split:
            if first.setdefault(r.patient_id, r.split) != r.split:
                both.add(r.patient_id)
    return len(both)


def require_patient_split(records: Iterable[Record], where: str) -> None:
    """InputError when a patient is on both sides of the split (counted, never named: the ids
    are the site's)."""
    n = split_overlap(records)
    if n:
        raise InputError(
            f"{where}: {n} patient(s) have records in both train and holdout; the split must be by patient (no patient on both sides). Fix the split, or leave it empty to have it made by patient."
        )


def stray_files(root: str | Path) -> list[str]:
    """Entries of a dataset folder that its manifest does not name (besides manifest.csv): files
    that would otherwise ride along unaudited, and anything that is not a regular file."""
    import posixpath
    import stat

    root = Path(root)
    listed = {MANIFEST}
    for row in csv_rows(root / MANIFEST):
        for col in ("image_path", "lateral_path"):
            rel = (row.get(col) or "").strip()
            if rel:
                listed.add(posixpath.normpath(rel.replace("\\", "/")))
    stray = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        if not dirnames and not filenames and base != root:
            stray.append(base.relative_to(root).as_posix() + "/ (an empty folder)")
        for name in sorted(filenames) + sorted(d for d in dirnames if (base / d).is_symlink()):
            p = base / name
            rel = p.relative_to(root).as_posix()
            mode = p.lstat().st_mode
            if not stat.S_ISREG(mode):
                stray.append(f"{rel} (not a regular file)")
            elif rel not in listed:
                stray.append(rel)
    return sorted(stray)


PHI_HEADERS = "phi_headers.jsonl"


def write_phi_headers(root: str | Path, records: Iterable[Record], keep_existing: bool = False) -> Optional[Path]:
    """Write `Record.phi_meta` as JSON lines `{"id", "meta"}` to `phi_headers.jsonl` in the dataset dir.

    The file is site-only: de-identification reads it (header PHI to find in the text and to
    replace), and it must never leave the site. Returns the path, or None when no record has PHI.
    Written as the records come, in their order; with `keep_existing`, the file's earlier lines
    follow, but for the records given here (a record written again is replaced, also when it no
    longer has PHI). Memory holds the record ids, not the headers.
    """
    import json

    root = Path(root)
    path = root / PHI_HEADERS
    tmp = path.with_suffix(".jsonl.tmp")
    if tmp.exists():
        tmp.unlink()
    seen: set[str] = set()
    lines = 0
    # Site-only PHI: readable by the site's own account only, from the moment it exists.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
        for rec in records:
            seen.add(rec.record_id)
            if rec.phi_meta:
                item = {"id": rec.record_id, "meta": dict(rec.phi_meta)}
                f.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
                lines += 1
        if keep_existing and path.is_file():
            with open(path, "rb") as old:
                for i, raw in enumerate(old, start=1):
                    entry = phi_line(path, i, raw)
                    if entry is not None and entry[0] not in seen:
                        f.write(raw.decode("utf-8").rstrip("\r\n") + "\n")
                        lines += 1
    if not lines:  # no record has PHI (any earlier entries were all replaced)
        tmp.unlink()
        path.unlink(missing_ok=True)
        return None
    tmp.replace(path)
    return path


def phi_line(path: Path, i: int, raw: bytes) -> Optional[tuple[str, dict[str, str]]]:
    """(record id, header fields) of line `i` of a `phi_headers.jsonl`, None for a blank line."""
    import json

    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}, line {i}: not UTF-8 text; the file holds one JSON object a line, UTF-8.") from None
    if not line.strip():
        return None
    try:
        item = json.loads(line)
        return str(item["id"]), {str(k): str(v) for k, v in item["meta"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(
            f'{path}, line {i}: expected {{"id": ..., "meta": {{...}}}} ({e.__class__.__name__}).'
        ) from None


def read_phi_headers(root: str | Path) -> dict[str, dict[str, str]]:
    """record_id -> PHI header fields, from `phi_headers.jsonl` (empty when the file is absent)."""
    path = Path(root) / PHI_HEADERS
    if not path.is_file():
        return {}
    out = {}
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            entry = phi_line(path, i, raw)
            if entry is not None:
                out[entry[0]] = entry[1]
    return out
