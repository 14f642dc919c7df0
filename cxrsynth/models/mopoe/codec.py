"""Records <-> the tensors the MoPoE nets read and write.

A report is the word tokens of `Record.report` ("FINDINGS: ... IMPRESSION: ..."), then <eos>,
padded with <pad> to `text_length`; decoding splits the section headers back out. Labels are one
state per label of the 14: not stated, negative, positive or uncertain (`LABEL_STATES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from cxrsynth.data.records import LABELS, Record
from cxrsynth.data.text import UNK, Vocabulary, sentences_to_text, tokenize
from cxrsynth.data.transforms import images_to_tensor


@dataclass
class Batch:
    """Every modality for every record (zeros where absent) and the (B,) presence masks."""

    frontal: torch.Tensor  # (B, 1, S, S)
    lateral: torch.Tensor  # (B, 1, S, S)
    report: torch.Tensor  # (B, L) word ids
    labels: torch.Tensor  # (B, 14) indices into LABEL_STATES
    present: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.frontal.shape[0]


# A label's value (None: not stated) as a state index, and back.
LABEL_STATES: tuple[Optional[int], ...] = (None, 0, 1, -1)


def encode_labels(label_sets: Sequence[Optional[dict]], device="cpu") -> torch.Tensor:
    """(B, 14) state indices; a record without a label set is all "not stated"."""
    rows = [[LABEL_STATES.index((labels or {}).get(name)) for name in LABELS] for labels in label_sets]
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(len(rows), len(LABELS))


def decode_labels(states: Sequence[int]) -> dict[str, Optional[int]]:
    return {name: LABEL_STATES[int(s)] for name, s in zip(LABELS, states)}


def _images(images: Sequence, size: int, device) -> torch.Tensor:
    blank = np.zeros((size, size), dtype=np.uint8)
    return images_to_tensor([blank if im is None else im for im in images], size, device)


def encode_text(texts: Sequence[str], vocab: Vocabulary, length: int, device="cpu") -> torch.Tensor:
    rows = []
    for text in texts:
        ids = vocab.encode(tokenize(text))[: length - 1] + [vocab.eos_id]
        rows.append(ids + [vocab.pad_id] * (length - len(ids)))
    if not rows:
        return torch.zeros(0, length, dtype=torch.long, device=device)
    return torch.tensor(rows, dtype=torch.long, device=device)


def to_batch(
    records: Sequence[Record], vocab: Optional[Vocabulary], image_size: int, text_length: int, device="cpu"
) -> Batch:
    labels = [r.labels if r.has_labels() else None for r in records]
    return make_batch(
        [r.image for r in records],
        [r.lateral for r in records],
        [r.report for r in records],
        vocab,
        image_size,
        text_length,
        device,
        labels,
    )


def make_batch(
    frontals: Sequence,
    laterals: Sequence,
    texts: Sequence[str],
    vocab: Optional[Vocabulary],
    image_size: int,
    text_length: int,
    device="cpu",
    labels: Optional[Sequence[Optional[dict]]] = None,
) -> Batch:
    """One Batch from per-record modalities; None (or empty text) marks a modality as absent.
    Without a vocabulary (a model with no report modality) every report is absent."""

    def mask(flags) -> torch.Tensor:
        return torch.tensor([float(f) for f in flags], dtype=torch.float32, device=device)

    labels = list(labels) if labels is not None else [None] * len(frontals)
    return Batch(
        frontal=_images(frontals, image_size, device),
        lateral=_images(laterals, image_size, device),
        report=encode_text(texts, vocab, text_length, device)
        if vocab is not None
        else torch.zeros(len(texts), text_length, dtype=torch.long, device=device),
        labels=encode_labels(labels, device),
        present={
            "frontal": mask(im is not None for im in frontals),
            "lateral": mask(im is not None for im in laterals),
            "report": mask(vocab is not None and bool(t.strip()) for t in texts),
            "labels": mask(lab is not None for lab in labels),
        },
    )


def _section(tokens: list[str]) -> str:
    sentences, current = [], []
    for t in tokens:
        current.append(t)
        if t == ".":
            sentences.append(current[:-1])
            current = []
    if current:
        sentences.append(current)
    return sentences_to_text(sentences)


def decode_report(ids: Sequence[int], vocab: Vocabulary) -> tuple[str, str]:
    """Word ids -> (findings, impression); text before any header counts as findings."""
    # <unk> stands for words too rare to learn (and so for any name that escaped de-identification).
    tokens = [t for t in vocab.decode(list(ids)) if t != UNK]
    findings, impression, target = [], [], None
    i = 0
    while i < len(tokens):
        if i + 1 < len(tokens) and tokens[i + 1] == ":" and tokens[i] in ("findings", "impression"):
            target = tokens[i]
            i += 2
            continue
        (impression if target == "impression" else findings).append(tokens[i])
        i += 1
    return _section(findings), _section(impression)
