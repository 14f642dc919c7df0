"""Label agreement: do a report's words say what the record's labels say?

Reports are labelled by `cxrsynth.data.labeler.label_report`, a negation- and uncertainty-aware
rule labeler in the CheXpert style (mention, negation, uncertainty), and compared with the record's
labels: exact agreement over all 14 labels (1, 0, -1 or not mentioned) and, per label, the F1 of
"positive" between the two.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from cxrsynth.data.labeler import label_report
from cxrsynth.data.records import LABELS, Record


def _f1(pred: np.ndarray, truth: np.ndarray) -> Optional[float]:
    tp = int((pred & truth).sum())
    denom = int(pred.sum() + truth.sum())
    return 2 * tp / denom if denom else None


def label_agreement(records: Sequence[Record], label_report: Callable[[str], dict] = label_report) -> dict:
    rows = [r for r in records if r.report.strip() and r.has_labels()]
    if not rows:
        return {"n": 0}
    said = [label_report(r.report) for r in rows]
    exact = np.array([[s.get(k) == r.labels.get(k) for k in LABELS] for s, r in zip(said, rows)])
    pred = np.array([[s.get(k) == 1 for k in LABELS] for s in said])
    truth = np.array([[r.labels.get(k) == 1 for k in LABELS] for r in rows])
    per_label = {k: _f1(pred[:, j], truth[:, j]) for j, k in enumerate(LABELS)}
    defined = [v for v in per_label.values() if v is not None]
    return {
        "n": len(rows),
        "exact_agreement": float(exact.mean()),
        "record_all_agree": float(exact.all(axis=1).mean()),
        "positive_f1": per_label,
        "macro_positive_f1": float(np.mean(defined)) if defined else None,
    }
