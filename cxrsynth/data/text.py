"""Report text: tokenizer, sentence splitter and a word vocabulary saved with checkpoints."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

from cxrsynth.data.records import Record

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[.,;:()/%]")
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens and punctuation; deterministic and language-agnostic enough for reports."""
    return _TOKEN.findall(text.lower())


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if s and s.strip()]


def detokenize(tokens: Sequence[str]) -> str:
    out = ""
    for t in tokens:
        if t in ".,;:)%" or not out:
            out += t
        elif out.endswith("(") or out.endswith("/") or t == "/":
            out += t
        else:
            out += " " + t
    return out


def sentences_to_text(sentences: Iterable[Sequence[str]]) -> str:
    """Join token lists into a report, capitalising each sentence."""
    parts = []
    for toks in sentences:
        s = detokenize(toks).strip()
        if not s:
            continue
        if not s.endswith("."):
            s += "."
        parts.append(s[0].upper() + s[1:])
    return " ".join(parts)


class Vocabulary:
    """Word <-> id; built from (de-identified) training reports keeping tokens seen >= min_count times."""

    def __init__(self, tokens: Sequence[str]):
        self.itos = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 6) -> "Vocabulary":
        counts = Counter(t for text in texts for t in tokenize(text))
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad_id(self) -> int:
        return self.stoi[PAD]

    @property
    def bos_id(self) -> int:
        return self.stoi[BOS]

    @property
    def eos_id(self) -> int:
        return self.stoi[EOS]

    @property
    def unk_id(self) -> int:
        return self.stoi[UNK]

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            t = self.itos[i] if 0 <= i < len(self.itos) else UNK
            if t == EOS:
                break
            if t in (PAD, BOS):
                continue
            out.append(t)
        return out

    def to_dict(self) -> dict:
        return {"itos": self.itos}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        v = cls([])
        v.itos = list(d["itos"])
        v.stoi = {t: i for i, t in enumerate(v.itos)}
        return v


def pseudo_reports(counts: dict[str, int], n_reports: int) -> list[Record]:
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
    return [
        Record(
            record_id=f"vocab{j}",
            patient_id=f"vocab{j}",
            study_id=f"vocab{j}",
            site="federated",
            findings=" ".join(b) or ".",
        )
        for j, b in enumerate(bins)
    ]
