"""One vocabulary for all sites, built from counts of frequent tokens (no report text travels).

A vocabulary fitted at each site would give each site different embedding shapes and token ids,
so their weights could not be averaged. Before round 1 the server asks every site for the counts
of the report tokens found at `federation.vocab_min_count` or more of its patients (plus its number of
reports), sums them, and fits the model's data-dependent parts once on count-equivalent
pseudo-reports: each kept token appears exactly its summed count, spread over as many reports
as the sites hold. The fitted extra state (vocabulary, tokenizer) then travels to every site
with the weights. A token frequent at no single site stays out: rare words never leave a site.
"""

from __future__ import annotations

from collections import Counter

from cxrsynth.data.records import Record
from cxrsynth.data.text import tokenize


def merge_counts(per_site: list[dict[str, int]]) -> Counter:
    total: Counter = Counter()
    for counts in per_site:
        total.update({t: int(c) for t, c in counts.items()})
    return total


def pseudo_reports(counts: Counter, n_reports: int) -> list[Record]:
    """Records whose reports hold each token exactly `counts[token]` times, over at most `n_reports` reports."""
    # Record.report puts "FINDINGS:" before the findings text, and the sites counted those tokens
    # too; each pseudo-report's own prefix is taken from the counts so the totals match.
    prefix = tokenize(Record("x", "x", "x", findings="x").report)[:-1]
    have = min(counts.get(t, 0) for t in prefix)
    n = max(1, min(n_reports, have) if have else n_reports)
    rest = Counter(counts)
    if have:
        for t in prefix:
            rest[t] -= n
    bins: list[list[str]] = [[] for _ in range(n)]
    i = 0
    for token in sorted(rest, key=lambda t: (-rest[t], t)):
        for _ in range(rest[token]):
            bins[i % n].append(token)
            i += 1
    return [Record(record_id=f"vocab{j}", patient_id=f"vocab{j}", study_id=f"vocab{j}", site="federated", findings=" ".join(b) or ".") for j, b in enumerate(bins)]
