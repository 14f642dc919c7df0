"""Text leakage at one site: rare training n-grams in synthetic reports, MinHash near-duplicates,
and nearest neighbours in a local sentence-embedding model's space.

A phrase many patients share ("No pneumothorax.") is not a leak; an n-gram that fewer than k
training reports contain is specific to those patients, and a synthetic report that reproduces
it has memorized them.
"""

from __future__ import annotations

import hashlib
from itertools import chain
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


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _gram_hashes(text: str, n: int) -> np.ndarray:
    """A report's distinct n-grams as sorted 64-bit hashes (8 bytes each instead of a tuple of words)."""
    grams = ngrams(text, n)
    return np.unique(
        np.fromiter((_digest("\x1f".join(g).encode("utf-8", "surrogatepass")) for g in grams), np.uint64, len(grams))
    )


def _lookup(table: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions in the sorted `table` of the keys found there, which keys were found)."""
    at = np.searchsorted(table, keys)
    found = at < len(table)
    found[found] = table[at[found]] == keys[found]
    return at[found], found


def rare_ngram_leaks(
    synthetic: Sequence[Record], train: Sequence[Record], holdout: Sequence[Record], policy: AuditPolicy
) -> dict:
    """Synthetic reports holding an n-gram that occurs in 1..k-1 training reports.

    Holdout reports run through the same test give the baseline: how often unseen patients'
    reports share a rare n-gram with training by chance. Only the n-grams of the synthetic and
    holdout reports are counted in the training reports, which are read once, one at a time, so
    memory holds the asked-about n-grams (as hashes) and does not grow with the training set.
    """
    n, k = policy.rare_ngram_n, policy.rare_ngram_k
    parts: list[np.ndarray] = []
    asked = np.zeros(0, np.uint64)
    for r in chain(synthetic, holdout):
        parts.append(_gram_hashes(r.report, n))
        if len(parts) >= 4096:
            asked, parts = np.unique(np.concatenate([asked, *parts])), []
    asked = np.unique(np.concatenate([asked, *parts]))
    df = np.zeros(len(asked), np.int64)  # training reports holding each asked-about n-gram
    for r in train:
        at, _ = _lookup(asked, _gram_hashes(r.report, n))
        df[at] += 1

    def leaks(rec: Record) -> int:
        at, _ = _lookup(asked, _gram_hashes(rec.report, n))
        c = df[at]
        return int(((c > 0) & (c < k)).sum())

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


def _bands(text: str, b: int, r: int) -> Optional[np.ndarray]:
    """The b band keys of a report's MinHash (each band's r hash values as one 64-bit hash), as
    locality-sensitive hashing buckets them: two reports are candidates when any band is equal."""
    m = _minhash(text)
    if m is None:
        return None
    values = m.hashvalues
    return np.array([_digest(values[i * r : (i + 1) * r].tobytes()) for i in range(b)], dtype=np.uint64)


DEDUP_LIMIT = 10_000  # distinct training texts remembered at a time (about 1 MB), to skip repeats


def near_duplicates(
    synthetic: Sequence[Record], train: Sequence[Record], holdout: Sequence[Record], policy: AuditPolicy
) -> dict:
    """Share of synthetic reports with a near-duplicate (MinHash LSH) among training reports,
    against the same share for holdout reports: templated reports make some duplication normal.

    The synthetic and holdout reports are the index (their band keys, sorted per band) and each
    training report, read once, is looked up in it, so memory does not grow with the training
    set; the candidates are the pairs an LSH index over the training reports would give."""
    lsh = MinHashLSH(threshold=policy.near_duplicate_jaccard, num_perm=NUM_PERM)  # its band layout
    b, r = lsh.b, lsh.r
    asked = [_bands(rec.report, b, r) for rec in chain(synthetic, holdout)]
    keys = np.array([a if a is not None else np.zeros(b, np.uint64) for a in asked], dtype=np.uint64).reshape(-1, b)
    has_text = np.array([a is not None for a in asked], dtype=bool)
    del asked
    order = [np.argsort(keys[:, i], kind="stable") for i in range(b)]
    sorted_keys = [keys[o, i] for i, o in enumerate(order)]
    del keys
    dup = np.zeros(len(has_text), dtype=bool)
    seen: set[bytes] = set()
    for rec in train:
        text = rec.report
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in seen:
            continue
        if len(seen) >= DEDUP_LIMIT:
            seen.clear()
        seen.add(digest)
        bands = _bands(text, b, r)
        if bands is None:
            continue
        for i in range(b):
            lo, hi = (
                np.searchsorted(sorted_keys[i], bands[i : i + 1], "left")[0],
                np.searchsorted(sorted_keys[i], bands[i : i + 1], "right")[0],
            )
            if hi > lo:
                dup[order[i][lo:hi]] = True
    dup &= has_text
    n_syn = len(synthetic)
    syn, hold = dup[:n_syn], dup[n_syn:]
    return {
        "jaccard": policy.near_duplicate_jaccard,
        "duplicated_reports": [rec.record_id for rec, d in zip(synthetic, syn) if d],
        "rate": float(np.mean(syn)) if len(syn) else 0.0,
        "holdout_rate": float(np.mean(hold)) if len(hold) else 0.0,
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
