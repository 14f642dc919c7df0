"""Reading radiology report text: UTF-8 checks and FINDINGS / IMPRESSION sections."""

from __future__ import annotations

import re
from pathlib import Path

# A section header is an upper-case line start ending in a colon ("FINDINGS:", "WET READ:"), or a
# known section name inside a line ("... FINDINGS: x IMPRESSION: y", as one-line exports have it).
_HEADER = re.compile(
    r"(?m)(?:^[ \t]*([A-Z][A-Z /&()-]{2,40})|\b(FINDINGS|IMPRESSION|CONCLUSION|INDICATION|TECHNIQUE|COMPARISON|HISTORY)):"
)


def read_report_file(path: Path) -> str:
    """The text of a report file; ValueError naming the byte and line when it is not UTF-8."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"report file cannot be read ({e.strerror or e.__class__.__name__})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"report is not UTF-8 text (byte {e.start}, line {line}); re-save it as UTF-8") from None


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def sections(text: str) -> tuple[str, str]:
    """(findings, impression) of a report. Without either header, the whole text is the findings."""
    if not text:
        return "", ""
    heads = list(_HEADER.finditer(text))
    found: dict[str, str] = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        name = (m.group(1) or m.group(2)).strip().upper()
        if name in ("FINDINGS", "IMPRESSION", "CONCLUSION") and name not in found:
            found[name] = _clean(text[m.end() : end])
    impression = found.get("IMPRESSION") or found.get("CONCLUSION", "")
    if "FINDINGS" not in found and not impression:
        return _clean(text), ""
    return found.get("FINDINGS", ""), impression
