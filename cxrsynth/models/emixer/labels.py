"""Diagnosis labels as conditioning vectors (the label mix generation samples from is
`cxrsynth.models.label_prior`).

Condition vectors are `cxrsynth.data.records.condition_vector`. An unlabeled record (the
few-label setting, EMIXER sec. 4: 30% labeled) is the zero vector, so the projection term of
D_image vanishes for it and only the unconditional parts learn from it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from cxrsynth.data.records import COND_DIM, condition_vector


def condition_tensor(label_dicts: Sequence[dict], device: torch.device | str = "cpu") -> torch.Tensor:
    if not label_dicts:
        return torch.zeros(0, COND_DIM, device=device)
    return torch.as_tensor(np.stack([condition_vector(d) for d in label_dicts]), device=device)
