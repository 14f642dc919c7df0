"""Site partitioning for simulations: split records into k sites, keeping each patient whole.

Modes:
- `by-site`: the sites the records already name (sorted; with more sites than k, site i joins
  partition i mod k);
- `iid`: patients dealt at random, so every partition has the same label mix in expectation;
- `dirichlet`: label skew as in Hsu et al. 2019 ("Measuring the effects of non-identical data
  distribution for federated visual classification", their synthetic non-identical client
  data): each patient gets one class (its rarest positive label, else "No Finding"), and each
  class is shared among the partitions by proportions drawn from Dirichlet(alpha); small
  alpha, strong skew.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from cxrsynth.data.records import LABELS, Record
from cxrsynth.errors import InputError

MODES = ("by-site", "iid", "dirichlet")


def _by_patient(records: Sequence[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.patient_id, []).append(r)
    return groups


def _patient_class(recs: list[Record], frequency: Counter) -> str:
    positives = {n for r in recs for n in LABELS if r.labels.get(n) == 1 and n != "No Finding"}
    return min(positives, key=lambda n: (frequency[n], n)) if positives else "No Finding"


def partition(
    records: Sequence[Record], k: int, mode: str = "by-site", alpha: float = 0.5, seed: int = 0
) -> list[list[Record]]:
    """Split `records` into `k` non-empty partitions; no patient is in two partitions."""
    if mode not in MODES:
        raise InputError(f"partition mode {mode!r} is not one of {list(MODES)}.")
    if k < 1:
        raise InputError(f"partition: k must be at least 1 (got {k}).")
    groups = _by_patient(records)
    if len(groups) < k:
        raise InputError(f"partition: {len(groups)} patient(s) cannot fill {k} sites; use fewer sites or more data.")
    rng = np.random.default_rng(seed)
    patients = sorted(groups)
    parts: list[list[str]] = [[] for _ in range(k)]
    if mode == "by-site":
        sites = sorted({r.site for r in records})
        if len(sites) < k:
            raise InputError(
                f"partition by-site: the records name {len(sites)} site(s) {sites} but {k} are asked for; "
                "use partition iid or dirichlet to split one site's data."
            )
        index = {s: i % k for i, s in enumerate(sites)}
        for p in patients:
            parts[index[groups[p][0].site]].append(p)
    elif mode == "iid":
        for j, i in enumerate(rng.permutation(len(patients))):
            parts[j % k].append(patients[i])
    else:
        if alpha <= 0:
            raise InputError(f"partition dirichlet: alpha must be > 0 (got {alpha}).")
        frequency = Counter(n for r in records for n in LABELS if r.labels.get(n) == 1)
        by_class: dict[str, list[str]] = {}
        for p in patients:
            by_class.setdefault(_patient_class(groups[p], frequency), []).append(p)
        for cls in sorted(by_class):
            members = [by_class[cls][i] for i in rng.permutation(len(by_class[cls]))]
            shares = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
            for j, chunk in enumerate(np.split(np.array(members, dtype=object), cuts)):
                parts[j].extend(chunk.tolist())
        # Every site must train on something: move patients from the largest partition to empty ones.
        for j in range(k):
            while not parts[j]:
                donor = max(range(k), key=lambda i: len(parts[i]))
                parts[j].append(parts[donor].pop())
    return [[r for p in part for r in groups[p]] for part in parts]


def label_skew(parts: Sequence[Sequence[Record]]) -> float:
    """Mean total-variation distance between each partition's label mix and the pooled mix (0: identical)."""

    def mix(recs):
        v = np.array([sum(r.labels.get(n) == 1 for r in recs) for n in LABELS], dtype=float)
        return v / max(v.sum(), 1.0)

    pooled = mix([r for p in parts for r in p])
    return float(np.mean([0.5 * np.abs(mix(p) - pooled).sum() for p in parts]))
