"""PHI in synthetic reports: the de-identification analyzer (cxrsynth.privacy.deid) over every report.

Fails closed: if the analyzer cannot be loaded or raises, the check fails with that reason; a
synthetic set is never passed as PHI-free without having been scanned.
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Callable, Sequence

from cxrsynth.data.records import Record


def _scanner() -> Callable:
    try:
        return importlib.import_module("cxrsynth.privacy.deid").scan_phi
    except (ImportError, AttributeError):
        # The package may not re-export it yet; the function lives in the deidentifier module.
        return importlib.import_module("cxrsynth.privacy.deid.deidentifier").scan_phi


def phi_scan(synthetic: Sequence[Record], max_findings: int = 0) -> dict:
    """Findings per type and the IDs of reports holding any; never the text under a finding."""
    if not any(r.report.strip() for r in synthetic):
        return {
            "passed": True,
            "status": "no_reports",
            "findings": 0,
            "reports": [],
            "threshold": max_findings,
            "note": "no synthetic record holds report text: nothing to scan",
        }
    try:
        scan = _scanner()
        findings = scan([r.report for r in synthetic])
    except Exception as e:  # noqa: BLE001 - any failure of the analyzer fails the check closed
        return {
            "passed": False,
            "status": "error",
            "reason": f"the PHI analyzer (cxrsynth.privacy.deid.scan_phi) failed: {e.__class__.__name__}: {str(e)[:300]}",
        }
    if len(findings) != len(synthetic):
        return {
            "passed": False,
            "status": "error",
            "reason": f"the PHI analyzer returned {len(findings)} result(s) for {len(synthetic)} report(s)",
        }
    by_type: Counter = Counter(f.type for fs in findings for f in fs)
    total = sum(by_type.values())
    return {
        "passed": total <= max_findings,
        "status": "ran",
        "findings": total,
        "by_type": dict(by_type),
        "reports": [r.record_id for r, fs in zip(synthetic, findings) if fs],
        "threshold": max_findings,
    }
