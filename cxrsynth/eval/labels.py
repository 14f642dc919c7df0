"""Label agreement: do a report's words say what the record's labels say?

Reports are labelled by `cxrsynth.data.labeler.label_report`, a negation- and uncertainty-aware
rule labeler in the CheXpert style (mention, negation, uncertainty), and compared with the record's
labels: exact agreement over all 14 labels (1, 0, -1 or not mentioned) and, per label, the F1 of
"positive" between the two.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cxrsynth.data.labeler import label_report
from cxrsynth.data.records import LABELS, Record


def label_agreement(records: Sequence[Record], label_report: Callable[[str], dict] = label_report) -> dict:
    # Counts, one record at a time: `records` may be a lazy view of a dataset of any size.
    n, exact, all_agree = 0, 0, 0
    tp, pred, truth = (np.zeros(len(LABELS), np.int64) for _ in range(3))
    for r in records:
        if not (r.report.strip() and r.has_labels()):
            continue
        said = label_report(r.report)
        agree = np.array([said.get(k) == r.labels.get(k) for k in LABELS])
        p = np.array([said.get(k) == 1 for k in LABELS])
        t = np.array([r.labels.get(k) == 1 for k in LABELS])
        n, exact, all_agree = n + 1, exact + int(agree.sum()), all_agree + bool(agree.all())
        tp, pred, truth = tp + (p & t), pred + p, truth + t
    if not n:
        return {"n": 0}
    per_label = {
        k: (2 * int(tp[j]) / int(pred[j] + truth[j]) if pred[j] + truth[j] else None) for j, k in enumerate(LABELS)
    }
    defined = [v for v in per_label.values() if v is not None]
    return {
        "n": n,
        "exact_agreement": exact / (n * len(LABELS)),
        "record_all_agree": all_agree / n,
        "positive_f1": per_label,
        "macro_positive_f1": float(np.mean(defined)) if defined else None,
    }
