"""Report metrics against references: BLEU-1..4, ROUGE-L and CIDEr-D.

Each candidate may have several references. Definitions follow the MS-COCO caption evaluation
code most report-generation papers use: corpus BLEU with clipped n-gram counts and the closest
reference length for the brevity penalty (Papineni et al., 2002); ROUGE-L as the LCS F-measure
with beta = 1.2, the best over references (Lin, 2004); CIDEr-D with TF-IDF n-gram vectors
(n = 1..4), clipping, a Gaussian length penalty (sigma = 6) and the factor 10 (Vedantam et al.,
2015, sec. 4). Tokens come from `cxrsynth.data.text.tokenize`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from cxrsynth.data.text import tokenize

ROUGE_BETA = 1.2  # COCO caption evaluation's ROUGE-L
CIDER_SIGMA = 6.0  # Vedantam et al. 2015, CIDEr-D length penalty


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> dict[str, float]:
    """BLEU-1..max_n over the corpus; `references[i]` are the references of `candidates[i]`."""
    matches = [0] * max_n
    totals = [0] * max_n
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        c = tokenize(cand)
        rs = [tokenize(r) for r in refs]
        cand_len += len(c)
        ref_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1] if rs else 0
        for n in range(1, max_n + 1):
            cn = ngrams(c, n)
            most: Counter = Counter()
            for r in rs:
                most |= ngrams(r, n)
            matches[n - 1] += sum(min(k, most[g]) for g, k in cn.items())
            totals[n - 1] += max(len(c) - n + 1, 0)
    if cand_len == 0:
        return {f"bleu_{n}": 0.0 for n in range(1, max_n + 1)}
    bp = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    out = {}
    log_sum = 0.0
    for n in range(1, max_n + 1):
        p = matches[n - 1] / totals[n - 1] if totals[n - 1] else 0.0
        log_sum += math.log(p) if p > 0 else float("-inf")
        out[f"bleu_{n}"] = bp * math.exp(log_sum / n) if log_sum > float("-inf") else 0.0
    return out


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, references: Sequence[str]) -> float:
    c = tokenize(candidate)
    if not c or not references:
        return 0.0
    precs, recs = [], []
    for ref in references:
        r = tokenize(ref)
        lcs = _lcs(c, r)
        precs.append(lcs / len(c))
        recs.append(lcs / len(r) if r else 0.0)
    p, r = max(precs), max(recs)
    if p == 0 or r == 0:
        return 0.0
    return (1 + ROUGE_BETA**2) * p * r / (r + ROUGE_BETA**2 * p)


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> list[float]:
    """CIDEr-D of each candidate; document frequencies come from this corpus's reference sets."""
    cand_toks = [tokenize(c) for c in candidates]
    ref_toks = [[tokenize(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in ref_toks:
        seen = set()
        for r in refs:
            for n in range(1, max_n + 1):
                seen |= set(ngrams(r, n))
        df.update(seen)
    log_n = math.log(max(len(ref_toks), 1))

    def vectors(tokens):
        vecs, norms = [], []
        for n in range(1, max_n + 1):
            v = {g: k * (log_n - math.log(max(1.0, df[g]))) for g, k in ngrams(tokens, n).items()}
            vecs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vecs, norms

    scores = []
    for c, refs in zip(cand_toks, ref_toks):
        cv, cn = vectors(c)
        total = [0.0] * max_n
        for r in refs:
            rv, rn = vectors(r)
            penalty = math.exp(-((len(c) - len(r)) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(max_n):
                dot = sum(min(x, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, x in cv[n].items())
                if cn[n] and rn[n]:
                    total[n] += penalty * dot / (cn[n] * rn[n])
        scores.append(10.0 * sum(total) / max_n / max(len(refs), 1))
    return scores


def report_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4, mean ROUGE-L and mean CIDEr-D of candidate reports against their references."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    if not candidates:
        return {}
    out = corpus_bleu(candidates, references)
    out["rouge_l"] = sum(rouge_l(c, r) for c, r in zip(candidates, references)) / len(candidates)
    out["cider_d"] = sum(cider_d(candidates, references)) / len(candidates)
    out["n"] = len(candidates)
    return out
