"""Other label vocabularies -> the project's 14 CheXpert/MIMIC-CXR labels, in one place.

A site whose labels come in another vocabulary names it at ingest (`cxrsynth data ingest
--labels nih`); its label columns are read in that vocabulary and converted here, so every
dataset on disk speaks the 14 labels of `cxrsynth.data.records.LABELS`.

NIH ChestX-ray14 (Wang et al., CVPR 2017) has 14 findings and "No Finding", text-mined from the
reports, each present (1) or not (0). Where a finding names the same thing as a CheXpert label it
maps to it; where it names a kind of one it maps to that (CheXpert's "Lung Lesion" is a nodule
or mass, "Pleural Other" is pleural thickening among others, "Lung Opacity" covers infiltrates).
Three findings have no counterpart among the 14 and are dropped: a record keeps its other labels,
and the ingest report counts what was dropped. Three CheXpert labels have no NIH source and stay
empty ("not stated"): Enlarged Cardiomediastinum, Fracture, Support Devices.

Several source findings onto one label (Nodule, Mass -> Lung Lesion) combine as: positive if any
is positive, else uncertain if any is uncertain, else negative if any is negative, else empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from cxrsynth.data.records import LABELS

# NIH finding -> CheXpert label, or None: no counterpart, dropped.
NIH_TO_CHEXPERT: dict[str, Optional[str]] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "No Finding": "No Finding",
    "Emphysema": None,
    "Fibrosis": None,
    "Hernia": None,
}

# Precedence when several source values meet on one label: positive, uncertain, negative, empty.
_RANK = {1: 3, -1: 2, 0: 1, None: 0}


def norm(name: str) -> str:
    """Column and finding names compared loosely: case, spaces, underscores and hyphens ignored."""
    return re.sub(r"[\s_\-]+", "", name or "").lower()


@dataclass(frozen=True)
class LabelVocabulary:
    """A site's label names and how each maps onto the 14 labels (None: dropped)."""

    name: str
    to_chexpert: dict[str, Optional[str]]
    # Names of a column that lists a record's positive findings joined by "|" (NIH's "Finding Labels").
    list_columns: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return list(self.to_chexpert)

    @property
    def dropped(self) -> list[str]:
        """Source labels with no counterpart among the 14."""
        return [s for s, t in self.to_chexpert.items() if t is None]

    @property
    def not_stated(self) -> list[str]:
        """Labels of the 14 that no source label fills: always empty after conversion."""
        filled = set(self.to_chexpert.values())
        return [n for n in LABELS if n not in filled]

    def find(self, column: str) -> Optional[str]:
        """The source label a column name stands for, or None."""
        return next((s for s in self.to_chexpert if norm(s) == norm(column)), None)

    def from_list(self, cell: str) -> dict[str, Optional[int]]:
        """A "|"-joined list of positive findings ("Effusion|Nodule", "No Finding") as source
        values: listed ones 1, every other one 0. ValueError names an unknown finding."""
        listed = [p.strip() for p in cell.split("|") if p.strip()]
        if not listed:
            return {s: None for s in self.to_chexpert}
        values = {s: 0 for s in self.to_chexpert}
        for item in listed:
            name = self.find(item)
            if name is None:
                raise ValueError(f"finding {item!r} is not one of the {self.name} labels {self.names}")
            values[name] = 1
        return values

    def convert(self, values: dict[str, Optional[int]]) -> dict[str, Optional[int]]:
        """Source label -> value (1, 0, -1, None) into the 14 labels (absent ones None)."""
        out: dict[str, Optional[int]] = {n: None for n in LABELS}
        for source, value in values.items():
            target = self.to_chexpert[source]
            if target is not None and _RANK[value] > _RANK[out[target]]:
                out[target] = value
        return out


CHEXPERT = LabelVocabulary("chexpert", {n: n for n in LABELS})
NIH = LabelVocabulary("nih", NIH_TO_CHEXPERT, list_columns=("Finding Labels", "finding_labels"))
VOCABULARIES: dict[str, LabelVocabulary] = {v.name: v for v in (CHEXPERT, NIH)}


def vocabulary(name: str) -> LabelVocabulary:
    from cxrsynth.errors import InputError

    if name not in VOCABULARIES:
        raise InputError(f"--labels {name!r}: not a known label vocabulary; expected one of {sorted(VOCABULARIES)}.")
    return VOCABULARIES[name]
