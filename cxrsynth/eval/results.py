"""The evaluation's result as typed data: what `cxrsynth evaluate` writes to metrics.json and hands
to the page, the demo and the terminal summary (as the dict of the keys a run set).

The sections every run has are typed; a measurement section keeps its figures as they are
(extra fields). JSON is written from these models with only the keys a run set, so metrics.json
reads as it always has.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from cxrsynth.config import validate
from cxrsynth.errors import InputError


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StageStatus(BaseModel):
    status: str
    detail: str = ""
    seconds: float = 0.0


class SyntheticSet(BaseModel):
    dir: str
    records: int
    families: list[str] = []


class RealSet(BaseModel):
    dir: str
    train_records: int
    holdout_records: int


class Fidelity(Open):
    extractor: str
    feature_dim: int
    fid_synthetic_vs_holdout: Optional[float]
    fid_holdout_halves: Optional[float] = None
    fid_baseline_vs_holdout: Optional[float] = None
    n_synthetic: int
    n_holdout: int


class Metrics(Open):
    synthetic: SyntheticSet
    baseline: Optional[SyntheticSet] = None
    real: RealSet
    settings: dict[str, Any] = {}
    status: dict[str, StageStatus] = {}
    fidelity: Optional[Fidelity] = None
    utility: Optional[Open] = None
    diversity: Optional[Open] = None
    reports: Optional[Open] = None
    label_agreement: Optional[Open] = None
    probe: Optional[Open] = None

    def as_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def as_metrics(data: "Metrics | dict", where: str = "metrics") -> Metrics:
    if isinstance(data, Metrics):
        return data
    return validate(Metrics, data, where, InputError)
