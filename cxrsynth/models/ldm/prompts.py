"""Prompt sources for generation and the text a training record is conditioned on.

Synthetic reports are the prompts themselves, so prompts must never be training reports: they
come from a prompt file, from label templates, or from label prevalence counts (what a site may
share). Labels of a synthetic record are read back from its prompt by the rule labeler.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cxrsynth.data.labeler import label_report
from cxrsynth.data.records import LABELS, Record, empty_labels, finding_key

# label -> (positive, negative, uncertain) sentences in ordinary radiology phrasing.
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "Atelectasis": ("Bibasilar atelectasis.", "No atelectasis.", "Possible atelectasis."),
    "Cardiomegaly": ("Cardiomegaly.", "Heart size is normal.", "Possible cardiomegaly."),
    "Consolidation": ("Focal consolidation is present.", "No focal consolidation.", "Possible consolidation."),
    "Edema": ("There is pulmonary edema.", "No pulmonary edema.", "Possible mild pulmonary edema."),
    "Enlarged Cardiomediastinum": (
        "The cardiomediastinal silhouette is enlarged.",
        "Normal cardiomediastinal silhouette.",
        "The mediastinum is possibly widened.",
    ),
    "Fracture": ("There is a rib fracture.", "No displaced fracture.", "Possible rib fracture."),
    "Lung Lesion": ("There is a pulmonary nodule.", "No pulmonary nodule.", "Possible pulmonary nodule."),
    "Lung Opacity": ("There is an opacity in the lung.", "No focal opacity.", "Possible opacity in the lung."),
    "Pleural Effusion": ("There is a pleural effusion.", "No pleural effusion.", "Possible small pleural effusion."),
    "Pleural Other": ("There is pleural thickening.", "No pleural thickening.", "Possible pleural thickening."),
    "Pneumonia": (
        "Findings are consistent with pneumonia.",
        "No evidence of pneumonia.",
        "Pneumonia cannot be excluded.",
    ),
    "Pneumothorax": ("There is a pneumothorax.", "No pneumothorax.", "Possible small pneumothorax."),
    "Support Devices": ("Support devices are in place.", "No support devices.", "Possible support device."),
}
NORMAL = "No acute cardiopulmonary process."


def template_sentences() -> list[str]:
    """Every sentence a label prompt is made of (the vocabulary of `prompt_section: labels`)."""
    return [t for sentences in TEMPLATES.values() for t in sentences] + [NORMAL]


def training_prompt(record: Record, section: str) -> str:
    """The text a training record conditions on (the paper: the impression).

    `labels`: the label template of the record's labels (`prompt_from_labels`), so training and
    generation prompts are written alike and no report text is read at all; a record without
    labels trains on the empty prompt (the unconditional branch of classifier-free guidance).
    """
    if section == "labels":
        return prompt_from_labels(record.labels) if record.has_labels() else ""
    if section == "impression":
        return record.impression or record.findings
    if section == "findings":
        return record.findings or record.impression
    return " ".join(t for t in (record.findings, record.impression) if t)


def prompt_from_labels(labels: dict) -> str:
    """A report-like prompt naming each labelled finding (1, 0, -1); unmentioned labels stay unsaid."""
    unknown = [k for k in labels if k not in LABELS]
    if unknown:
        from cxrsynth.errors import InputError

        raise InputError(f"label condition names unknown label(s) {unknown}; labels are {list(LABELS)}.")
    sentences = []
    for name, (pos, neg, unc) in TEMPLATES.items():
        v = labels.get(name)
        if v is not None:
            sentences.append({1: pos, 0: neg, -1: unc}[int(v)])
    if labels.get("No Finding") == 1 and not any(labels.get(n) in (1, -1) for n in TEMPLATES):
        sentences.append(NORMAL)
    return " ".join(sentences) or NORMAL


def label_counts(records: Sequence[Record]) -> dict[str, dict[str, int]]:
    """Per label, how many training records say 1, 0, -1 or nothing: counts, all a site shares."""
    out = {name: {"1": 0, "0": 0, "-1": 0, "none": 0} for name in LABELS}
    for r in records:
        for name in LABELS:
            v = r.labels.get(name)
            out[name]["none" if v is None else str(int(v))] += 1
    return out


def label_counts_from_site_counts(counts: dict[str, int]) -> dict[str, dict[str, int]]:
    """`label_counts`' shape from label counts merged over sites (cxrsynth.client.task.label_counts):
    per label, positives and uncertains as counted; every other labeled record a negative."""
    labeled = int(counts.get("labeled", 0))
    out = {}
    for name in LABELS:
        pos, unc = int(counts.get(finding_key(name, 1), 0)), int(counts.get(finding_key(name, -1), 0))
        out[name] = {"1": pos, "-1": unc, "0": max(labeled - pos - unc, 0), "none": 0}
    return out


def sample_labels(counts: dict[str, dict[str, int]], n: int, rng: np.random.Generator) -> list[dict]:
    """n label dicts, each finding drawn independently at its training prevalence; No Finding when
    nothing is positive or uncertain."""
    keys = ("1", "0", "-1", "none")
    values = (1, 0, -1, None)
    out = []
    for _ in range(n):
        labels = empty_labels()
        for name in TEMPLATES:
            c = np.array([counts.get(name, {}).get(k, 0) for k in keys], dtype=np.float64)
            if c.sum() == 0:
                continue
            labels[name] = values[int(rng.choice(4, p=c / c.sum()))]
        labels["No Finding"] = 1 if not any(labels[n_] in (1, -1) for n_ in TEMPLATES) else None
        out.append(labels)
    return out


def labels_of(prompt: str) -> dict:
    """Labels of a synthetic record: read from its prompt by the rule labeler, so report and labels agree."""
    labels = empty_labels()
    labels.update(label_report(prompt))
    return labels
