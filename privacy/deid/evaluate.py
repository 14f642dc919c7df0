"""Recall and precision per entity type against a gold file, and damage to medical terms.

A gold PHI span counts as found only if every one of its characters is covered by some finding
(of any type: a name redacted as a place is still removed). A finding is correct if it overlaps a
gold span. A `keep` span is damaged if any finding overlaps it (the replacement would change it).
"""

from __future__ import annotations

import time
from pathlib import Path

from cxrsynth.errors import InputError
from cxrsynth.privacy.deid.deidentifier import Deidentifier, Finding
from cxrsynth.privacy.deid.jsonl import read_jsonl


def read_gold(path: str | Path) -> list[dict]:
    path = Path(path)
    rows = []
    for i, row in read_jsonl(path, "gold file"):
        if not isinstance(row.get("text"), str) or not isinstance(row.get("gold", []), list):
            raise InputError(
                f'{path}, line {i}: expected {{"id", "text", "meta", "gold": [{{start, end, type}}], "keep": [{{start, end}}]}}.'
            )
        for s in row.get("gold", []) + row.get("keep", []):
            if not (
                isinstance(s, dict)
                and isinstance(s.get("start"), int)
                and isinstance(s.get("end"), int)
                and 0 <= s["start"] < s["end"] <= len(row["text"])
            ):
                raise InputError(f"{path}, line {i}: span {s!r} is not inside the text (0..{len(row['text'])}).")
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no reports in the gold file.")
    return rows


def score(rows: list[dict], findings: list[list[Finding]]) -> dict:
    per: dict[str, dict] = {}

    def slot(t: str) -> dict:
        return per.setdefault(t, {"gold": 0, "found": 0, "predicted": 0, "correct": 0})

    damaged, keep_total, missed = 0, 0, []
    for row, found in zip(rows, findings):
        covered = set()
        for f in found:
            covered.update(range(f.start, f.end))
        for g in row.get("gold", []):
            s = slot(g["type"])
            s["gold"] += 1
            if all(i in covered for i in range(g["start"], g["end"])):
                s["found"] += 1
            else:
                missed.append({"id": row.get("id"), "type": g["type"], "start": g["start"], "end": g["end"]})
        for f in found:
            s = slot(f.type)
            s["predicted"] += 1
            s["correct"] += any(f.start < g["end"] and g["start"] < f.end for g in row.get("gold", []))
        for k in row.get("keep", []):
            keep_total += 1
            damaged += any(f.start < k["end"] and k["start"] < f.end for f in found)
    out = {}
    for t, s in sorted(per.items()):
        out[t] = {
            **s,
            "recall": s["found"] / s["gold"] if s["gold"] else None,
            "precision": s["correct"] / s["predicted"] if s["predicted"] else None,
        }
    g = sum(s["gold"] for s in per.values())
    p = sum(s["predicted"] for s in per.values())
    overall = {
        "gold": g,
        "found": sum(s["found"] for s in per.values()),
        "predicted": p,
        "correct": sum(s["correct"] for s in per.values()),
    }
    overall["recall"] = overall["found"] / g if g else None
    overall["precision"] = overall["correct"] / p if p else None
    return {
        "reports": len(rows),
        "per_type": out,
        "overall": overall,
        "keep_spans": keep_total,
        "keep_damaged": damaged,
        "missed": missed,
    }


def evaluate_gold(path: str | Path, deid: Deidentifier) -> dict:
    rows = read_gold(path)
    t0 = time.perf_counter()
    findings = [deid.find(r["text"], r.get("meta") or None) for r in rows]
    result = score(rows, findings)
    result["seconds"] = time.perf_counter() - t0
    result["gold_file"] = str(path)
    return result


def format_table(result: dict) -> str:
    lines = [f"{'type':10} {'gold':>6} {'recall':>8} {'predicted':>10} {'precision':>10}"]
    for t, s in result["per_type"].items():
        r = "-" if s["recall"] is None else f"{s['recall']:.4f}"
        p = "-" if s["precision"] is None else f"{s['precision']:.4f}"
        lines.append(f"{t:10} {s['gold']:>6} {r:>8} {s['predicted']:>10} {p:>10}")
    o = result["overall"]
    lines.append(f"{'ALL':10} {o['gold']:>6} {o['recall']:>8.4f} {o['predicted']:>10} {o['precision']:>10.4f}")
    lines.append(
        f"keep spans damaged: {result['keep_damaged']} of {result['keep_spans']}   ({result['reports']} reports, {result['seconds']:.1f} s)"
    )
    return "\n".join(lines)
