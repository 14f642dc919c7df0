"""F(image): the hierarchical report decoder (EMIXER sec. 3.2, after Krause et al. 2017).

A CNN encodes the image to a feature v; a sentence LSTM turns v into one topic vector per
sentence and a CONTINUE/STOP distribution; a word LSTM writes each sentence from its topic.
Reports are held as a grid of word ids, (max_sentences, max_words + 1) per record, each row
ending in the end token and padded after it. Impression sentences come first and start with the
`<imp>` token, so the two report sections survive a round trip.

F learns from the findings/impression sentences only (EMIXER sec. 4, data: reports are reduced to
their clinically relevant sentences): a sentence is kept when the rule labeler finds a finding in
it, negated or not. Sign-offs, comparison and date lines, call-back notes and identifiers carry no
finding; left in, they are most of the text F learns to write, and the image has nothing to say
about them.

Opacus computes per-sample gradients along the first dimension, so every call into a network
keeps the record as the batch dimension: the word LSTM runs once per sentence slot.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from opacus.layers import DPLSTM
from torch import nn

from cxrsynth.data.labeler import finding_sentences
from cxrsynth.data.records import Record
from cxrsynth.data.text import SPECIALS, Vocabulary, sentences_to_text, split_sentences, tokenize
from cxrsynth.models.emixer.config import EmixerConfig

IMP = "<imp>"
CONTINUE, STOP = 0, 1
SentenceFilter = Literal["findings", "all"]


def report_sentences(rec: Record, keep: SentenceFilter = "findings") -> list[list[str]]:
    """Token lists, impression first (it carries the diagnoses, so truncation to max_sentences
    keeps them); impression sentences start with IMP. `keep="findings"` drops sentences that
    state no finding."""
    out = []
    for section, prefix in ((rec.impression, [IMP]), (rec.findings, [])):
        for sent in finding_sentences(section) if keep == "findings" else split_sentences(section or ""):
            toks = tokenize(sent)
            while toks and toks[-1] == ".":
                toks.pop()
            if toks:
                out.append(prefix + toks)
    return out


def build_vocabulary(
    records: Sequence[Record], min_count: int, size: int, keep: SentenceFilter = "findings"
) -> Vocabulary:
    """Words seen at least `min_count` times, most frequent first, at most `size` ids in all."""
    return vocabulary_from_counts(
        Counter(t for r in records for sent in report_sentences(r, keep) for t in sent), min_count, size
    )


def vocabulary_from_counts(counts: dict[str, int], min_count: int, size: int) -> Vocabulary:
    """The same from token counts (a federated run's merged site counts of `vocabulary_text`)."""
    kept = sorted((t for t, c in counts.items() if c >= min_count and t != IMP), key=lambda t: (-counts[t], t))
    return Vocabulary(([IMP] + kept)[: size - len(SPECIALS)])


def encode_reports(
    records: Sequence[Record], vocab: Vocabulary, max_sentences: int, max_words: int, keep: SentenceFilter = "findings"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-id grid (B, S, T+1) ending each sentence with EOS, and the sentence count (B,)."""
    grid = np.full((len(records), max_sentences, max_words + 1), vocab.pad_id, dtype=np.int64)
    counts = np.zeros(len(records), dtype=np.int64)
    for b, rec in enumerate(records):
        sents = report_sentences(rec, keep)[:max_sentences]
        counts[b] = len(sents)
        for s, toks in enumerate(sents):
            ids = vocab.encode(toks[:max_words]) + [vocab.eos_id]
            grid[b, s, : len(ids)] = ids
    return torch.as_tensor(grid), torch.as_tensor(counts)


def sentence_count(stop_prob: torch.Tensor) -> torch.Tensor:
    """Sentences generated: up to and including the first slot whose STOP probability exceeds 0.5."""
    stop = stop_prob > 0.5
    first = torch.where(
        stop.any(dim=1), stop.float().argmax(dim=1), torch.full_like(stop[:, 0], stop.shape[1] - 1, dtype=torch.long)
    )
    return first + 1


def keep_mask(ids: torch.Tensor, counts: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, S, T+1) bool: positions up to and including each sentence's first EOS, in kept sentences."""
    is_eos = ids == eos_id
    before_eos = (is_eos.long().cumsum(dim=2) - is_eos.long()) == 0
    slots = torch.arange(ids.shape[1], device=ids.device)[None, :, None]
    return before_eos & (slots < counts[:, None, None])


def grid_to_text(ids: torch.Tensor, counts: torch.Tensor, vocab: Vocabulary) -> list[tuple[str, str]]:
    """(findings, impression) per record from a word-id grid."""
    out = []
    for b in range(ids.shape[0]):
        findings, impression = [], []
        for s in range(int(counts[b])):
            toks = vocab.decode(ids[b, s].tolist())
            if toks and toks[0] == IMP:
                impression.append(toks[1:])
            else:
                findings.append([t for t in toks if t != IMP])
        out.append((sentences_to_text(findings), sentences_to_text(impression)))
    return out


class ImageEncoder(nn.Module):
    """Strided convolutions to a 4x4 map, flattened to the feature v; no batch statistics (DP-SGD).

    Flattening instead of pooling keeps where things are: a wide heart or a basal effusion is a
    matter of position. v is layer-normalized (per record, so per-sample gradients stay exact):
    unbounded, it grew to hundreds in some runs, saturated the sentence LSTM's gates, and F then
    wrote the same report for every image.
    """

    def __init__(self, image_size: int, width: int, feature_dim: int):
        super().__init__()
        layers, c = [], 1
        n_down = (image_size // 4).bit_length() - 1
        for i in range(n_down):
            c_out = width * min(2**i, 16)
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = c_out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c * 16, feature_dim)
        self.norm = nn.LayerNorm(feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.proj(self.convs(x).flatten(1))), 0.2)


class ReportDecoder(nn.Module):
    def __init__(self, cfg: EmixerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ImageEncoder(cfg.image_size, cfg.d_width, cfg.feature_dim)
        self.sentence_lstm = DPLSTM(cfg.feature_dim, cfg.sentence_hidden, batch_first=True)
        self.topic = nn.Linear(cfg.sentence_hidden, cfg.word_dim)
        self.stop = nn.Linear(cfg.sentence_hidden, 2)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim)
        # The topic joins every word step, not only the first, so long sentences stay on topic.
        self.word_lstm = DPLSTM(2 * cfg.word_dim, cfg.word_hidden, batch_first=True)
        self.word_out = nn.Linear(cfg.word_hidden, cfg.vocab_size)

    def topics(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Topic vectors (B, S, word_dim) and STOP/CONTINUE logits (B, S, 2)."""
        v = self.encoder(images)
        h, _ = self.sentence_lstm(v[:, None, :].expand(-1, self.cfg.max_sentences, -1).contiguous())
        return self.topic(h), self.stop(h)

    def loss(
        self,
        images: torch.Tensor,
        ids: torch.Tensor,
        counts: torch.Tensor,
        pad_id: int,
        weight: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Teacher-forced word + stop cross-entropy, averaged per record, then over the batch
        (each record weighted by `weight` when given)."""
        topics, stop_logits = self.topics(images)
        b, s_max, t1 = ids.shape
        slots = torch.arange(s_max, device=ids.device)[None, :]
        stop_target = torch.where(slots == (counts[:, None] - 1), STOP, CONTINUE)
        stop_valid = (slots < counts[:, None]).float()
        stop_ce = F.cross_entropy(stop_logits.reshape(-1, 2), stop_target.reshape(-1), reduction="none").view(b, s_max)
        word_ce = torch.zeros(b, device=ids.device)
        n_words = torch.zeros(b, device=ids.device)
        for s in range(s_max):
            prev = torch.cat([torch.zeros_like(topics[:, s : s + 1]), self.embed(ids[:, s, :-1])], dim=1)
            h, _ = self.word_lstm(torch.cat([topics[:, s : s + 1].expand(-1, t1, -1), prev], dim=2))
            logits = self.word_out(h)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, s].reshape(-1), reduction="none").view(
                b, t1
            )
            valid = (ids[:, s] != pad_id).float()
            word_ce = word_ce + (ce * valid).sum(dim=1)
            n_words = n_words + valid.sum(dim=1)
        per_record = word_ce / n_words.clamp_min(1) + (stop_ce * stop_valid).sum(dim=1) / stop_valid.sum(
            dim=1
        ).clamp_min(1)
        return per_record.mean() if weight is None else (per_record * weight).mean()

    def decode(
        self, images: torch.Tensor, vocab: Vocabulary, soft: bool = False, generator: Optional[torch.Generator] = None
    ):
        """Free-running decoding: (ids (B,S,T+1), counts (B,), one-hot grid (B,S,T+1,V)).

        Words are greedy (`decoding: greedy`) or drawn from the softmax at `temperature` with the
        Gumbel-max trick (`decoding: sample`); a sentence stops at its end token, the report at the
        first STOP. With `soft`, the one-hot grid is straight-through (Bengio et al. 2013): hard
        tokens forward, softmax gradients backward, so G learns through the report
        discriminators. Positions after a sentence's end and sentences after STOP are padding.
        """
        cfg = self.cfg
        eos_id, pad_id, bos_id, unk_id = vocab.eos_id, vocab.pad_id, vocab.bos_id, vocab.unk_id
        topics, stop_logits = self.topics(images)
        counts = sentence_count(torch.softmax(stop_logits, dim=-1)[..., STOP])
        # Never written: padding, the start token, the unknown word (a placeholder, not a word) and
        # the embedding rows past the vocabulary.
        banned = torch.zeros(cfg.vocab_size, dtype=torch.bool, device=images.device)
        banned[[pad_id, bos_id, unk_id]] = True
        banned[len(vocab) :] = True
        b, tau = images.shape[0], cfg.temperature
        rows, row_ids = [], []
        for s in range(cfg.max_sentences):
            topic = topics[:, s : s + 1]
            x, state, steps, step_ids = torch.cat([topic, torch.zeros_like(topic)], dim=2), None, [], []
            for _ in range(cfg.max_words + 1):
                h, state = self.word_lstm(x, state)
                logits = self.word_out(h[:, 0]).masked_fill(banned, float("-inf")) / tau
                if cfg.decoding == "sample":
                    u = torch.rand(b, cfg.vocab_size, generator=generator).to(logits.device)
                    logits = logits - torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
                ids = logits.argmax(dim=-1)
                hard = F.one_hot(ids, cfg.vocab_size).to(logits.dtype)
                onehot = (
                    hard + torch.softmax(logits, dim=-1) - torch.softmax(logits, dim=-1).detach() if soft else hard
                )
                steps.append(onehot)
                step_ids.append(ids)
                x = torch.cat([topic, (onehot @ self.embed.weight)[:, None, :]], dim=2)
            rows.append(torch.stack(steps, dim=1))
            row_ids.append(torch.stack(step_ids, dim=1))
        onehot = torch.stack(rows, dim=1)
        ids = torch.stack(row_ids, dim=1)
        keep = keep_mask(ids, counts, eos_id)
        ids = torch.where(keep, ids, torch.full_like(ids, pad_id))
        pad = F.one_hot(torch.tensor(pad_id, device=ids.device), cfg.vocab_size).to(onehot.dtype)
        onehot = torch.where(keep[..., None], onehot, pad)
        return ids, counts, onehot
