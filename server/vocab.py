"""One vocabulary for all sites, built from counts of frequent tokens (no report text travels).

A vocabulary fitted at each site would give each site different embedding shapes and token ids,
so their weights could not be averaged. Before round 1 the server asks every site for the counts
of the report tokens found at `federation.vocab_min_count` or more of its patients (plus its number of
reports), sums them, and fits the model's data-dependent parts once from those counts
(`GenerativeModel.setup_from_counts`). The fitted extra state (vocabulary, tokenizer) then
travels to every site with the weights. A token frequent at no single site stays out: rare words
never leave a site.
"""

from __future__ import annotations

from collections import Counter


def merge_counts(per_site: list[dict[str, int]]) -> Counter:
    total: Counter = Counter()
    for counts in per_site:
        total.update({t: int(c) for t, c in counts.items()})
    return total
