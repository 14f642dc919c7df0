"""The record every loader produces and every model consumes.

A record is one study: a frontal image, optionally a lateral one, the report sections and the
14 CheXpert/MIMIC-CXR labels. Images are 2-D uint8 arrays (grayscale) once loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

# The 14 CheXpert / MIMIC-CXR labels, in the order the manifest columns use.
LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
LABEL_VALUES = (1, 0, -1)  # positive, negative, uncertain; None means not mentioned
VIEWS = ("PA", "AP", "LATERAL")
SPLITS = ("train", "holdout", "")

Labels = dict  # label name -> 1 | 0 | -1 | None


def empty_labels() -> dict[str, Optional[int]]:
    return {name: None for name in LABELS}


# A conditioning vector: one channel per label for "positive", one for "uncertain", and a last
# channel saying the record carries labels at all (an unlabeled record is the zero vector).
COND_DIM = 2 * len(LABELS) + 1


def condition_vector(labels: dict) -> np.ndarray:
    vec = np.zeros(COND_DIM, dtype=np.float32)
    if not any(v is not None for v in labels.values()):
        return vec
    for i, name in enumerate(LABELS):
        v = labels.get(name)
        if v == 1:
            vec[i] = 1.0
        elif v == -1:
            vec[len(LABELS) + i] = 1.0
    vec[-1] = 1.0
    return vec


@dataclass
class Record:
    record_id: str
    patient_id: str
    study_id: str
    site: str = ""
    split: str = ""
    view: str = "PA"
    findings: str = ""
    impression: str = ""
    labels: dict[str, Optional[int]] = field(default_factory=empty_labels)
    image: Optional[np.ndarray] = None  # frontal, HxW uint8
    lateral: Optional[np.ndarray] = None  # HxW uint8 or None
    provenance: str = ""
    # Header fields that are PHI (DICOM PatientName, a report's header block, ...). Kept apart for
    # de-identification; never written to a dataset manifest.
    phi_meta: dict[str, str] = field(default_factory=dict)

    @property
    def report(self) -> str:
        """The report as one text: FINDINGS and IMPRESSION sections."""
        parts = []
        if self.findings:
            parts.append(f"FINDINGS: {self.findings}")
        if self.impression:
            parts.append(f"IMPRESSION: {self.impression}")
        return "\n".join(parts)

    def label_vector(self, uncertain_as: float = 1.0) -> np.ndarray:
        """Labels as a float vector (positive 1, uncertain -> `uncertain_as`, negative/missing 0)."""
        out = np.zeros(len(LABELS), dtype=np.float32)
        for i, name in enumerate(LABELS):
            v = self.labels.get(name)
            out[i] = 1.0 if v == 1 else (uncertain_as if v == -1 else 0.0)
        return out

    def has_labels(self) -> bool:
        return any(v is not None for v in self.labels.values())

    def with_(self, **changes) -> "Record":
        return replace(self, **changes)


PATTERN = "pattern:"  # prefix of a label-combination count in a site's label counts


def finding_key(name: str, value: int) -> str:
    """One positive (1) or uncertain (-1) finding as a key: "Edema=1"."""
    return f"{name}={int(value)}"


def findings_key(labels: dict) -> str:
    """The positive (1) and uncertain (-1) findings of a label set as one string, in `LABELS`
    order: "Cardiomegaly=1;Edema=-1"; empty when nothing is positive or uncertain."""
    return ";".join(finding_key(name, labels[name]) for name in LABELS if labels.get(name) in (1, -1))


def labels_from_findings_key(key: str) -> dict[str, Optional[int]]:
    """A labeled record's labels from `findings_key`: the named findings, every other label 0."""
    labels: dict[str, Optional[int]] = {name: 0 for name in LABELS}
    for part in filter(None, key.split(";")):
        name, _, value = part.partition("=")
        if name not in labels or value not in ("1", "-1"):
            raise ValueError(
                f"{part!r} in label combination {key!r} is not <label>=1 or <label>=-1 with a known label"
            )
        labels[name] = int(value)
    return labels
