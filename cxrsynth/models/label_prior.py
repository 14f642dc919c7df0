"""The label mix a family draws generation conditions from: label counts in, label sets out.

Fitted on a model's training records, or, in a federation, on the label counts the sites share
(`cxrsynth.client.task.label_counts`, merged over sites): counts only, never a record's labels.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from cxrsynth.data.records import LABELS, PATTERN, Record, empty_labels, finding_key, labels_from_findings_key

_VALUES = (1, 0, -1, None)


class LabelPrior:
    """The training label mix, for generation without explicit conditions.

    Whole label combinations are kept only when at least `min_count` records share them (a count,
    never a single record's labels); the rest of the mass is drawn label by label from marginals.
    """

    def __init__(self, patterns: list[tuple[dict, int]], marginals: dict[str, list[float]], rest: int):
        self.patterns = patterns
        self.marginals = marginals
        self.rest = rest

    @classmethod
    def fit(cls, records: Sequence[Record], min_count: int) -> "LabelPrior":
        labeled = [r.labels for r in records if r.has_labels()]
        counts = Counter(tuple(d.get(n) for n in LABELS) for d in labeled)
        patterns = [
            (dict(zip(LABELS, key)), c)
            for key, c in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
            if c >= min_count
        ]
        rest = len(labeled) - sum(c for _, c in patterns)
        marginals = {}
        for name in LABELS:
            vals = Counter(d.get(name) for d in labeled)
            total = max(len(labeled), 1)
            marginals[name] = [vals.get(v, 0) / total for v in _VALUES]
        return cls(patterns, marginals, rest)

    @classmethod
    def from_counts(cls, counts: dict[str, int], min_count: int) -> "LabelPrior":
        """The prior from label counts (cxrsynth.client.task.label_counts, merged over sites): whole
        combinations with at least `min_count` records, and per-label marginals for the rest."""
        labeled = int(counts.get("labeled", 0))
        patterns = [
            (labels_from_findings_key(key[len(PATTERN) :]), int(c))
            for key, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            if key.startswith(PATTERN) and c >= min_count
        ]
        rest = max(labeled - sum(c for _, c in patterns), 0)
        marginals = {}
        for name in LABELS:
            left = {}
            for v in (1, -1):
                in_patterns = sum(c for p, c in patterns if p[name] == v)
                left[v] = min(max(int(counts.get(finding_key(name, v), 0)) - in_patterns, 0), rest)
            p1, pu = (left[1] / rest, left[-1] / rest) if rest else (0.0, 0.0)
            pu = min(pu, 1.0 - p1)
            marginals[name] = [p1, 1.0 - p1 - pu, pu, 0.0]  # order of _VALUES: 1, 0, -1, None
        return cls(patterns, marginals, rest)

    def sample(self, n: int, rng: np.random.Generator) -> list[dict]:
        weights = np.array([c for _, c in self.patterns] + [self.rest], dtype=float)
        if weights.sum() <= 0:
            weights = np.array([0.0] * len(self.patterns) + [1.0])
        picks = rng.choice(len(weights), size=n, p=weights / weights.sum())
        out = []
        for k in picks:
            if k < len(self.patterns):
                out.append(dict(self.patterns[k][0]))
                continue
            d = empty_labels()
            for name in LABELS:
                p = np.asarray(self.marginals.get(name, [0, 0, 0, 1]), dtype=float)
                d[name] = _VALUES[rng.choice(4, p=p / p.sum())] if p.sum() > 0 else None
            out.append(d)
        return out

    def to_dict(self) -> dict:
        return {"patterns": [[p, c] for p, c in self.patterns], "marginals": self.marginals, "rest": self.rest}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelPrior":
        return cls(
            [(dict(p), int(c)) for p, c in d["patterns"]],
            {k: list(v) for k, v in d["marginals"].items()},
            int(d["rest"]),
        )
