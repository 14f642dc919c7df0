"""What a synthetic record is generated from: one type for every family.

`generate(n, conditions, seed)` takes None (the family draws its own) or one `Condition` per record.
A condition may give labels, a prompt (report text) and frontal/lateral images; each family reads
the parts it is conditioned on and says which it needs when a condition gives none of them:
EMIXER the labels, the LDM the prompt (else a prompt written from the labels), MoPoE any of its
modalities (labels, the prompt as its report, the images).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from cxrsynth.data.records import LABELS, empty_labels
from cxrsynth.errors import InputError


def normalize_labels(labels: Mapping[str, Any], where: str = "condition") -> dict[str, Optional[int]]:
    """A full label dict (all 14 names) from a partial one; refuses unknown names and values."""
    out = empty_labels()
    for name, value in labels.items():
        if name not in out:
            raise InputError(f"{where}: unknown label {name!r}; expected one of {', '.join(LABELS)}.")
        if value in ("", None):
            continue
        try:
            v = int(float(value))
        except (TypeError, ValueError):
            v = None
        if v not in (1, 0, -1):
            raise InputError(f"{where}: label {name!r} has value {value!r}; expected 1, 0, -1 or empty.")
        out[name] = v
    return out


@dataclass(frozen=True)
class Condition:
    labels: Optional[dict[str, Optional[int]]] = None  # all 14 names once built; None: not given
    prompt: Optional[str] = None
    frontal: Optional[np.ndarray] = None
    lateral: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.labels is not None:
            object.__setattr__(self, "labels", normalize_labels(self.labels))
        if self.prompt is not None:
            object.__setattr__(self, "prompt", self.prompt.strip() or None)

    def given(self) -> list[str]:
        return [name for name in ("labels", "prompt", "frontal", "lateral") if getattr(self, name) is not None]

    @classmethod
    def of(cls, value: "Condition | str | Mapping", where: str = "condition") -> "Condition":
        """A condition from a prompt string or a label dict (what a prompts file or a dataset's
        labels give); a Condition is returned as it is."""
        if isinstance(value, Condition):
            return value
        if isinstance(value, str):
            return cls(prompt=value)
        if isinstance(value, Mapping):
            return cls(labels=normalize_labels(value, where))
        raise InputError(
            f"{where}: expected a Condition, a prompt string or a label dict, got {type(value).__name__}."
        )


def as_conditions(conditions: Optional[Sequence], n: int) -> Optional[list[Condition]]:
    """One Condition per record (None stays None: the family draws its own)."""
    if conditions is None:
        return None
    if isinstance(conditions, (str, Mapping, Condition)):
        raise InputError("conditions: give a list with one condition per record, not a single condition.")
    if len(conditions) != n:
        raise InputError(f"{len(conditions)} condition(s) given for {n} record(s); give one per record.")
    return [Condition.of(c, f"condition {i}") for i, c in enumerate(conditions)]
