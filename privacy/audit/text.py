"""Text leakage at one site: rare training n-grams in synthetic reports, MinHash near-duplicates,
and nearest neighbours in a local sentence-embedding model's space.

A phrase many patients share ("No pneumothorax.") is not a leak; an n-gram that fewer than k
training reports contain is specific to those patients, and a synthetic report that reproduces
it has memorized them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from datasketch import MinHash, MinHashLSH

from cxrsynth.config import AuditPolicy
from cxrsynth.data.records import Record
from cxrsynth.data.text import split_sentences, tokenize
from cxrsynth.errors import InputError

SHINGLE = 3  # word 3-grams: the usual shingle for near-duplicate detection of short documents
NUM_PERM = 128


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams within sentences: a pair of common sentences in a rare order is no phrase."""
    out = set()
    for sentence in split_sentences(text):
        toks = tokenize(sentence)
        out.update(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
    return out


def rare_ngram_leaks(
    synthetic: Sequence[Record], train: Sequence[Record], holdout: Sequence[Record], policy: AuditPolicy
) -> dict:
    """Synthetic reports holding an n-gram that occurs in 1..k-1 training reports.

    Holdout reports run through the same test give the baseline: how often unseen patients'
    reports share a rare n-gram with training by chance.
    """
    n, k = policy.rare_ngram_n, policy.rare_ngram_k
    df: Counter = Counter()
    for r in train:
        df.update(ngrams(r.report, n))

    def leaks(rec: Record) -> int:
        return sum(1 for g in ngrams(rec.report, n) if 0 < df[g] < k)

    counts = [leaks(r) for r in synthetic]
    hold = [leaks(r) for r in holdout]
    return {
        "n": n,
        "k": k,
        "leaking_reports": [r.record_id for r, c in zip(synthetic, counts) if c],
        "leaked_ngrams": int(sum(counts)),
        "holdout_leak_rate": float(np.mean([c > 0 for c in hold])) if hold else 0.0,
    }


def _minhash(text: str) -> Optional[MinHash]:
    toks = tokenize(text)
    shingles = {tuple(toks[i : i + SHINGLE]) for i in range(max(1, len(toks) - SHINGLE + 1))} if toks else set()
    if not shingles:
        return None
    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([" ".join(s).encode("utf-8") for s in shingles])
    return m


def near_duplicates(
    synthetic: Sequence[Record], train: Sequence[Record], holdout: Sequence[Record], policy: AuditPolicy
) -> dict:
    """Share of synthetic reports with a near-duplicate (MinHash LSH) among training reports,
    against the same share for holdout reports: templated reports make some duplication normal."""
    lsh = MinHashLSH(threshold=policy.near_duplicate_jaccard, num_perm=NUM_PERM)
    # One entry per distinct report text: the question is only whether any training report is a
    # near-duplicate, and templated reports repeat, so the index grows with the distinct texts.
    seen: set[bytes] = set()
    for i, r in enumerate(train):
        text = r.report
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in seen:
            continue
        seen.add(digest)
        m = _minhash(text)
        if m is not None:
            lsh.insert(str(i), m)

    def has_dup(rec: Record) -> bool:
        m = _minhash(rec.report)
        return m is not None and bool(lsh.query(m))

    syn = [has_dup(r) for r in synthetic]
    hold = [has_dup(r) for r in holdout]
    return {
        "jaccard": policy.near_duplicate_jaccard,
        "duplicated_reports": [r.record_id for r, d in zip(synthetic, syn) if d],
        "rate": float(np.mean(syn)) if syn else 0.0,
        "holdout_rate": float(np.mean(hold)) if hold else 0.0,
    }


def embed_texts(model_dir: Path, texts: Sequence[str], batch: int = 32) -> np.ndarray:
    """Unit-norm sentence embeddings from a local model folder, pooled as the folder says:
    a sentence-transformers folder's own modules and pooling config, mean pooling over the
    tokens for a plain transformers folder. Inputs are cut at 256 tokens."""
    from sentence_transformers import SentenceTransformer

    if not Path(model_dir).is_dir():
        raise InputError(
            f"{model_dir}: policy key 'text_encoder' must be a local model directory (config.json, weights, tokenizer)."
        )
    if not texts:
        return np.zeros((0, 1), np.float32)
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    model.max_seq_length = min(model.max_seq_length or 256, 256)
    return model.encode(
        list(texts), batch_size=batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )


def embedding_neighbours(
    synthetic: Sequence[Record], train: Sequence[Record], holdout: Sequence[Record], policy: AuditPolicy
) -> dict:
    """Synthetic-to-train nearest-neighbour distances of report embeddings, flagged below the
    same calibrated threshold the image check uses (holdout-to-train quantile x margin)."""
    from cxrsynth.privacy.audit.neighbors import nearest

    e_train = embed_texts(policy.text_encoder, [r.report for r in train])
    d_st, _ = nearest(embed_texts(policy.text_encoder, [r.report for r in synthetic]), e_train, policy.chunk)
    d_ht, _ = nearest(embed_texts(policy.text_encoder, [r.report for r in holdout]), e_train, policy.chunk)
    threshold = float(policy.copy_margin * np.quantile(d_ht, policy.copy_quantile))
    return {
        "threshold": threshold,
        "close_reports": [r.record_id for r, d in zip(synthetic, d_st) if d < threshold],
        "rate": float(np.mean(d_st < threshold)),
        "holdout_rate": float(np.mean(d_ht < threshold)),
        "median_synthetic_to_train": float(np.median(d_st)),
        "median_holdout_to_train": float(np.median(d_ht)),
    }
