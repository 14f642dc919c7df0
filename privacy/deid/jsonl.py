"""JSON-lines input, refused line by line with the file and line number."""

from __future__ import annotations

import json
from pathlib import Path

from cxrsynth.errors import InputError


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-empty line; `what` names the file's role in messages."""
    path = Path(path)
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read the {what} ({e.strerror}).") from None
    rows = []
    for i, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InputError(f"{path}, line {i}: not UTF-8 (byte {e.start}); re-encode the file as UTF-8.") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {i}: not valid JSON ({e.msg}, column {e.colno}).") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}, line {i}: expected a JSON object, got {type(row).__name__}.")
        rows.append((i, row))
    return rows
